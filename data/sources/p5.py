"""P5-preprocessed benchmark data (Geng et al. 2022), as in ../shared/data/amazon-beauty-p5/.

Expected files in `path`:
- `sequential_data.txt`: one user per line, `user_id item_id item_id ...`, items already in
  chronological order (there are no timestamps: the file order is the time order).
- `items.jsonl`: one `{"item_id": int, "title": str, ...}` per item (optional keys `asin`, `brand`,
  `city`, `description`, `genres`). An empty title is kept as "no title" (the recipe decides).
P5 has no ratings or review text offline, so interactions carry neither.
"""
import pathlib
from typing import Iterator

from data.records import ITEM_FIELDS, BadLines, DataError, Interaction, Item, clean_text, json_lines, open_text_lines


def read_items(path, bad: BadLines) -> dict[str, Item]:
    items: dict[str, Item] = {}
    for lineno, row in json_lines(path, bad):
        if "item_id" not in row or "title" not in row:
            bad.bad(path, lineno, "missing_field", "item_id" if "item_id" not in row else "title")
            continue
        item_id = str(row["item_id"])
        items[item_id] = Item(item_id, title=clean_text(row["title"]),
                              **{k: clean_text(row.get(k)) for k in ITEM_FIELDS if k != "title"})
    return items


def read(path, bad: BadLines, sequences: str = "sequential_data.txt", items: str = "items.jsonl",
         **_) -> Iterator[Interaction]:
    path = pathlib.Path(path)
    catalog = read_items(path / items, bad)
    seq = 0
    for lineno, line in open_text_lines(path / sequences, bad):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            bad.bad(path / sequences, lineno, "missing_field", "a user with no items")
            continue
        user, item_ids = fields[0], fields[1:]
        unknown = [i for i in item_ids if i not in catalog]
        if unknown:
            bad.bad(path / sequences, lineno, "unknown_item", f"item {unknown[0]} not in {items}")
            continue
        for item_id in item_ids:
            yield Interaction(user, catalog[item_id], seq=seq)
            seq += 1


def catalog(path, bad: BadLines, items: str = "items.jsonl", **_) -> dict[str, Item]:
    """All items with their P5 ids (the evaluation catalog keeps untitled items too)."""
    path = pathlib.Path(path)
    if not (path / items).is_file():
        raise DataError(f"{path / items}: file not found")
    return read_items(path / items, bad)
