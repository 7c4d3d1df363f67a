"""Stage 4: the jobs' outputs, concatenated in job order, into the build's outputs and meta.json.

    pretrain/pretrain-<j>.bin      the document streams of the training jobs, cut into rows of pack.seq_len
    instructions/instructions.*    the jobs' pairs, one part
    eval/<source>/...              the evaluation jobs' files, concatenated; catalog and train_stats (plan)
    manifests/<source>/*.parquet   the jobs' manifests, for the audit
    meta.json, stats.md            written last: a reader trusts only what meta.json lists

Concatenated in order, the buckets' outputs are those of one job over all users, so the outputs do not
depend on how many buckets or processes built them. Memory: a copy buffer; the rows are cut on the fly.
"""
import json
import os
import pathlib
import shutil

import numpy as np

import config as config_lib
from output import staged_dir

from data.formats.instructions import InstructionWriter
from data.formats.instructions import section_meta as instructions_meta
from data.formats.packed import FORMAT, FORMAT_VERSION, PackWriter
from data.formats.packed import section_meta as packed_meta
from data.prepare import plan, stats
from data.prepare.config import BuildConfig
from data.prepare.jobs import Job, job_dir

COPY_TOKENS = 1 << 22  # tokens read from a document stream at a time


def _summed(dicts) -> dict:
    total: dict = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return dict(sorted(total.items()))


def _link_or_copy(src: pathlib.Path, dst: pathlib.Path) -> None:
    """A hard link where the filesystem allows (the manifests of a paper-scale build are gigabytes), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def packed(cfg: BuildConfig, jobs: list[Job], done: dict, folder: str, dtype: str, eos_id: int) -> dict:
    """The jobs' document streams, in order, packed into rows in out_dir/`folder` -> its meta.json section."""
    out_dir = pathlib.Path(cfg.out_dir)
    with staged_dir(out_dir / folder) as tmp:  # written beside, renamed into place whole (output/)
        writer = PackWriter(tmp, folder, cfg.pack.seq_len, dtype, cfg.pack.rows_per_shard, eos_id)
        for j in jobs:
            path, n = job_dir(cfg, j) / "pretrain.tokens.bin", done[j.name]["result"]["documents"]
            stream = np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r") if path.stat().st_size else []
            for start in range(0, len(stream), COPY_TOKENS):
                writer.extend(np.array(stream[start: start + COPY_TOKENS]), n if start == 0 else 0)
        shards = writer.close()
    return packed_meta(writer, shards, folder)


def pairs(cfg: BuildConfig, jobs: list[Job], done: dict, folder: str, dtype: str, eos_id: int) -> dict:
    """The jobs' instruction pairs, in order, in out_dir/`folder` -> its meta.json section."""
    out_dir = pathlib.Path(cfg.out_dir)
    with staged_dir(out_dir / folder) as tmp:  # written beside, renamed into place whole (output/)
        instructions = InstructionWriter(tmp, dtype, eos_id)
        for j in jobs:
            instructions.extend(job_dir(cfg, j))
        n_pairs = instructions.close()
    return instructions_meta(folder, n_pairs, dtype, eos_id)


def merge(cfg: BuildConfig, sources: dict, plans: dict, jobs: list[Job], done: dict, tokenizer: dict, fingerprint: str,
          warnings: list[str]) -> dict:
    out_dir = pathlib.Path(cfg.out_dir)
    (out_dir / "meta.json").unlink(missing_ok=True)  # until the new one is written, the build is not complete
    trains = [j for j in jobs if j.kind == "train"]
    first = done[trains[0].name]["result"] if trains else None
    dtype = first["dtype"] if first else None
    eos_id = first["eos_id"] if first else None

    splits = {"pretrain": packed(cfg, trains, done, "pretrain", dtype, eos_id),
              "instructions": pairs(cfg, trains, done, "instructions", dtype, eos_id)}
    if cfg.valid_fraction > 0:
        valids = [j for j in jobs if j.kind == "valid"]
        splits.update(pretrain_valid=packed(cfg, valids, done, "pretrain_valid", dtype, eos_id),
                      instructions_valid=pairs(cfg, valids, done, "instructions_valid", dtype, eos_id))
    for stale in {"pretrain_valid", "instructions_valid"} - set(splits):
        shutil.rmtree(out_dir / stale, ignore_errors=True)

    with staged_dir(out_dir / "manifests") as tmp:  # written beside, renamed into place whole (output/)
        manifests = []
        if cfg.write_manifests:
            for j in jobs:
                rel = pathlib.Path(j.source) / f"{j.kind}-{j.bucket:05d}.parquet"
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(job_dir(cfg, j) / "manifest.parquet", tmp / rel)
                manifests.append(f"manifests/{rel.as_posix()}")

    evals = {}
    with staged_dir(out_dir / "eval") as tmp:  # written beside, renamed into place whole (output/)
        for s in cfg.sources:
            name, ev = s.name, [j for j in jobs if j.source == s.name and j.kind == "eval"]
            if not s.benchmark:
                continue
            (tmp / name).mkdir()
            files = _summed(done[j.name]["result"]["files"] for j in ev)
            for fname in files:
                with open(tmp / name / fname, "wb") as f:
                    for j in ev:
                        part = job_dir(cfg, j) / fname
                        if part.is_file():
                            with open(part, "rb") as src:
                                shutil.copyfileobj(src, f)
            for fname in ("catalog.jsonl", "train_stats.json"):
                shutil.copyfile(plan.plan_dir(cfg, name) / fname, tmp / name / fname)
            evals[name] = {"dir": f"eval/{name}", "files": files, "catalog": f"eval/{name}/catalog.jsonl",
                           "train_stats": f"eval/{name}/train_stats.json"}

    per_source = {}
    for s in cfg.sources:
        name, src, p = s.name, sources[s.name]["result"], plans[s.name]["result"]
        counts = _summed([done[j.name]["result"]["counts"] for j in jobs if j.source == name and j.kind != "valid"]
                         + [p.get("catalog", {})])
        valid = [done[j.name]["result"]["counts"] for j in jobs if j.source == name and j.kind == "valid"]
        per_source[name] = {
            "domain": s.domain, "benchmark": s.benchmark, "table4": p["table4"],
            "bad_lines": src["bad_lines"], "bad_line_examples": src["bad_line_examples"],
            "ignored_rows": src["ignored_rows"], "interactions_read": p["interactions_read"],
            "interactions_dropped": p["interactions_dropped"], "users_dropped": p["users_dropped"],
            "interactions_kept": p["interactions_kept"], "excluded_users": p["excluded_users"], "counts": counts,
            "duplicate_interactions": p["duplicate_interactions"]}
        if cfg.valid_fraction > 0:
            per_source[name].update(validation_users=p["validation_users"], validation_counts=_summed(valid))
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "fingerprint": fingerprint,
        "tokenizer": tokenizer,
        **splits,
        "eval": evals, "manifests": manifests, "sources": per_source, "jobs": len(jobs), "warnings": warnings,
        "config": config_lib.to_dict(cfg),
    }
    (out_dir / "stats.md").write_text(stats.report(meta))
    tmp_meta = out_dir / "meta.json.tmp"
    tmp_meta.write_text(json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    tmp_meta.replace(out_dir / "meta.json")
    return meta
