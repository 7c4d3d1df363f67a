"""Throughput of the whole build (read, plan, render, tokenize, chunk, pack, merge) against the bare `tokenizers`
batch encoder on the same text, side by side, in one process.

    python -m data.prepare.bench configs/data/movielens-100k-neox.yaml [--key=value ...]

"The same text" is every text the build tokenizes for its outputs: the pre-training documents as written
(after chunking), the instruction prompts and responses, and the evaluation prompts. They are read back
from a build's outputs (documents decoded from the packed rows, which a byte-level BPE round-trips exactly;
the token counts printed show it), so nothing in the build serves the benchmark. Each repeat is a fresh
build (`--fresh`) with the build's default workers; a tokenizer the config trains is trained once, before
the timing. The bare side encodes the texts with a freshly loaded tokenizer (load outside the timing) in
batches of `--bare_batch`, with `encode_batch` and `encode_batch_fast`. Sides run interleaved, `--repeats`
times, and the best of each is used. Ratios are build tokens/s over bare tokens/s on the same tokens.
"""
import argparse
import json
import os
import pathlib
import shutil
import time

import numpy as np

from data.formats import tokenizer as tokenizer_lib
from data.formats.packed import PackedDataset
from data.prepare import config as config_lib
from data.prepare import pipeline


def bare_encode(tok_path: str, texts: list[str], batch: int, method: str) -> tuple[int, float]:
    tok = tokenizer_lib.load(tok_path)  # fresh: empty BPE cache
    encode_batch = getattr(tok, method)
    t0 = time.perf_counter()
    n = 0
    for i in range(0, len(texts), batch):
        n += sum(len(e.ids) for e in encode_batch(texts[i: i + batch], add_special_tokens=False))
    return n, time.perf_counter() - t0


def written_texts(out_dir: pathlib.Path, tok) -> tuple[list[str], int, int]:
    """The texts a build tokenized, read back from its outputs -> (texts, how many of them (the first) were
    written as token ids, and those ids' count); evaluation prompts are written as text only."""
    meta = json.loads((out_dir / "meta.json").read_text())
    eos = meta["pretrain"]["eos_id"]
    rows = PackedDataset(out_dir)
    stream = np.concatenate([rows[i] for i in range(len(rows))]) if len(rows) else np.zeros(0, np.int64)
    docs = np.split(stream, np.flatnonzero(stream == eos) + 1)[: meta["pretrain"]["documents"]]
    texts = tok.decode_batch([d[:-1].tolist() for d in docs], skip_special_tokens=False)
    n = meta["pretrain"]["tokens"] - meta["pretrain"]["documents"]  # without the EOS
    for part in meta["instructions"]["parts"]:
        with open(out_dir / part["jsonl"], encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                texts += [r["prompt"], r["response"]]
        index = np.load(out_dir / part["index"])
        n += int(index[:, 1].sum()) - len(index)  # without the EOS
    n_texts = len(texts)
    for e in meta["eval"].values():
        for name in e["files"]:
            with open(out_dir / e["dir"] / name, encoding="utf-8") as f:
                texts += [json.loads(line)["prompt"] for line in f]
    return texts, n_texts, n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", help="a data-build YAML; --key=value overrides follow")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each side, interleaved (best is used)")
    ap.add_argument("--bare_batch", type=int, default=1024, help="texts per encode_batch call (bare side)")
    args, rest = ap.parse_known_args(argv)
    cfg = config_lib.load(args.config, rest)
    out_dir = pathlib.Path(cfg.out_dir + "-bench")
    argv = [args.config, *rest, f"--out_dir={out_dir}", f"--work_dir={out_dir}-work"]
    if not cfg.tokenizer.path:  # train it once, outside the timing, then build with it
        pipeline.main([*argv, "--stage", "prepare", "--fresh"])
        kept = pathlib.Path(f"{out_dir}-tokenizer.json")
        shutil.copyfile(out_dir / "tokenizer.json", kept)
        argv += [f"--tokenizer.path={kept}", "--tokenizer.train=null"]
    runs, bare = [], {}
    methods = [m for m in ("encode_batch", "encode_batch_fast") if hasattr(tokenizer_lib.Tokenizer, m)]
    texts = tok_path = None
    for r in range(args.repeats):
        t0 = time.perf_counter()
        pipeline.main([*argv, "--fresh"])
        runs.append(time.perf_counter() - t0)
        if texts is None:
            tok_path = json.loads((out_dir / "meta.json").read_text())["tokenizer"]["path"]
            texts, n_texts, n_written = written_texts(out_dir, tokenizer_lib.load(tok_path))
            n_check = bare_encode(tok_path, texts[:n_texts], args.bare_batch, "encode_batch")[0]
        for m in methods:
            bare.setdefault(m, []).append(bare_encode(tok_path, texts, args.bare_batch, m))
    env = {k: os.environ.get(k, "(unset)") for k in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS")}
    print(f"threads: {env}, os.cpu_count()={os.cpu_count()}, build workers={cfg.workers or os.cpu_count()}")
    n_bare = bare["encode_batch"][0][0]
    print(f"texts: {len(texts):,}, {n_bare:,} tokens; of them written as ids: {n_texts:,} texts, {n_written:,} "
          f"tokens, and {n_check:,} from the bare encoder"
          + ("" if n_written == n_check else "  (DIFFERENT: the build did not write what the tokenizer gives)"))
    best = min(runs)
    fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    print("| | seconds (runs) | tokens/s | build / this |\n|---|---:|---:|---:|")
    print(f"| whole build | {best:.2f} ({fmt(runs)}) | {n_bare / best:,.0f} | |")
    for m in methods:
        s = min(t for _, t in bare[m])
        print(f"| bare {m} | {s:.2f} ({fmt(t for _, t in bare[m])}) | {n_bare / s:,.0f} | {s / best:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
