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
    "wikirec": "data.sources.wikirec",
}


def get_reader(name: str):
    if name not in READERS:
        raise KeyError(f"unknown reader {name!r}; known: {', '.join(sorted(READERS))}")
    return importlib.import_module(READERS[name])
