"""Throughput of the whole pipeline (read, recipe, render, tokenize, chunk, pack, write) against the
bare `tokenizers` batch encoder on the same document text, side by side.

    python -m data.bench --config configs/data/movielens-100k-neox.yaml [--key=value ...]
"""
import argparse
import time

from data import config as config_lib
from data import prepare


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    args, rest = ap.parse_known_args(argv)
    cfg = config_lib.load(args.config, config_lib.parse_overrides(rest))
    cfg["out_dir"] = cfg["out_dir"] + "-bench"
    prepare.get_tokenizer(cfg)  # a trained tokenizer is built (or reused) outside the timing
    texts: list[str] = []
    t0 = time.perf_counter()
    part = prepare.run_part(cfg, 0, 1, keep_texts=texts)
    pipeline_s = time.perf_counter() - t0
    _, tok = prepare.get_tokenizer(cfg)
    t0 = time.perf_counter()
    n_bare = sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
    bare_s = time.perf_counter() - t0
    n_pipe = part["tokens"]
    print(f"documents rendered: {len(texts):,}; pipeline documents after chunking: {part['documents']:,}")
    print(f"| | tokens | seconds | tokens/s |\n|---|---:|---:|---:|")
    print(f"| whole pipeline | {n_pipe:,} | {pipeline_s:.2f} | {n_pipe / pipeline_s:,.0f} |")
    print(f"| bare encode_batch | {n_bare:,} | {bare_s:.2f} | {n_bare / bare_s:,.0f} |")
    print(f"ratio pipeline / bare: {(n_pipe / pipeline_s) / (n_bare / bare_s):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
