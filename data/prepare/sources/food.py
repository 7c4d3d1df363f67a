"""Food.com (Majumder et al. 2019, Kaggle "food-com-recipes-and-user-interactions"):
`RAW_recipes.csv` (`name,id,minutes,...`) and `RAW_interactions.csv` (`user_id,recipe_id,date,rating,review`,
date `YYYY-MM-DD`). Config: `path` (the folder). Rating 0 means a review without stars (no rating).
"""
import pathlib
from typing import Iterator

from data.prepare.records import BadLines, Interaction, Item, ItemTable, clean_text, parse_rating, parse_utc_time
from data.prepare.sources.csvutil import rows


def read(path, bad: BadLines, **_) -> Iterator[Interaction]:
    path = pathlib.Path(path)
    items = ItemTable(bad, path)
    for _, r in rows(path / "RAW_recipes.csv", bad, ["name", "id"]):
        items[r["id"]] = Item(r["id"], title=clean_text(r["name"]))
    seq = 0
    inter = path / "RAW_interactions.csv"
    for lineno, r in rows(inter, bad, ["user_id", "recipe_id", "date", "rating", "review"]):
        ok, rating = parse_rating(r["rating"], inter, lineno, bad, missing=(0.0,))
        if not ok:
            continue
        ok, time = parse_utc_time(r["date"], inter, lineno, bad, "%Y-%m-%d")
        if not ok:
            continue
        item = items.get(r["recipe_id"]) or items.setdefault(r["recipe_id"], Item(r["recipe_id"]))
        yield Interaction(r["user_id"], item, time=time, rating=rating, review=clean_text(r["review"]), seq=seq)
        seq += 1
