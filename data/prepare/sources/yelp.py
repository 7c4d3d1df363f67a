"""Yelp Open Dataset (yelp.com/dataset), the 2020 and 2021 releases (JSON lines).

Config keys: `reviews` (`yelp_academic_dataset_review.json`: `user_id, business_id, stars, text,
date "YYYY-MM-DD HH:MM:SS"`) and `business` (`yelp_academic_dataset_business.json`:
`business_id, name, city, ...`). Optional `date_min` / `date_max`: keep reviews with
date_min <= date <= date_max compared **as strings**, exactly as P5's Yelp notebook does
('2019-01-01 00:00:00' .. '2019-12-31 00:00:00' for the benchmark; later times on Dec 31 fall out).
"""
from typing import Iterator, Optional

from data.prepare.records import (BadLines, Interaction, Item, ItemTable, clean_text, json_lines, parse_rating,
                                  parse_utc_time)


def read(reviews, bad: BadLines, business=None, date_min: Optional[str] = None, date_max: Optional[str] = None,
         **_) -> Iterator[Interaction]:
    items = ItemTable(bad, business)
    if business:
        for lineno, obj in json_lines(business, bad):
            if not obj.get("business_id"):
                bad.bad(business, lineno, "missing_field", "business_id")
                continue
            items[obj["business_id"]] = Item(obj["business_id"], title=clean_text(obj.get("name")),
                                             city=clean_text(obj.get("city")))
    seq = 0
    for lineno, obj in json_lines(reviews, bad):
        user, biz, date = obj.get("user_id"), obj.get("business_id"), obj.get("date")
        if not user or not biz or not isinstance(date, str):
            missing = "user_id" if not user else "business_id" if not biz else "date"
            bad.bad(reviews, lineno, "missing_field", missing)
            continue
        if (date_min is not None and date < date_min) or (date_max is not None and date > date_max):
            bad.ignore("outside_date_range")
            continue
        ok, rating = parse_rating(obj.get("stars"), reviews, lineno, bad)
        if not ok:
            continue
        ok, time = parse_utc_time(date, reviews, lineno, bad)
        if not ok:
            continue
        item = items.get(biz) or items.setdefault(biz, Item(biz))
        yield Interaction(user, item, time=time, rating=rating, review=clean_text(obj.get("text")), seq=seq)
        seq += 1
