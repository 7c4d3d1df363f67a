"""One reader per raw source; each module's docstring lists the files it expects.

A reader is `read(<its file options>, bad: BadLines) -> Iterator[Interaction]`; the config's
`sources[*].options` are passed as keyword arguments. A benchmark reader may also offer
`catalog(...)` -> {item id: Item} when its item table has items no interaction mentions.
"""
import importlib

READERS = {
    "p5": "data.sources.p5",
    "movielens": "data.sources.movielens",
    "amazon": "data.sources.amazon",
    "yelp": "data.sources.yelp",
    "steam": "data.sources.steam",
    "goodreads": "data.sources.goodreads",
    "bookcrossing": "data.sources.bookcrossing",
    "anime": "data.sources.anime",
    "food": "data.sources.food",
    "hotelrec": "data.sources.hotelrec",
    "netflix": "data.sources.netflix",
}
# Not implemented: WikiRec (AlGhamdi et al. 2021, "Learning to Recommend Items to Wikidata Editors",
# ISWC 2021; data at github.com/WikidataRec-developer/Wikidata_Recommender). The released CSVs are Git
# LFS objects whose contents could not be read here. The authors' code shows the interaction file
# (Wikidata_14M.csv: header, then user_id,item_id,frequence; no timestamp) but not which of the item
# file's two text columns (Items_content_of_Wikidata_14M.csv: item id + 2 text columns) is the label
# (the template's Title) and which the description, so no reader is written on a guess (docs/data.md).


def get_reader(name: str):
    if name not in READERS:
        raise KeyError(f"unknown reader {name!r}; known: {', '.join(sorted(READERS))}")
    return importlib.import_module(READERS[name])
