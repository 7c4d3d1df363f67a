"""Pre-training token shards: writer and the memory-mapped reader a training job uses; meta.json.

Layout (all paths relative to the build's out_dir, listed in out_dir/meta.json["pretrain"]):
    pretrain/pretrain-<j>.bin   raw little-endian uint16 (vocab <= 65535) or uint32,
                                rows x seq_len tokens, C order, no header
Documents are concatenated with one EOS after each and cut into rows of exactly seq_len tokens; a
document may continue from one row into the next. The last row is filled up with EOS (counted as
`padding_tokens`).

    ds = PackedDataset("out/data/movielens-100k")   # or .../meta.json
    len(ds); ds[i] -> np.ndarray (seq_len,) of the meta's dtype
    PackedDataset(path, "pretrain_valid")           # the build's validation rows, when it wrote them

A build may write a held-out validation split beside the training one: meta.json["pretrain_valid"] (rows) and
meta.json["instructions_valid"] (pairs), same layout, under pretrain_valid/ and instructions_valid/.
"""
import json
import pathlib

import numpy as np

FORMAT = "recgpt-packed"
FORMAT_VERSION = 2  # 2: one pretrain/ and one instructions/ folder, Parquet manifests (was parts/<i>-of-<N>/)


class PackWriter:
    def __init__(self, out_dir, prefix: str, seq_len: int, dtype: str, rows_per_shard: int, eos_id: int):
        self.out_dir, self.prefix = pathlib.Path(out_dir), prefix
        self.seq_len, self.dtype, self.rows_per_shard, self.eos_id = seq_len, np.dtype(dtype), rows_per_shard, eos_id
        self._eos = np.full(1, eos_id, dtype=self.dtype)
        self.pending: list[np.ndarray] = []  # documents and EOS not yet written, in order
        self.pending_tokens = 0
        self.shards: list[dict] = []  # {"file": name relative to out_dir, "rows": n}
        self._file = None
        self._rows_in_file = 0
        self.documents = self.tokens = self.padding_tokens = 0
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def add(self, ids: list[int]) -> None:
        """One document; EOS is appended here."""
        # one array per document (fromiter: the quickest way from a list of ints), joined when written
        self._append([np.fromiter(ids, dtype=self.dtype, count=len(ids)), self._eos])
        self.documents += 1

    def extend(self, tokens: np.ndarray, documents: int) -> None:
        """A stream of `documents` documents, each already followed by its EOS (a build's document stream)."""
        self._append([np.asarray(tokens, dtype=self.dtype)])
        self.documents += documents

    def _append(self, arrays: list) -> None:
        n = sum(len(a) for a in arrays)
        self.pending += arrays
        self.pending_tokens += n
        self.tokens += n
        if self.pending_tokens >= 64 * self.seq_len:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        tokens = np.concatenate(self.pending) if self.pending else np.zeros(0, self.dtype)
        n_rows = len(tokens) // self.seq_len
        if final and len(tokens) % self.seq_len:
            pad = self.seq_len - len(tokens) % self.seq_len
            tokens = np.concatenate([tokens, np.full(pad, self.eos_id, dtype=self.dtype)])
            self.padding_tokens += pad
            n_rows += 1
        rest = tokens[n_rows * self.seq_len:]
        self.pending, self.pending_tokens = ([rest] if len(rest) else []), len(rest)
        rows = tokens[: n_rows * self.seq_len].reshape(n_rows, self.seq_len)
        while len(rows):
            if self._file is None:
                name = f"{self.prefix}-{len(self.shards):05d}.bin"
                self.shards.append({"file": name, "rows": 0})
                self._file = open(self.out_dir / name, "wb")
                self._rows_in_file = 0
            take = min(len(rows), self.rows_per_shard - self._rows_in_file)
            rows[:take].astype(self.dtype.newbyteorder("<"), copy=False).tofile(self._file)
            self._rows_in_file += take
            self.shards[-1]["rows"] += take
            rows = rows[take:]
            if self._rows_in_file == self.rows_per_shard:
                self._file.close()
                self._file = None

    def close(self) -> list[dict]:
        self._flush(final=True)
        if self._file is not None:
            self._file.close()
            self._file = None
        return self.shards


def section_meta(writer: PackWriter, shards: list[dict], folder: str) -> dict:
    """meta.json's entry for the rows a closed PackWriter wrote into out_dir/`folder` (e.g. "pretrain")."""
    return {"dtype": writer.dtype.name, "seq_len": writer.seq_len, "eos_id": writer.eos_id,
            "shards": [{"file": f"{folder}/{s['file']}", "rows": s["rows"]} for s in shards],
            "rows": sum(s["rows"] for s in shards), "documents": writer.documents, "tokens": writer.tokens,
            "padding_tokens": writer.padding_tokens}


def read_meta(path) -> tuple[pathlib.Path, dict]:
    path = pathlib.Path(path)
    meta_path = path / "meta.json" if path.is_dir() else path
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: no meta.json (run python -m data.prepare first)")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta_path}: not valid JSON ({e}); the build was interrupted or the file edited: build "
                         f"again") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path}: not a JSON object")
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r} v{meta.get('format_version')!r}, "
                         f"expected {FORMAT!r} v{FORMAT_VERSION}")
    return meta_path, meta


def read_section(path, name: str) -> tuple[pathlib.Path, dict, dict]:
    """(meta.json path, meta, meta[name]); a missing or empty section is an error naming the file."""
    meta_path, meta = read_meta(path)
    if not meta.get(name):
        raise ValueError(f"{meta_path}: no {name!r} section")
    return meta_path, meta, meta[name]


class PackedDataset:
    """Rows of pre-training tokens, memory-mapped; deterministic (row i is always the same)."""

    def __init__(self, path, section: str = "pretrain"):
        meta_path, meta, p = read_section(path, section)
        root = meta_path.parent
        for key in ("dtype", "seq_len", "shards", "eos_id"):
            if key not in p:
                raise ValueError(f"{meta_path}: {section}.{key} missing")
        if p["dtype"] not in ("uint16", "uint32"):
            raise ValueError(f"{meta_path}: {section}.dtype {p['dtype']!r} is not uint16/uint32")
        self.seq_len, self.eos_id = int(p["seq_len"]), int(p["eos_id"])
        self.dtype = np.dtype(p["dtype"]).newbyteorder("<")
        self.meta = meta
        self._maps, self._starts, total = [], [], 0
        for shard in p["shards"]:
            f = root / shard["file"]
            if not f.is_file():
                raise FileNotFoundError(f"{f}: shard listed in {meta_path} is missing")
            expected = shard["rows"] * self.seq_len * self.dtype.itemsize
            if f.stat().st_size != expected:
                raise ValueError(f"{f}: {f.stat().st_size} bytes, {meta_path} says {shard['rows']} rows "
                                 f"x {self.seq_len} x {self.dtype.itemsize} = {expected}")
            if shard["rows"]:
                self._maps.append(np.memmap(f, dtype=self.dtype, mode="r", shape=(shard["rows"], self.seq_len)))
                self._starts.append(total)
                total += shard["rows"]
        self._len = total

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> np.ndarray:
        if not -self._len <= i < self._len:
            raise IndexError(f"row {i} out of range for {self._len} rows")
        i %= self._len
        s = int(np.searchsorted(self._starts, i, side="right")) - 1
        return np.array(self._maps[s][i - self._starts[s]])
