"""Stage 1: each source, read once by its reader, into two columnar files under <work_dir>/sources/<name>/:

    interactions.parquet   user, item, time, rating, review, seq, raw_user   (the reader's order)
    items.parquet          id, title, brand, author, genres, city, description, raw_id

Interactions stream from the reader to the file a row group at a time; only the item table is held (the
reader's own, plus the ids seen). `items.parquet` has every item an interaction names, and for a reader
with `read_catalog` (P5) every item of its table: a benchmark's evaluation catalog. The bad-line counts
of the reader go into done.json beside them.

Input rules applied here, for every reader: ratings finite and on the domain's scale (1 to its top; parse_rating),
times finite and between 1970 and 2100, text fields and reviews cut to limits.text_chars (counted
"text_truncated"), a repeated item id by duplicate_items, reader options checked against what the reader takes, and
a source that yields no interaction is an error. Bad records follow skip_bad (an error naming them, or counted).
"""
import collections
import inspect
import math
import pathlib

import pyarrow as pa

from config import ConfigError
from data.formats.evalfiles import RATING_LOW, item_id_order
from data.prepare import engine, templates, workdir
from data.prepare.config import BuildConfig, SourceConfig
from data.prepare.records import ITEM_FIELDS, BadLines, DataError
from data.prepare.sources import get_reader

INTERACTIONS = pa.schema([("user", pa.string()), ("item", pa.string()), ("time", pa.float64()),
                          ("rating", pa.float64()), ("review", pa.string()), ("seq", pa.int64()),
                          ("raw_user", pa.string())])
ITEMS = pa.schema([("id", pa.string()), *[(f, pa.string()) for f in ITEM_FIELDS], ("raw_id", pa.string())])


def source_dir(cfg: BuildConfig, name: str) -> pathlib.Path:
    return pathlib.Path(cfg.work_dir) / "sources" / name


def item_ids(con, cfg: BuildConfig, name: str) -> list[str]:
    """Every item id of a normalised source's catalog, in the catalog's order (evalfiles.item_id_order)."""
    table = engine.parquet(source_dir(cfg, name) / "items.parquet")
    return sorted((i for batch in engine.rows(con, f"SELECT id FROM {table}") for i in batch["id"]), key=item_id_order)


def source_fingerprint(cfg: BuildConfig, s: SourceConfig) -> str:
    code = workdir.code_fingerprint(__name__, "data.prepare.records", "data.prepare.engine", "data.prepare.sources",
                                    "data.prepare.sources.csvutil", f"data.prepare.sources.{s.reader}")
    return workdir.fingerprint("normalise", code, s.reader, s.domain, s.options, cfg.skip_bad, cfg.duplicate_items,
                               cfg.limits, workdir.input_stats(s.options))


# timestamps a real interaction can have: from 1970 to 2100 (unix seconds)
TIME_RANGE = (0.0, 4_102_444_800.0)


def check_options(s: SourceConfig, index: int) -> None:
    """A reader option that no reader function takes is a typo: an error naming it (readers accept **_ so that one
    options mapping serves read and read_catalog)."""
    reader = get_reader(s.reader)
    known = set()
    for fn in (getattr(reader, "read", None), getattr(reader, "read_catalog", None)):
        if fn is not None:
            known |= {p.name for p in inspect.signature(fn).parameters.values()
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"bad", "catalog"}
    unknown = sorted(set(s.options) - known)
    if unknown:
        raise ConfigError(f"key 'sources.{index}.options.{unknown[0]}': reader {s.reader!r} has no option "
                          f"{unknown[0]!r}; its options: {sorted(known)}")


def _cut(text, limit: int, counts):
    if text is not None and len(text) > limit:
        counts["text_truncated"] += 1
        return text[:limit]
    return text


def write_source(cfg: BuildConfig, s: SourceConfig, out: pathlib.Path) -> dict:
    reader = get_reader(s.reader)
    scale = templates.get_domain(s.domain).scale
    bad = BadLines(cfg.skip_bad, rating_range=(RATING_LOW, scale) if scale is not None else None,
                   duplicate_items=cfg.duplicate_items, history_limit=cfg.limits.history)
    items: dict = {}  # id -> Item, in first-seen order (the reader's catalog first)
    if hasattr(reader, "read_catalog"):
        items.update(reader.read_catalog(bad=bad, **s.options))
        stream = reader.read(bad=bad, catalog=items, **s.options)
    else:
        stream = reader.read(bad=bad, **s.options)
    limit, cut = cfg.limits.text_chars, collections.Counter()
    rows = engine.ParquetColumns(out / "interactions.parquet", INTERACTIONS)
    user, item_id, time, rating, review, seq, raw_user = (c.append for c in rows.columns)
    for k, x in enumerate(stream, 1):
        if x.time is not None and not (math.isfinite(x.time) and TIME_RANGE[0] <= x.time < TIME_RANGE[1]):
            bad.bad(f"{s.name} interaction {k}", None, "bad_time", f"user {x.user}, item {x.item.id}: time {x.time} "
                    f"is not a date between 1970 and 2100")
            continue
        if x.rating is not None and not math.isfinite(x.rating):  # readers that parse ratings themselves
            bad.bad(f"{s.name} interaction {k}", None, "bad_rating", f"user {x.user}, item {x.item.id}: {x.rating}")
            continue
        item = x.item
        if item.id not in items:
            items[item.id] = item
        user(x.user), item_id(item.id), time(x.time), rating(x.rating), review(_cut(x.review, limit, cut)), seq(x.seq)
        raw_user(x.raw_user)
        if not k % 8192:
            rows.flush_if_full()
    n = rows.close()
    if n == 0:
        raise DataError(f"source {s.name}: no interaction read from {s.options} (an empty input, or every line bad: "
                        f"{dict(bad.counts) or 'none'})")
    table = engine.ParquetColumns(out / "items.parquet", ITEMS)
    for column, name in zip(table.columns, ITEMS.names):
        column += [_cut(getattr(item, name), limit, cut) if name in ITEM_FIELDS else getattr(item, name)
                   for item in items.values()]
    table.close()
    return {"interactions_read": n, "items": len(items), "bad_lines": dict(sorted(bad.counts.items())),
            "bad_line_examples": bad.examples, "ignored_rows": dict(sorted((bad.ignored + cut).items()))}


def normalise(cfg: BuildConfig, s: SourceConfig) -> dict:
    """The normalised source (reused when its reader, options and input files are unchanged) -> its record."""
    fp = source_fingerprint(cfg, s)
    folder = source_dir(cfg, s.name)
    if not workdir.is_done(folder, fp):
        workdir.log(f"reading {s.name} ({s.reader})")
    return workdir.run_stage(folder, fp, lambda out: write_source(cfg, s, out), f"source {s.name}")
