"""Every template of RecGPT App. B, as data: one `Domain` per row of the paper's tables.

Text and serialisation follow ../shared/spec/recgpt.md §7 (App. B with the paper's line wraps
joined) and §7.4 (blank lines, `### Instruction:` / `### Response:` wrapping):

    prompt   = "### Instruction:\n" + TASK + "\n" + HEADER + "\n\n" + LINE_1 + "\n" ... LINE_k + "\n\n### Response:"
    response = the bare target ("5.0/5.0" or "Title: ...; Brand: ...")
    document = HEADER + "\n\n" + LINE_1 + "\n" ... LINE_k      (pre-training; layout unverified, §7.4)

A line is "Label: value" pairs joined by "; ", then "; Rating: r/S" (one decimal). A field the
item lacks (no brand, no review) is left out with its label and separator, never printed empty;
a missing rating drops the "; Rating: ..." part of a pre-training line.

Paper quirks kept on purpose (§7.5): Amazon Books uses `Brand:` in B.1, `Author:` in B.2.1 and
`Author: ...;` with a trailing semicolon in B.2.2; the Goodreads and MovieLens next-item responses
omit Genres. Amazon's metadata has no author field, so Amazon Books' "Author" shows `brand` (the
paper's own B.2.2 placeholder is `{brand}`). ".." and "...Title" in the paper are typos for "...".
"""
import functools
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from data.prepare.records import Interaction, Item

NEXT_ITEM_TASK = "Predict the next item."
RATING_TASK = "Predict rating for the last item."
Fields = tuple[tuple[str, str], ...]  # (label, attribute); attribute "review" is the interaction's

T, BR, AU, GE, CI, RE, DE = (("Title", "title"), ("Brand", "brand"), ("Author", "author"), ("Genres", "genres"),
                             ("City", "city"), ("Review", "review"), ("Description", "description"))


@dataclass(frozen=True)
class Domain:
    name: str
    noun: str  # "... with {noun} as follows:"
    pretrain: Fields  # B.1 line fields (before the rating)
    rating: Optional[Fields]  # B.2.1 line fields; None: the domain has no rating task (Steam, WikiRec)
    history: Fields  # B.2.2 history line fields
    response: Fields  # B.2.2 response fields
    scale: Optional[float] = 5.0  # "/5.0" or "/10.0"; None: no ratings at all
    trailing_semicolon: bool = False  # B.2.2 Amazon Books prints "Author: {brand};"

    @property
    def header(self) -> str:
        return f"Given the interaction history of a user with {self.noun} as follows:"


AMAZON_BOOKS_AUTHOR = ("Author", "brand")
DOMAINS = {d.name: d for d in [
    Domain("amazon", "products", (T, BR, RE), (T, BR, RE), (T, BR), (T, BR)),
    Domain("amazon_books", "books", (T, BR, RE), (T, AMAZON_BOOKS_AUTHOR, RE), (T, AMAZON_BOOKS_AUTHOR),
           (T, AMAZON_BOOKS_AUTHOR), trailing_semicolon=True),
    Domain("anime", "movies/shows", (T, GE), (T, GE), (T, GE), (T, GE), scale=10.0),
    Domain("bookcrossing", "books", (T, AU), (T, AU), (T, AU), (T, AU), scale=10.0),
    Domain("food", "food recipes", (T, RE), (T, RE), (T,), (T,)),
    Domain("goodreads", "books", (T, AU, GE, RE), (T, AU, GE, RE), (T, AU, GE), (T, AU)),
    Domain("hotelrec", "hotels", (T, CI, RE), (T, CI, RE), (T, CI), (T, CI)),
    Domain("movielens", "movies/shows", (T, GE), (T, GE), (T, GE), (T,)),
    Domain("netflix", "movies/shows", (T,), (T,), (T,), (T,)),
    Domain("steam", "video games", (T,), None, (T,), (T,), scale=None),
    Domain("wikirec", "Wikipedia articles", (T, DE), None, (T, DE), (T, DE), scale=None),
    Domain("yelp", "businesses", (T, CI, RE), (T, CI, RE), (T, CI), (T, CI)),
]}


def get_domain(name: str) -> Domain:
    if name not in DOMAINS:
        raise KeyError(f"unknown template domain {name!r}; known: {', '.join(DOMAINS)}")
    return DOMAINS[name]


def render_fields(fields: Fields, x: Interaction) -> str:
    # "Label: value" of each field the interaction has (attribute "review" is the interaction's, the others
    # its item's), joined by "; "; a plain loop: this runs for every line of every text the pipeline writes
    item, parts = x.item, []
    for label, attr in fields:
        v = x.review if attr == "review" else getattr(item, attr)
        if v:
            parts.append(f"{label}: {v}")
    return "; ".join(parts)


@functools.lru_cache(maxsize=4096)  # a few distinct values, formatted for every line of every text
def format_rating(rating: float, scale: float) -> str:
    return f"{rating:.1f}/{scale:.1f}"


def pretrain_line(d: Domain, x: Interaction) -> str:
    line = render_fields(d.pretrain, x)
    if d.scale is not None and x.rating is not None:
        line += f"; Rating: {format_rating(x.rating, d.scale)}"
    return line


PROMPT_TAIL = "\n\n### Response:"


def document_head(d: Domain) -> str:
    return d.header + "\n\n"


def prompt_head(task: str, d: Domain) -> str:
    return f"### Instruction:\n{task}\n{d.header}\n\n"


def pretrain_document(d: Domain, history: Sequence[Interaction]) -> str:
    return "\n".join(document_lines(d, [pretrain_line(d, x) for x in history]))


def document_lines(d: Domain, lines: Iterable[str]) -> list[str]:
    """A pre-training document as the list of its lines (the document is "\\n".join of them), from already
    rendered `pretrain_line`s: the header, a blank line, the item lines."""
    return [d.header, "", *lines]


def wrap_prompt(task: str, d: Domain, lines: Sequence[str]) -> str:
    return prompt_head(task, d) + "\n".join(lines) + PROMPT_TAIL


def rating_line(d: Domain, x: Interaction, hide: bool = False) -> str:
    line = render_fields(d.rating, x)
    if hide:
        return line + "; Rating:"
    if x.rating is not None:
        line += f"; Rating: {format_rating(x.rating, d.scale)}"
    return line


def rating_pair(d: Domain, context: Sequence[Interaction]) -> tuple[str, str]:
    """B.2.1: context = i_1 .. i_{n-1}; the last item is shown without its rating, which is the answer."""
    if d.rating is None:
        raise ValueError(f"domain {d.name!r} has no rating template (App. B.2.1)")
    *history, target = context
    lines = [rating_line(d, x) for x in history] + [rating_line(d, target, hide=True)]
    return wrap_prompt(RATING_TASK, d, lines), format_rating(target.rating, d.scale)


def next_item_line(d: Domain, fields: Fields, x: Interaction) -> str:
    line = render_fields(fields, x)
    return line + ";" if d.trailing_semicolon else line


def item_text(d: Domain, item: Item) -> str:
    """An item as a next-item response (also the catalog string the evaluation grounds to)."""
    return next_item_line(d, d.response, Interaction("", item))


def next_item_pair(d: Domain, history: Sequence[Interaction], target: Item) -> tuple[str, str]:
    """B.2.2: history = i_1 .. i_{n-1} (title-level fields only), answer = i_n."""
    lines = [next_item_line(d, d.history, x) for x in history]
    return wrap_prompt(NEXT_ITEM_TASK, d, lines), item_text(d, target)
