"""Anime (Kaggle "anime-recommendations-database", CooperUnion): `anime.csv`
(`anime_id,name,genre,type,episodes,rating,members`) and `rating.csv` (`user_id,anime_id,rating`,
rating -1 = watched without a rating). Config: `path` (the folder). No timestamps (file order);
ratings are on a 10-point scale (template /10.0). Names have HTML entities (`&#039;`), unescaped.
"""
import html
import pathlib
from typing import Iterator

from data.prepare.records import BadLines, Interaction, Item, ItemTable, clean_text, parse_rating
from data.prepare.sources.csvutil import rows


def read(path, bad: BadLines, **_) -> Iterator[Interaction]:
    path = pathlib.Path(path)
    items = ItemTable(bad, path)
    for _, r in rows(path / "anime.csv", bad, ["anime_id", "name", "genre"]):
        items[r["anime_id"]] = Item(r["anime_id"], title=clean_text(html.unescape(r["name"])), genres=clean_text(r["genre"]))
    seq = 0
    for lineno, r in rows(path / "rating.csv", bad, ["user_id", "anime_id", "rating"]):
        ok, rating = parse_rating(r["rating"], path / "rating.csv", lineno, bad, missing=(-1.0,))
        if ok:
            item = items.get(r["anime_id"]) or items.setdefault(r["anime_id"], Item(r["anime_id"]))
            yield Interaction(r["user_id"], item, rating=rating, seq=seq)
            seq += 1
