"""The normalised records every source reader yields, and the bad-input policy they share.

A reader turns one raw dataset into a stream of `Interaction`s, which the build writes to columnar files
as it reads them (data/prepare/normalise.py). Item metadata lives in one shared `Item` per item id (not copied
per interaction): a reader holds its item table, never its interactions.

Raw ids: where a dataset re-numbers users or items (P5's integer ids), the reader keeps the original ids
(reviewerID, ASIN) beside them as `Interaction.raw_user` and `Item.raw_id`; elsewhere they are None and the
id itself is the raw id. Excluding the users of another source (`exclude_users_of`) and the leakage audit
compare raw ids, so a P5 benchmark and the raw Amazon files it came from are compared in one id space.

Bad input: a reader reports a malformed line through `BadLines.bad(path, lineno, reason, detail)`.
By default that raises `DataError("path:line: reason: detail")`; with `skip_bad` the line is skipped
and counted under `reason`, so the pipeline's report can show that every line is accounted for.
"""
import collections
import datetime
import gzip
import io
import json
import math
import pathlib
from dataclasses import dataclass
from typing import Iterator, Optional

# Item metadata fields the templates of App. B can show (all optional except through the recipe,
# which drops items without a title).
ITEM_FIELDS = ("title", "brand", "author", "genres", "city", "description")


class DataError(ValueError):
    """Bad input; the message names the file and line."""


@dataclass(slots=True)
class Item:
    id: str
    title: Optional[str] = None
    brand: Optional[str] = None
    author: Optional[str] = None
    genres: Optional[str] = None  # already joined, e.g. "Animation, Children's, Comedy"
    city: Optional[str] = None
    description: Optional[str] = None
    raw_id: Optional[str] = None  # the dataset's own id (an ASIN) where `id` is a re-numbering (P5)


@dataclass(slots=True)
class Interaction:
    user: str
    item: Item
    time: Optional[float] = None  # unix seconds; None when the source has no time (file order is used)
    rating: Optional[float] = None  # on the source's own scale (5 or 10); None when not given
    review: Optional[str] = None
    seq: int = 0  # position in the source's reading order: the tie-breaker of the stable sort
    raw_user: Optional[str] = None  # the dataset's own user id (a reviewerID) where `user` is a re-numbering (P5)
    # earlier interactions of this user with the same item at the same time (users may repeat an item, e.g.
    # on Yelp): with user, item and time, the interaction's identity, which the manifests and the audit use
    occurrence: int = 0


def clean_text(value) -> Optional[str]:
    """Fold whitespace (newlines would break the one-item-per-line templates); '' becomes None."""
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text or None


class BadLines:
    """Raise on the first malformed line, or (skip_bad) count it by reason and go on. It also carries the
    source's other input rules: the ratings its domain allows (`rating_range`, checked by parse_rating) and what a
    repeated item id means (`duplicate_items`: keep_first | keep_last | error, applied by ItemTable)."""

    def __init__(self, skip_bad: bool = False, rating_range: Optional[tuple] = None,
                 duplicate_items: str = "keep_first", history_limit: Optional[int] = None):
        self.skip_bad = skip_bad
        self.rating_range, self.duplicate_items = rating_range, duplicate_items
        # a reader whose line is one user's whole history (P5) keeps only its newest history_limit items while
        # reading, so that one huge line costs no more than its text (counted "history_over_limit")
        self.history_limit = history_limit
        self.counts: collections.Counter = collections.Counter()
        self.examples: dict[str, str] = {}  # first occurrence per reason, for the report
        # well-formed rows that are not interactions by design (e.g. Steam "play" rows), by reason
        self.ignored: collections.Counter = collections.Counter()

    def bad(self, path, lineno: Optional[int], reason: str, detail: str = "") -> None:
        where = (f"{path}:{lineno}" if lineno is not None else f"{path}") + f": {reason}"
        where += f": {detail}" if detail else ""
        if not self.skip_bad:
            raise DataError(where + " (use --skip_bad=true to skip and count such lines)")
        self.counts[reason] += 1
        self.examples.setdefault(reason, where)

    def ignore(self, reason: str, n: int = 1) -> None:
        self.ignored[reason] += n

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class ItemTable(dict):
    """A reader's items by id. A repeated id follows the source's `duplicate_items` policy (BadLines): keep_first
    (the default) or keep_last, counted as ignored rows "duplicate_item_id", or error (a bad line naming the id)."""

    def __init__(self, bad: BadLines, path):
        super().__init__()
        self.bad, self.path = bad, path

    def __setitem__(self, key, item) -> None:
        if key in self:
            policy = self.bad.duplicate_items
            if policy == "error":
                self.bad.bad(self.path, None, "duplicate_item_id", f"item {key!r} is defined twice")
                return
            self.bad.ignore("duplicate_item_id")
            if policy == "keep_first":
                return
        super().__setitem__(key, item)


def open_text_lines(path, bad: BadLines, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without newline) from a plain or .gz file.

    Lines are decoded one by one so that a bad byte sequence is reported on its own line
    (reason "bad_encoding") instead of failing the whole file.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as e:
                bad.bad(path, lineno, "bad_encoding", str(e))
                continue
            yield lineno, line.rstrip("\r\n")


def open_text(path, encoding: str = "utf-8") -> io.TextIOBase:
    """A text handle on a plain or .gz file (for csv readers that need a file object)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")


def parse_rating(value, path, lineno: int, bad: BadLines, *, missing=()) -> tuple[bool, Optional[float]]:
    """-> (ok, rating). Values in `missing` (e.g. 0 for implicit feedback) mean 'no rating'."""
    try:
        rating = float(value)
    except (TypeError, ValueError):
        bad.bad(path, lineno, "bad_rating", f"not a number: {value!r}")
        return False, None
    if not math.isfinite(rating):  # NaN, inf
        bad.bad(path, lineno, "bad_rating", f"not a finite number: {value!r}")
        return False, None
    if rating in missing:
        return True, None
    if bad.rating_range is not None and not bad.rating_range[0] <= rating <= bad.rating_range[1]:
        bad.bad(path, lineno, "rating_out_of_scale", f"{value!r} is outside the domain's scale {bad.rating_range}")
        return False, None
    return True, rating


def json_lines(path, bad: BadLines) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line of a JSON-lines file; a line that is not a JSON
    object is reported as "broken_json"."""
    for lineno, line in open_text_lines(path, bad):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            bad.bad(path, lineno, "broken_json", str(e))
            continue
        if not isinstance(obj, dict):
            bad.bad(path, lineno, "broken_json", "not a JSON object")
            continue
        yield lineno, obj


def parse_utc_time(value, path, lineno: int, bad: BadLines, fmt: Optional[str] = None) -> tuple[bool, Optional[float]]:
    """-> (ok, unix seconds) of a date/time string read as UTC: ISO format, or `fmt` (strptime)."""
    try:
        t = datetime.datetime.fromisoformat(value) if fmt is None else datetime.datetime.strptime(value, fmt)
    except (TypeError, ValueError):
        bad.bad(path, lineno, "bad_time", repr(value))
        return False, None
    return True, t.replace(tzinfo=datetime.timezone.utc).timestamp()
