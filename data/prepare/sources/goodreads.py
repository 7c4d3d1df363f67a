"""Goodreads (Wan and McAuley 2018, UCSD Book Graph), gzipped JSON lines:
- `reviews` (`goodreads_reviews_dedup.json.gz`: `user_id, book_id, rating, review_text, date_added
  "Fri Aug 25 13:55:02 -0700 2017"`; rating 0 = no rating);
- `books` (`goodreads_books.json.gz`: `book_id, title, authors [{"author_id", "role"}]`);
- optional `authors` (`goodreads_book_authors.json.gz`: `author_id, name`) and `genres`
  (`goodreads_book_genres_initial.json.gz`: `book_id, genres {name: votes}`; listed by votes, ties by name).
"""
import datetime
from typing import Iterator

from data.prepare.records import BadLines, Interaction, Item, ItemTable, clean_text, json_lines, parse_rating


def read(reviews, bad: BadLines, books, authors=None, genres=None, **_) -> Iterator[Interaction]:
    names = {o["author_id"]: o.get("name") for _, o in json_lines(authors, bad)} if authors else {}
    book_genres = {}
    if genres:
        for _, o in json_lines(genres, bad):
            g = sorted((o.get("genres") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
            book_genres[o["book_id"]] = ", ".join(k for k, _ in g) or None
    items = ItemTable(bad, books)
    for _, o in json_lines(books, bad):
        author_names = [names.get(a.get("author_id")) for a in o.get("authors") or []]
        items[o["book_id"]] = Item(o["book_id"], title=clean_text(o.get("title")),
                                   author=clean_text(", ".join(a for a in author_names if a)),
                                   genres=book_genres.get(o["book_id"]))
    seq = 0
    for lineno, o in json_lines(reviews, bad):
        if not o.get("user_id") or not o.get("book_id"):
            bad.bad(reviews, lineno, "missing_field", "user_id" if not o.get("user_id") else "book_id")
            continue
        ok, rating = parse_rating(o.get("rating"), reviews, lineno, bad, missing=(0.0,))
        if not ok:
            continue
        try:
            time = datetime.datetime.strptime(o.get("date_added", ""), "%a %b %d %H:%M:%S %z %Y").timestamp()
        except ValueError:
            bad.bad(reviews, lineno, "bad_time", repr(o.get("date_added")))
            continue
        item = items.get(o["book_id"]) or items.setdefault(o["book_id"], Item(o["book_id"]))
        yield Interaction(o["user_id"], item, time=time, rating=rating, review=clean_text(o.get("review_text")), seq=seq)
        seq += 1
