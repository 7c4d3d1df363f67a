"""P5-preprocessed benchmark data (Geng et al. 2022), as in ../shared/data/amazon-beauty-p5/.

Expected files in `path`:
- `sequential_data.txt`: one user per line, `user_id item_id item_id ...`, items already in
  chronological order (there are no timestamps: the file order is the time order).
- `items.jsonl`: one `{"item_id": int, "title": str, ...}` per item (optional keys `asin`, `brand`,
  `city`, `description`, `genres`). An empty title is kept as "no title" (the recipe decides).
- optional `datamaps` (option; a file name in `path` or a path): P5's `datamaps.json`, whose `user2id`
  (reviewerID -> P5 user id) and `item2id` (ASIN -> P5 item id) give the raw ids. Items take their raw id
  from `asin` in items.jsonl when it is there. Without raw user ids the users of a P5 benchmark cannot be
  matched with the raw Amazon files they came from (`exclude_users_of`, the audit): the build warns then.
P5 has no ratings or review text offline, so interactions carry neither.
"""
import json
import pathlib
import re
from typing import Iterator, Optional

from data.prepare.records import (ITEM_FIELDS, BadLines, DataError, Interaction, Item, ItemTable, clean_text,
                                  json_lines, open_text_lines)


def read_datamaps(path) -> tuple[dict[str, str], dict[str, str]]:
    """(P5 user id -> reviewerID, P5 item id -> ASIN) from P5's datamaps.json."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (option datamaps)")
    try:
        maps = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not JSON ({e})") from None
    if not isinstance(maps, dict) or not isinstance(maps.get("user2id"), dict):
        raise DataError(f"{path}: no 'user2id' map (P5's datamaps.json has user2id, item2id, id2user, id2item)")
    users = {str(v): str(k) for k, v in maps["user2id"].items()}
    items = {str(v): str(k) for k, v in (maps.get("item2id") or {}).items()}
    return users, items


def read_items(path, bad: BadLines, raw_items: Optional[dict] = None) -> dict[str, Item]:
    items = ItemTable(bad, path)
    for lineno, row in json_lines(path, bad):
        if "item_id" not in row or "title" not in row:
            bad.bad(path, lineno, "missing_field", "item_id" if "item_id" not in row else "title")
            continue
        item_id = str(row["item_id"])
        raw = clean_text(row.get("asin")) or (raw_items or {}).get(item_id)
        items[item_id] = Item(item_id, title=clean_text(row["title"]), raw_id=raw,
                              **{k: clean_text(row.get(k)) for k in ITEM_FIELDS if k != "title"})
    return items


def _maps(path: pathlib.Path, datamaps) -> tuple[dict, dict]:
    return read_datamaps(path / datamaps) if datamaps else ({}, {})


def read(path, bad: BadLines, sequences: str = "sequential_data.txt", items: str = "items.jsonl",
         datamaps: Optional[str] = None, catalog: Optional[dict[str, Item]] = None, **_) -> Iterator[Interaction]:
    """`catalog`: the item table, when the caller has read it already (`catalog()`), so that items.jsonl is
    read (and its bad lines counted) once."""
    path = pathlib.Path(path)
    raw_users, raw_items = _maps(path, datamaps)
    if catalog is None:
        catalog = read_items(path / items, bad, raw_items)
    seq = 0
    limit = bad.history_limit
    for lineno, line in open_text_lines(path / sequences, bad):
        if limit is not None and len(line) > 2 * limit:  # possibly more than `limit` ids: split off the newest only
            head, *newest = line.rsplit(None, limit)
            user, *older = head.split(None, 1)
            cut = sum(1 for _ in re.finditer(r"\S+", older[0])) if older and newest else 0
            fields = [user, *newest] if newest else [user]
            if cut:
                bad.ignore("history_over_limit", cut)
        else:
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
        raw_user = raw_users.get(user)
        for item_id in item_ids:
            yield Interaction(user, catalog[item_id], seq=seq, raw_user=raw_user)
            seq += 1


def read_catalog(path, bad: BadLines, items: str = "items.jsonl", datamaps: Optional[str] = None,
                 **_) -> dict[str, Item]:
    """All items with their P5 ids (the evaluation catalog keeps untitled items too)."""
    path = pathlib.Path(path)
    if not (path / items).is_file():
        raise DataError(f"{path / items}: file not found")
    return read_items(path / items, bad, _maps(path, datamaps)[1])
