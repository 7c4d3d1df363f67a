"""Amazon product reviews (McAuley et al.), the 2014 and 2018 releases.

Config keys: `reviews` (file) and `meta` (file), each plain or gzipped (`.gz`).
- 2014 (snap.stanford.edu/data/amazon/productGraph): `reviews_<Category>[_5].json.gz`, one JSON object
  per line (`reviewerID, asin, overall, reviewText, unixReviewTime, ...`), and `meta_<Category>.json.gz`,
  one *Python literal* dict per line (`{'asin': ..., 'title': ..., 'brand': ...}`, parsed with
  `ast.literal_eval`, never `eval`).
- 2018 (nijianmo.github.io/amazon): `<Category>[_5].json.gz` (same review keys, JSON lines) and
  `meta_<Category>.json.gz` (JSON lines with `asin, title, brand, ...`).
Each line may be either syntax, so one reader serves both. HTML entities in titles and brands are
unescaped (the 2018 metadata has many). Reviews of items missing from the metadata get an untitled
item (the recipe drops and counts them).
"""
import ast
import html
import json
from typing import Iterator, Optional

from data.prepare.records import BadLines, Interaction, Item, ItemTable, clean_text, open_text_lines, parse_rating


def parse_object(line: str) -> Optional[dict]:
    """JSON first (fast); the 2014 metadata's Python-literal dicts second."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        try:
            obj = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
    return obj if isinstance(obj, dict) else None


def _objects(path, bad: BadLines) -> Iterator[tuple[int, dict]]:
    for lineno, line in open_text_lines(path, bad):
        if not line.strip():
            continue
        obj = parse_object(line)
        if obj is None:
            bad.bad(path, lineno, "broken_json", "neither JSON nor a Python literal dict")
            continue
        yield lineno, obj


def _text(value) -> Optional[str]:
    return clean_text(html.unescape(value)) if isinstance(value, str) else None


def read_meta(path, bad: BadLines) -> dict[str, Item]:
    items = ItemTable(bad, path)
    for lineno, obj in _objects(path, bad):
        asin = obj.get("asin")
        if not isinstance(asin, str) or not asin:
            bad.bad(path, lineno, "missing_field", "asin")
            continue
        if asin in items:
            bad.ignore("duplicate_meta_asin")
            continue
        items[asin] = Item(asin, title=_text(obj.get("title")), brand=_text(obj.get("brand")))
    return items


def read(reviews, bad: BadLines, meta=None, **_) -> Iterator[Interaction]:
    items = read_meta(meta, bad) if meta else {}
    seq = 0
    for lineno, obj in _objects(reviews, bad):
        user, asin = obj.get("reviewerID"), obj.get("asin")
        if not user or not asin:
            bad.bad(reviews, lineno, "missing_field", "reviewerID" if not user else "asin")
            continue
        ok, rating = parse_rating(obj.get("overall"), reviews, lineno, bad)
        if not ok:
            continue
        time = obj.get("unixReviewTime")
        if not isinstance(time, (int, float)):
            bad.bad(reviews, lineno, "bad_time", f"unixReviewTime={time!r}")
            continue
        item = items.get(asin) or items.setdefault(asin, Item(asin))
        yield Interaction(str(user), item, time=float(time), rating=rating, review=_text(obj.get("reviewText")), seq=seq)
        seq += 1
