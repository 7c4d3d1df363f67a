"""The plan's rows (data/prepare/plan.py) back as Python histories, one user at a time, for rendering.

Rows come from the engine in batches, sorted by user (`group`) then chronological order, and each user's
rows become a list of `Interaction`s sharing the source's `Item`s; only the items the rows name are loaded.
"""
import pathlib
from typing import Iterator

from data.prepare import engine
from data.prepare.records import ITEM_FIELDS, Interaction, Item

# the columns of an interaction in the plan's tables
COLUMNS = ("user", "item", "time", "rating", "review", "occurrence", "raw_user")


def items_of(con, items_parquet: pathlib.Path, rows_sql: str) -> dict[str, Item]:
    """The Items that the rows of `rows_sql` name (a column `item`), from the normalised item table."""
    fields = ", ".join(ITEM_FIELDS)
    table = {}
    for batch in engine.rows(con, f"""SELECT id, {fields}, raw_id FROM {engine.parquet(items_parquet)}
                                      WHERE id IN (SELECT DISTINCT item FROM ({rows_sql}))"""):
        for i, item_id in enumerate(batch["id"]):
            table[item_id] = Item(item_id, raw_id=batch["raw_id"][i], **{f: batch[f][i] for f in ITEM_FIELDS})
    return table


def grouped(con, rows_sql: str, group: str, items: dict[str, Item], extra=()) -> Iterator[tuple[dict, list, list]]:
    """(the first row's `group` and `extra` values, [Interaction per row], [tuple of the `extra` values per
    row]) for each run of rows with the same `group`, in the order of `rows_sql` (which sorts by `group`)."""
    current, head, history, per_row = None, {}, [], []
    for batch in engine.rows(con, rows_sql):
        extras = list(zip(*(batch[c] for c in extra))) if extra else None
        rows = zip(batch[group], *(batch[c] for c in COLUMNS))
        for i, (key, user, item, time, rating, review, occurrence, raw_user) in enumerate(rows):
            if key != current:
                if history:
                    yield head, history, per_row
                current, history, per_row = key, [], []
                head = {group: key, **({c: v for c, v in zip(extra, extras[i])} if extra else {})}
            history.append(Interaction(user, items[item], time=time, rating=rating, review=review,
                                       occurrence=occurrence, raw_user=raw_user))
            if extra:
                per_row.append(extras[i])
    if history:
        yield head, history, per_row
