"""HotelRec (Antognini and Faltings 2020): `HotelRec.txt`, JSON lines with `hotel_url, author, date
("2017-02-01T00:00:00"), rating, title, text, property_dict`. Config: `path` (the file, or .gz).

The hotel's name and location come from its TripAdvisor URL,
`Hotel_Review-g<geo>-d<id>-Reviews-<Hotel_Name>-<Location>.html`: Title = the name and City = the
location, underscores as spaces (the URL does not separate city from region, so "City" may carry
the region too, e.g. "Giulianova Province of Teramo Abruzzo"). Review = `text` (the review's own
`title` is its headline, not the item's).
"""
import re
from typing import Iterator

from data.prepare.records import (BadLines, Interaction, Item, ItemTable, clean_text, json_lines, parse_rating,
                                  parse_utc_time)

URL = re.compile(r"-Reviews-(?P<name>[^-]+)-(?P<loc>[^.]+)\.html$")


def read(path, bad: BadLines, **_) -> Iterator[Interaction]:
    items = ItemTable(bad, path)
    seq = 0
    for lineno, r in json_lines(path, bad):
        url, user, date = r.get("hotel_url"), r.get("author"), r.get("date")
        if not url or not user or not date:
            bad.bad(path, lineno, "missing_field", "hotel_url" if not url else "author" if not user else "date")
            continue
        ok, rating = parse_rating(r.get("rating"), path, lineno, bad)
        if not ok:
            continue
        ok, time = parse_utc_time(date, path, lineno, bad)
        if not ok:
            continue
        if url not in items:
            m = URL.search(url)
            items[url] = Item(url, title=clean_text(m["name"].replace("_", " ")) if m else None,
                              city=clean_text(m["loc"].replace("_", " ")) if m else None)
        yield Interaction(user, items[url], time=time, rating=rating, review=clean_text(r.get("text")), seq=seq)
        seq += 1
