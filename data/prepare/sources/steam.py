"""Steam (Kaggle "steam-video-games", Tamber): `steam-200k.csv`, no header, rows
`user_id,"game title",behavior,value,0` with behavior "purchase" (value 1) or "play" (value = hours).

Config: `path` (the csv). One interaction per "purchase" row; "play" rows repeat a purchased game with
hours and are counted as ignored. No timestamps (file order) and no ratings, as the Steam template
(App. B) shows only titles.
"""
from typing import Iterator

from data.prepare.records import BadLines, Interaction, Item, ItemTable, clean_text
from data.prepare.sources.csvutil import rows


def read(path, bad: BadLines, **_) -> Iterator[Interaction]:
    items = ItemTable(bad, path)
    seq = 0
    for lineno, row in rows(path, bad):
        if len(row) < 4:
            bad.bad(path, lineno, "wrong_field_count", f"{len(row)} fields, expected 5")
            continue
        user, title, behavior = row[0], clean_text(row[1]), row[2]
        if behavior != "purchase":
            bad.ignore(f"{behavior}_row")
            continue
        key = title or ""
        item = items.get(key) or items.setdefault(key, Item(key, title=title))
        yield Interaction(user, item, seq=seq)
        seq += 1
