"""Which interactions each output of a build holds, for the leakage audit (data/prepare/audit.py).

One Parquet file per job, under <out_dir>/manifests/<source>/, one row per interaction used:

    source, use ("pretrain" | "finetune" | "heldout"), task and split (held-out rows: "next_item" |
    "rating", "validation" | "test"), user, item, time, occurrence (the interaction's identity in its
    source), raw_user, raw_item (its identity across sources: P5's reviewerID and ASIN, or the ids).
"""
import pyarrow as pa

from data.prepare import engine

SCHEMA = pa.schema([("source", pa.string()), ("use", pa.string()), ("task", pa.string()), ("split", pa.string()),
                    ("user", pa.string()), ("item", pa.string()), ("time", pa.float64()),
                    ("occurrence", pa.int64()), ("raw_user", pa.string()), ("raw_item", pa.string())])


class ManifestWriter:
    def __init__(self, path, source: str, use_suffix: str = ""):
        """use_suffix: "_valid" for the validation split's outputs ("pretrain_valid", "finetune_valid")."""
        self.source, self.use_suffix = source, use_suffix
        self._rows = engine.ParquetColumns(path, SCHEMA)

    def add(self, use: str, history, task=None, split=None) -> None:
        use += self.use_suffix
        n = len(history)
        source, kind, task_, split_, user, item, time, occurrence, raw_user, raw_item = self._rows.columns
        source += [self.source] * n
        kind += [use] * n
        task_ += [task] * n
        split_ += [split] * n
        user += [x.user for x in history]
        item += [x.item.id for x in history]
        time += [x.time for x in history]
        occurrence += [x.occurrence for x in history]
        raw_user += [x.raw_user for x in history]
        raw_item += [x.item.raw_id or x.item.id for x in history]
        self._rows.flush_if_full()

    def close(self) -> int:
        return self._rows.close()
