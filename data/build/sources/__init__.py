"""One reader per raw source; each module's docstring lists the files it expects.

A reader is `read(<its file options>, bad: BadLines) -> Iterator[Interaction]`; the config's
`sources[*].options` are passed as keyword arguments. Readers stream: they may hold an item table, never
the interactions. A benchmark reader may also offer `read_catalog(...)` -> {item id: Item} when its item
table has items no interaction mentions (the evaluation catalog needs them); the build then passes that
table to `read(..., catalog=table)`, so the item file is read once.
"""
import importlib

READERS = {
    "p5": "data.build.sources.p5",
    "movielens": "data.build.sources.movielens",
    "amazon": "data.build.sources.amazon",
    "yelp": "data.build.sources.yelp",
    "steam": "data.build.sources.steam",
    "goodreads": "data.build.sources.goodreads",
    "bookcrossing": "data.build.sources.bookcrossing",
    "anime": "data.build.sources.anime",
    "food": "data.build.sources.food",
    "hotelrec": "data.build.sources.hotelrec",
    "netflix": "data.build.sources.netflix",
    "wikirec": "data.build.sources.wikirec",
}


def get_reader(name: str):
    if name not in READERS:
        raise KeyError(f"unknown reader {name!r}; known: {', '.join(sorted(READERS))}")
    return importlib.import_module(READERS[name])
