"""Throughput of the whole pipeline (read, recipe, render, tokenize, chunk, pack, write) against the
bare `tokenizers` batch encoder on the same text, side by side, in one process.

    python -m data.bench --config configs/data/movielens-100k-neox.yaml [--key=value ...]

"The same text" is every text the pipeline tokenizes for its outputs: the pre-training documents as
written (after chunking), the instruction prompts and responses, and the final evaluation prompts.
The pipeline runs first (its own timing, which includes loading its tokenizer); the texts it produced
are then encoded by a freshly loaded tokenizer (no warm BPE cache; the load is outside the timing) in
batches of `--bare_batch` texts, with `Tokenizer.encode_batch` (the batch encoder the goal names) and
with `encode_batch_fast` (the same ids without character offsets, which is what the pipeline calls).
Each side runs `--repeats` times, interleaved so that all see the same load on a shared machine, and
the best time of each is used. All run in this process under the same TOKENIZERS_PARALLELISM / RAYON
settings (printed). The ratios are pipeline tokens/s over bare tokens/s; >= 0.7 against encode_batch
is the goal. The token counts are printed: they are equal when the pipeline writes exactly what the
bare encoder produces. A last line compares the pre-training documents alone (the older measure).
"""
import argparse
import os
import time

from data import config as config_lib
from data import prepare, templates
from data import tokenizer as tokenizer_lib


def bare_encode(tok_path: str, texts: list[str], batch: int, method: str) -> tuple[int, float]:
    tok = tokenizer_lib.load(tok_path)  # fresh: empty BPE cache, like the pipeline's
    encode_batch = getattr(tok, method)
    t0 = time.perf_counter()
    n = 0
    for i in range(0, len(texts), batch):
        n += sum(len(e.ids) for e in encode_batch(texts[i: i + batch], add_special_tokens=False))
    return n, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each side, interleaved (best is used)")
    ap.add_argument("--bare_batch", type=int, default=1024, help="texts per encode_batch call (bare side)")
    args, rest = ap.parse_known_args(argv)
    cfg = config_lib.load(args.config, config_lib.parse_overrides(rest))
    cfg["out_dir"] = cfg["out_dir"] + "-bench"
    tok_path, _ = prepare.get_tokenizer(cfg)  # a trained tokenizer is built (or reused) outside the timing
    methods = [m for m in ("encode_batch", "encode_batch_fast") if hasattr(tokenizer_lib.Tokenizer, m)]
    kept: list = []
    t0 = time.perf_counter()
    part = prepare.run_part(cfg, 0, 1, keep_texts=kept)
    pipeline = [time.perf_counter() - t0]
    texts = [templates.pretrain_document(*k) if isinstance(k, tuple) else k for k in kept]
    docs = [t for k, t in zip(kept, texts) if isinstance(k, tuple)]
    del kept  # the first run's interactions: kept alive, they would slow the next runs' garbage collection
    n_pipe_docs = part["tokens"] - part["documents"]  # pre-training tokens written, without the EOS
    bare = {m: [bare_encode(tok_path, texts, args.bare_batch, m)] for m in methods}
    for _ in range(args.repeats - 1):  # interleaved, so that every side sees the same machine load
        t0 = time.perf_counter()
        prepare.run_part(cfg, 0, 1)
        pipeline.append(time.perf_counter() - t0)
        for m in methods:
            bare[m].append(bare_encode(tok_path, texts, args.bare_batch, m))
    n_bare = bare["encode_batch"][0][0]
    pipeline_s = min(pipeline)
    bare_docs = bare_encode(tok_path, docs, args.bare_batch, "encode_batch")
    env = {k: os.environ.get(k, "(unset)") for k in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS")}
    print(f"threads: {env}, os.cpu_count()={os.cpu_count()}")
    print(f"texts: {len(texts):,} ({len(docs):,} pre-training documents after chunking, "
          f"{len(texts) - len(docs):,} instruction/evaluation texts)")
    if bare_docs[0] != n_pipe_docs:
        print(f"WARNING: pipeline wrote {n_pipe_docs:,} document tokens, bare encoder gives {bare_docs[0]:,}")
    runs = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    print("| | tokens | seconds | tokens/s | pipeline / this |\n|---|---:|---:|---:|---:|")
    print(f"| whole pipeline (best of {runs(pipeline)} s) | {n_bare:,} | {pipeline_s:.2f} "
          f"| {n_bare / pipeline_s:,.0f} | |")
    for m in methods:
        s = min(t for _, t in bare[m])
        print(f"| bare {m} (best of {runs(t for _, t in bare[m])} s) | {bare[m][0][0]:,} | {s:.2f} "
              f"| {n_bare / s:,.0f} | {s / pipeline_s:.2f} |")
    print(f"ratio pipeline / bare encode_batch: {min(t for _, t in bare['encode_batch']) / pipeline_s:.2f}")
    print(f"older measure (pipeline's pre-training tokens / its whole time, vs bare encode_batch on the documents "
          f"only, {bare_docs[1]:.2f} s): {(n_pipe_docs / pipeline_s) / (bare_docs[0] / bare_docs[1]):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
