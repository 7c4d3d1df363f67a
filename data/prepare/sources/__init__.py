"""One reader per raw source; each module's docstring lists the files it expects.

A reader is `read(<its file options>, bad: BadLines) -> Iterator[Interaction]`; the config's
`sources[*].options` are passed as keyword arguments. Readers stream: they may hold an item table, never
the interactions. A benchmark reader may also offer `read_catalog(...)` -> {item id: Item} when its item
table has items no interaction mentions (the evaluation catalog needs them); the build then passes that
table to `read(..., catalog=table)`, so the item file is read once.
"""
import importlib

READERS = {
    "p5": "data.prepare.sources.p5",
    "movielens": "data.prepare.sources.movielens",
    "amazon": "data.prepare.sources.amazon",
    "yelp": "data.prepare.sources.yelp",
    "steam": "data.prepare.sources.steam",
    "goodreads": "data.prepare.sources.goodreads",
    "bookcrossing": "data.prepare.sources.bookcrossing",
    "anime": "data.prepare.sources.anime",
    "food": "data.prepare.sources.food",
    "hotelrec": "data.prepare.sources.hotelrec",
    "netflix": "data.prepare.sources.netflix",
    "wikirec": "data.prepare.sources.wikirec",
}


def get_reader(name: str):
    if name not in READERS:
        raise KeyError(f"unknown reader {name!r}; known: {', '.join(sorted(READERS))}")
    return importlib.import_module(READERS[name])
