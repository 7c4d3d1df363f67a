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

Item tokens (a source's `item_tokens: true`; Hua et al.'s independent indexing, p5.md [RID]): the same layout with
each item written as one token of its own and each rating as one token, so that a line costs 2-3 tokens instead of
20-30 (a pre-training line "<movielens-100k#50>4.0/5.0", a history line "<movielens-100k#50>"; a rating prompt's
last line is the bare item token and its answer the rating's token). The headers and instructions stay App. B's.
"""
import dataclasses
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
    # a source with item_tokens (source_domain): the token namespace (the source's name). Each item is then written as
    # its own token, `<{namespace}#{id}>`, in place of every field of its line, and a rating as its own token right
    # after it (the tokenizer adds both, data/prepare/bpe.py); None: App. B's text lines
    item_tokens: Optional[str] = None

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


def source_domain(source) -> Domain:
    """The templates of a build source (a SourceConfig): its domain's, written with item tokens when it asks for them."""
    d = get_domain(source.domain)
    return dataclasses.replace(d, item_tokens=source.name) if source.item_tokens else d


def item_token(namespace: str, item_id: str) -> str:
    """The added token that names one item of an item-token source, e.g. `<movielens-100k#50>`."""
    return f"<{namespace}#{item_id}>"


def render_fields(fields: Fields, x: Interaction, d: Domain) -> str:
    # "Label: value" of each field the interaction has (attribute "review" is the interaction's, the others
    # its item's), joined by "; "; a plain loop: this runs for every line of every text the pipeline writes.
    # With item tokens the item's one token replaces them all
    if d.item_tokens:
        return item_token(d.item_tokens, x.item.id)
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
    line = render_fields(d.pretrain, x, d)
    if d.scale is not None and x.rating is not None:
        line += rating_part(d, x.rating)
    return line


def rating_part(d: Domain, rating: float) -> str:
    # "; Rating: 4.0/5.0", or with item tokens the bare rating string, one added token (no label to spend tokens on)
    return format_rating(rating, d.scale) if d.item_tokens else f"; Rating: {format_rating(rating, d.scale)}"


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
    line = render_fields(d.rating, x, d)
    if hide:
        return line if d.item_tokens else line + "; Rating:"
    if x.rating is not None:
        line += rating_part(d, x.rating)
    return line


def rating_pair(d: Domain, context: Sequence[Interaction]) -> tuple[str, str]:
    """B.2.1: context = i_1 .. i_{n-1}; the last item is shown without its rating, which is the answer."""
    if d.rating is None:
        raise ValueError(f"domain {d.name!r} has no rating template (App. B.2.1)")
    *history, target = context
    lines = [rating_line(d, x) for x in history] + [rating_line(d, target, hide=True)]
    return wrap_prompt(RATING_TASK, d, lines), format_rating(target.rating, d.scale)


def next_item_line(d: Domain, fields: Fields, x: Interaction) -> str:
    line = render_fields(fields, x, d)
    return line + ";" if d.trailing_semicolon and not d.item_tokens else line


def item_text(d: Domain, item: Item) -> str:
    """An item as a next-item response (also the catalog string the evaluation grounds to)."""
    return next_item_line(d, d.response, Interaction("", item))


def next_item_pair(d: Domain, history: Sequence[Interaction], target: Item) -> tuple[str, str]:
    """B.2.2: history = i_1 .. i_{n-1} (title-level fields only), answer = i_n."""
    lines = [next_item_line(d, d.history, x) for x in history]
    return wrap_prompt(NEXT_ITEM_TASK, d, lines), item_text(d, target)
