"""Netflix Prize (Bennett and Lanning 2007): `combined_data_1.txt` .. `combined_data_4.txt`
(a `MovieID:` line, then `CustomerID,Rating,YYYY-MM-DD` lines) and `movie_titles.csv`
(`MovieID,YearOfRelease,Title`, no header, latin-1, titles may contain commas, year may be NULL).
Config: `path` (the folder), optional `files` (default: the four combined_data files present).
"""
import pathlib
from typing import Iterator

from data.prepare.records import (BadLines, Interaction, Item, ItemTable, clean_text, open_text_lines, parse_rating,
                                  parse_utc_time)


def read(path, bad: BadLines, files=None, **_) -> Iterator[Interaction]:
    path = pathlib.Path(path)
    items = ItemTable(bad, path)
    for lineno, line in open_text_lines(path / "movie_titles.csv", bad, "latin-1"):
        f = line.split(",", 2)
        if len(f) != 3:
            bad.bad(path / "movie_titles.csv", lineno, "wrong_field_count", f"{len(f)} fields, expected 3")
            continue
        items[f[0]] = Item(f[0], title=clean_text(f[2]))
    files = files or sorted(p.name for p in path.glob("combined_data_*.txt"))
    seq = 0
    for name in files:
        movie = None
        for lineno, line in open_text_lines(path / name, bad):
            if line.endswith(":"):
                movie = line[:-1]
                continue
            f = line.split(",")
            if movie is None or len(f) != 3:
                bad.bad(path / name, lineno, "wrong_field_count" if movie else "missing_field",
                        f"{len(f)} fields, expected 3" if movie else "rating before any 'MovieID:' line")
                continue
            ok, rating = parse_rating(f[1], path / name, lineno, bad)
            if not ok:
                continue
            ok, time = parse_utc_time(f[2], path / name, lineno, bad, "%Y-%m-%d")
            if not ok:
                continue
            item = items.get(movie) or items.setdefault(movie, Item(movie))
            yield Interaction(f[0], item, time=time, rating=rating, seq=seq)
            seq += 1
