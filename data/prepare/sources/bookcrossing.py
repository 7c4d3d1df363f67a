"""Book-Crossing (Ziegler et al. 2005; Kaggle "bookcrossing-dataset"): `BX-Books.csv`
(`"ISBN";"Book-Title";"Book-Author";...`) and `BX-Book-Ratings.csv` (`"User-ID";"ISBN";"Book-Rating"`),
semicolon-separated, quoted, latin-1 (options `books`, `ratings`, `encoding`, `delimiter` for the
Kaggle re-exports `Books.csv`/`Ratings.csv`, which are comma-separated UTF-8). Rating 0 is implicit
feedback (no rating); explicit ratings are 1-10 (template /10.0). No timestamps (file order).
"""
import pathlib
from typing import Iterator

from data.prepare.records import BadLines, Interaction, Item, ItemTable, clean_text, parse_rating
from data.prepare.sources.csvutil import rows


def read(path, bad: BadLines, books="BX-Books.csv", ratings="BX-Book-Ratings.csv", encoding="latin-1",
         delimiter=";", **_) -> Iterator[Interaction]:
    path = pathlib.Path(path)
    items = ItemTable(bad, path)
    for _, r in rows(path / books, bad, ["ISBN", "Book-Title", "Book-Author"], encoding, delimiter, escapechar="\\"):
        items[r["ISBN"]] = Item(r["ISBN"], title=clean_text(r["Book-Title"]), author=clean_text(r["Book-Author"]))
    seq = 0
    for lineno, r in rows(path / ratings, bad, ["User-ID", "ISBN", "Book-Rating"], encoding, delimiter):
        ok, rating = parse_rating(r["Book-Rating"], path / ratings, lineno, bad, missing=(0.0,))
        if ok:
            item = items.get(r["ISBN"]) or items.setdefault(r["ISBN"], Item(r["ISBN"]))
            yield Interaction(r["User-ID"], item, rating=rating, seq=seq)
            seq += 1
