"""MovieLens (Harper and Konstan 2015), both GroupLens layouts.

Expected files in `path`, whichever is present:
- ml-100k: `u.data` (tab-separated `user item rating unix_time`) and `u.item` (pipe-separated,
  latin-1: `id|title|release date|video release date|IMDb URL|19 genre flags`, genre order from
  `u.genre` when present, else the README's fixed order).
- ml-latest / ml-25m / ml-20m: `ratings.csv` (`userId,movieId,rating,timestamp`, header) and
  `movies.csv` (`movieId,title,genres`, header, genres `|`-separated, "(no genres listed)" = none).
- RecBole's atomic files of ml-100k (the `recbole` wheel's `recbole/dataset_example/ml-100k/`, which
  `python -m data.prepare.fetch_movielens` extracts): `ml-100k.inter` (tab-separated, the same rows as u.data
  under a `user_id:token ...` header) and `ml-100k.item` (`item_id, movie_title, release_year, class`).
  The title is rebuilt as u.item writes it, "Title (year)", and RecBole's "unkonwn" item is "unknown": then
  the interactions and genres equal u.data/u.item's and 10 of 1,682 titles differ (RecBole kept accents
  that u.item dropped, e.g. "Misérables, Les (1995)"; tests/test_data_sources.py checks this).
"""
import pathlib
from typing import Iterator

from data.prepare.records import (BadLines, DataError, Interaction, Item, ItemTable, clean_text, open_text_lines,
                                  parse_rating)
from data.prepare.sources.csvutil import rows

ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western")


def _genres_100k(path: pathlib.Path, bad: BadLines) -> tuple[str, ...]:
    if not (path / "u.genre").is_file():
        return ML100K_GENRES
    names = [line.split("|")[0] for _, line in open_text_lines(path / "u.genre", bad, "latin-1") if line.strip()]
    return tuple(names)


def _read_100k(path: pathlib.Path, bad: BadLines) -> Iterator[Interaction]:
    genres = _genres_100k(path, bad)
    items = ItemTable(bad, path)
    for lineno, line in open_text_lines(path / "u.item", bad, "latin-1"):
        if not line.strip():
            continue
        f = line.split("|")
        if len(f) != 5 + len(genres):
            bad.bad(path / "u.item", lineno, "wrong_field_count", f"{len(f)} fields, expected {5 + len(genres)}")
            continue
        names = [g for g, flag in zip(genres, f[5:]) if flag == "1" and g != "unknown"]
        items[f[0]] = Item(f[0], title=clean_text(f[1]), genres=", ".join(names) or None)
    return _read_tab_interactions(path / "u.data", items, bad)


def _read_tab_interactions(data_path: pathlib.Path, items: dict, bad: BadLines, header: bool = False):
    """`user item rating unix_time` rows, tab-separated (u.data; RecBole's .inter after its header line)."""
    seq = 0
    for lineno, line in open_text_lines(data_path, bad):
        if header and lineno == 1:
            continue
        f = line.split("\t")
        if len(f) != 4:
            bad.bad(data_path, lineno, "wrong_field_count", f"{len(f)} fields, expected 4")
            continue
        ok, rating = parse_rating(f[2], data_path, lineno, bad)
        if not ok:
            continue
        try:
            time = float(f[3])
        except ValueError:
            bad.bad(data_path, lineno, "bad_time", repr(f[3]))
            continue
        item = items.get(f[1]) or items.setdefault(f[1], Item(f[1]))  # unknown id -> untitled item
        yield Interaction(f[0], item, time=time, rating=rating, seq=seq)
        seq += 1


def _read_csv_layout(path: pathlib.Path, bad: BadLines) -> Iterator[Interaction]:
    items = ItemTable(bad, path)
    for _, r in rows(path / "movies.csv", bad, ["movieId", "title", "genres"]):
        genres = None if r["genres"] == "(no genres listed)" else ", ".join(r["genres"].split("|"))
        items[r["movieId"]] = Item(r["movieId"], title=clean_text(r["title"]), genres=clean_text(genres))
    seq = 0
    ratings = path / "ratings.csv"
    for lineno, r in rows(ratings, bad, ["userId", "movieId", "rating", "timestamp"]):
        ok, rating = parse_rating(r["rating"], ratings, lineno, bad)
        if not ok:
            continue
        try:
            time = float(r["timestamp"])
        except ValueError:
            bad.bad(ratings, lineno, "bad_time", repr(r["timestamp"]))
            continue
        item = items.get(r["movieId"]) or items.setdefault(r["movieId"], Item(r["movieId"]))
        yield Interaction(r["userId"], item, time=time, rating=rating, seq=seq)
        seq += 1


def _read_recbole(path: pathlib.Path, bad: BadLines) -> Iterator[Interaction]:
    items = ItemTable(bad, path)
    for lineno, line in open_text_lines(path / "ml-100k.item", bad):
        f = line.split("\t")
        if lineno == 1 or not line.strip():
            continue
        if len(f) != 4:
            bad.bad(path / "ml-100k.item", lineno, "wrong_field_count", f"{len(f)} fields, expected 4")
            continue
        item_id, title, year, genres = f
        if title == "unkonwn":  # RecBole's spelling of u.item's untitled item 267
            title, year = "unknown", ""
        title = f"{title} ({year})" if year.isdigit() else title
        items[item_id] = Item(item_id, title=clean_text(title), genres=", ".join(g for g in genres.split() if g != "unknown") or None)
    return _read_tab_interactions(path / "ml-100k.inter", items, bad, header=True)


def read(path, bad: BadLines, **_) -> Iterator[Interaction]:
    path = pathlib.Path(path)
    if (path / "u.data").is_file():
        return _read_100k(path, bad)
    if (path / "ratings.csv").is_file():
        return _read_csv_layout(path, bad)
    if (path / "ml-100k.inter").is_file():
        return _read_recbole(path, bad)
    raise DataError(f"{path}: none of u.data/u.item (ml-100k), ratings.csv/movies.csv (ml-latest) or "
                    f"ml-100k.inter/ml-100k.item (RecBole) found")
