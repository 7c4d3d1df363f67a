"""Stage 1: each source, read once by its reader, into two columnar files under <work_dir>/sources/<name>/:

    interactions.parquet   user, item, time, rating, review, seq, raw_user   (the reader's order)
    items.parquet          id, title, brand, author, genres, city, description, raw_id

Interactions stream from the reader to the file a row group at a time; only the item table is held (the
reader's own, plus the ids seen). `items.parquet` has every item an interaction names, and for a reader
with `read_catalog` (P5) every item of its table: a benchmark's evaluation catalog. The bad-line counts
of the reader go into done.json beside them.
"""
import pathlib

import pyarrow as pa

from data.prepare import engine, workdir
from data.prepare.config import BuildConfig, SourceConfig
from data.prepare.records import ITEM_FIELDS, BadLines
from data.prepare.sources import get_reader

INTERACTIONS = pa.schema([("user", pa.string()), ("item", pa.string()), ("time", pa.float64()),
                          ("rating", pa.float64()), ("review", pa.string()), ("seq", pa.int64()),
                          ("raw_user", pa.string())])
ITEMS = pa.schema([("id", pa.string()), *[(f, pa.string()) for f in ITEM_FIELDS], ("raw_id", pa.string())])


def source_dir(cfg: BuildConfig, name: str) -> pathlib.Path:
    return pathlib.Path(cfg.work_dir) / "sources" / name


def source_fingerprint(cfg: BuildConfig, s: SourceConfig) -> str:
    code = workdir.code_fingerprint(__name__, "data.prepare.records", "data.prepare.engine", "data.prepare.sources",
                                    "data.prepare.sources.csvutil", f"data.prepare.sources.{s.reader}")
    return workdir.fingerprint("normalise", code, s.reader, s.options, cfg.skip_bad,
                               workdir.input_stats(s.options))


def write_source(cfg: BuildConfig, s: SourceConfig, out: pathlib.Path) -> dict:
    reader = get_reader(s.reader)
    bad = BadLines(cfg.skip_bad)
    items: dict = {}  # id -> Item, in first-seen order (the reader's catalog first)
    if hasattr(reader, "read_catalog"):
        items.update(reader.read_catalog(bad=bad, **s.options))
        stream = reader.read(bad=bad, catalog=items, **s.options)
    else:
        stream = reader.read(bad=bad, **s.options)
    rows = engine.ParquetColumns(out / "interactions.parquet", INTERACTIONS)
    user, item_id, time, rating, review, seq, raw_user = (c.append for c in rows.columns)
    for k, x in enumerate(stream, 1):
        item = x.item
        if item.id not in items:
            items[item.id] = item
        user(x.user), item_id(item.id), time(x.time), rating(x.rating), review(x.review), seq(x.seq)
        raw_user(x.raw_user)
        if not k % 8192:
            rows.flush_if_full()
    n = rows.close()
    table = engine.ParquetColumns(out / "items.parquet", ITEMS)
    for column, name in zip(table.columns, ITEMS.names):
        column += [getattr(item, name) for item in items.values()]
    table.close()
    return {"interactions_read": n, "items": len(items), "bad_lines": dict(sorted(bad.counts.items())),
            "bad_line_examples": bad.examples, "ignored_rows": dict(sorted(bad.ignored.items()))}


def normalise(cfg: BuildConfig, s: SourceConfig) -> dict:
    """The normalised source (reused when its reader, options and input files are unchanged) -> its record."""
    fp = source_fingerprint(cfg, s)
    folder = source_dir(cfg, s.name)
    if not workdir.is_done(folder, fp):
        workdir.log(f"reading {s.name} ({s.reader})")
    return workdir.run_stage(folder, fp, lambda out: write_source(cfg, s, out), f"source {s.name}")
