"""WikiRec (AlGhamdi et al. 2021, "Learning to Recommend Items to Wikidata Editors", ISWC 2021): Wikidata
editors and the items they edited, from github.com/WikidataRec-developer/Wikidata_Recommender.

Files (config options `interactions` and `items`, paths; plain or .gz):
- `Wikidata_14M.csv` (or `Wikidata_Active_Editor.csv`): a header, then `user_id,item_id,frequence` rows
  (frequence = the user's number of edits of the item; the authors' scripts read these names). One
  interaction per row. There are no timestamps, so histories keep the file order (as for Steam) and
  there is no rating (App. B has no rating task for WikiRec).
- `Items_content_of_Wikidata_14M.csv` (or `..._Active_Editor.csv`): a header, then the item id and two
  text columns, which the authors' scripts only concatenate. Which one is the item's label (the
  template's Title) is not published: the released CSVs are Git LFS objects, and no public copy could be
  read (docs/data.md). The default follows Wikidata's own order, label then description:
  `title_column: 1`, `description_column: 2`. Either may be set to another 0-based position or to a
  header name; check the header of your copy (it is printed in the error when a name is not found).
"""
from typing import Iterator, Union

from data.prepare.records import BadLines, DataError, Interaction, Item, ItemTable, clean_text
from data.prepare.sources.csvutil import rows

Column = Union[int, str]


def _position(column: Column, header: list[str], path, key: str) -> int:
    if isinstance(column, int) and not isinstance(column, bool) and 0 < column < len(header):
        return column
    if isinstance(column, str) and column in header:
        return header.index(column)
    raise DataError(f"{path}:1: option {key}={column!r} names no text column of the header {header} "
                    f"(a 0-based position after the item id, or a header name)")


def read_items(items, bad: BadLines, title_column: Column = 1, description_column: Column = 2) -> dict[str, Item]:
    table = ItemTable(bad, items)
    header = None
    for lineno, row in rows(items, bad):
        if header is None:
            header = [name.strip() for name in row]
            t = _position(title_column, header, items, "title_column")
            d = _position(description_column, header, items, "description_column")
            continue
        if len(row) != len(header):
            bad.bad(items, lineno, "wrong_field_count", f"{len(row)} fields, expected {len(header)}")
            continue
        table[row[0]] = Item(row[0], title=clean_text(row[t]), description=clean_text(row[d]))
    return table


def read(interactions, items, bad: BadLines, title_column: Column = 1, description_column: Column = 2,
         **_) -> Iterator[Interaction]:
    table = read_items(items, bad, title_column, description_column)
    seq = 0
    for _, row in rows(interactions, bad, header=["user_id", "item_id"]):
        item_id = row["item_id"]
        item = table.get(item_id) or table.setdefault(item_id, Item(item_id))  # not in the item file: untitled
        yield Interaction(row["user_id"], item, seq=seq)
        seq += 1
