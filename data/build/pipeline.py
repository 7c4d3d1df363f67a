"""Build the RecGPT corpus: raw datasets -> packed pre-training rows, instruction pairs, benchmark evaluation
files, manifests for the leakage audit and a Table-4 report (formats: data/README.md).

    python -m data.build --config configs/data/movielens-100k.yaml       # every stage; resumes where it stopped
    python -m data.build --config configs/data/amazon-beauty.yaml --max_seq_len=1024 --skip-bad
    scripts/build_slurm.sh configs/data/paper.yaml                        # the same stages as Slurm jobs

The stages, each resumable (data/build/workdir.py), in <work_dir> (default <out_dir>/work):
  1. normalise.py  each source read once, into Parquet                    (--stage prepare runs 1-2 and the
  2. plan.py       the recipe on each whole source, in DuckDB; buckets     tokenizer, and lists the jobs)
  3. jobs.py       per bucket: render, tokenize, write                     (--job K: one job, e.g. a Slurm task)
  4. merge.py      the jobs' outputs in order -> <out_dir>, meta.json last (--stage merge)
Memory is bounded by `memory_limit` (the engine, which spills to disk) and by a batch of users per job, not
by the size of the corpus; `workers` processes run the jobs. Same inputs + config -> byte-identical outputs,
whatever the number of buckets, workers or restarts.
"""
import argparse
import concurrent.futures
import multiprocessing
import os
import pathlib
import shutil
import sys
import time

from tqdm import tqdm

from data.build import bpe, config as config_lib, jobs as jobs_lib, merge as merge_lib, normalise, plan, workdir
from data.formats import tokenizer as tokenizer_lib


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare(cfg: dict, run: bool = True) -> dict:
    """Stages 1-2 and the tokenizer -> what the jobs and the merge need. With run=False nothing is built: a
    stage that is not done (with this config) is an error (a job of a Slurm array must not redo the plan)."""
    def stage(folder, fp, what):
        if not run and not workdir.is_done(folder, fp):
            raise SystemExit(f"{what} is not prepared for this config: run `python -m data.build --config ... "
                             f"--stage prepare` first ({folder})")
    sources, plans, fps, plan_fps = {}, {}, {}, {}
    for s in cfg["sources"]:
        name = s["name"]
        fps[name] = normalise.source_fingerprint(cfg, s)
        stage(normalise.source_dir(cfg, name), fps[name], f"source {name}")
        sources[name] = normalise.normalise(cfg, s, log)
    for s in cfg["sources"]:
        for o in s["exclude_users_of"]:
            if o not in fps or list(fps).index(o) >= list(fps).index(s["name"]):
                raise config_lib.ConfigError(f"source {s['name']}: exclude_users_of {o!r} must name an earlier source")
        name = s["name"]
        plan_fps[name] = plan.plan_fingerprint(cfg, s, fps)
        stage(plan.plan_dir(cfg, name), plan_fps[name], f"plan of {name}")
        plans[name] = plan.plan(cfg, s, fps, log)
    if not run and not cfg["tokenizer"].get("path"):
        tok_path = pathlib.Path(cfg["out_dir"]) / "tokenizer.json"
        if not tok_path.is_file():
            raise SystemExit(f"{tok_path}: the trained tokenizer is not there: run --stage prepare first")
        tok_path = str(tok_path)
    else:
        tok_path = bpe.tokenizer_path(cfg, log)
    tok = jobs_lib.load_tokenizer(tok_path)
    tokenizer = {"path": tok_path, "sha256": tokenizer_lib.sha256_file(tok_path),
                 "vocab_size": tok.get_vocab_size(with_added_tokens=True)}
    jobs = jobs_lib.job_list(cfg, plans)
    warnings = [w for name in plans for w in plans[name]["result"]["warnings"]]
    return {"sources": sources, "plans": plans, "plan_fps": plan_fps, "tokenizer": tokenizer, "jobs": jobs,
            "warnings": warnings}


def _worker_init(threads: int) -> None:
    # each worker's tokenizer gets its share of the cores (read when its thread pool starts)
    os.environ["RAYON_NUM_THREADS"] = str(threads)


def _run_job(cfg: dict, job, plan_fp: str, tok_path: str, tok_sha: str) -> tuple:
    t0 = time.perf_counter()
    record = jobs_lib.run_job(cfg, job, plan_fp, tok_path, tok_sha)
    return job.name, record, time.perf_counter() - t0


def run_jobs(cfg: dict, state: dict, workers: int) -> dict:
    """Every job not done yet, `workers` at a time -> {job name: done record}."""
    tok = state["tokenizer"]
    args = [(cfg, j, state["plan_fps"][j.source], tok["path"], tok["sha256"]) for j in state["jobs"]]
    records = [workdir.done_record(jobs_lib.job_dir(cfg, j)) for j in state["jobs"]]
    fps = [jobs_lib.job_fingerprint(cfg, j, a[2], tok["sha256"]) for j, a in zip(state["jobs"], args)]
    reused = sum(r is not None and r["fingerprint"] == fp for r, fp in zip(records, fps))
    changed = sum(r is not None and r["fingerprint"] != fp for r, fp in zip(records, fps))
    log(f"jobs: {len(args)}, {reused} done already" + (f", {changed} redoing it (their config or inputs changed)"
                                                      if changed else ""))
    done, seconds = {}, {}
    bar = tqdm(total=len(args), desc="jobs", unit="job", leave=False)
    if workers <= 1 or len(args) <= 1:
        for a in args:
            name, done[name], seconds[name] = _run_job(*a)
            bar.update()
    else:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds engine and tokenizer threads
        threads = max(1, (os.cpu_count() or 1) // workers)
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                                    initargs=(threads,)) as pool:
            for future in concurrent.futures.as_completed([pool.submit(_run_job, *a) for a in args]):
                name, done[name], seconds[name] = future.result()
                bar.update()
    bar.close()
    return done


def merge_fingerprint(cfg: dict, state: dict) -> str:
    tok = state["tokenizer"]
    code = workdir.code_fingerprint("data.build.merge", "data.build.stats", "data.formats.packed",
                                    "data.formats.instructions")
    return workdir.fingerprint("merge", code, [jobs_lib.job_fingerprint(cfg, j, state["plan_fps"][j.source], tok["sha256"])
                                         for j in state["jobs"]], cfg["pack"], cfg["write_manifests"], cfg["name"])


def finish(cfg: dict, state: dict, done: dict) -> dict:
    return merge_lib.merge(cfg, state["sources"], state["plans"], state["jobs"], done, state["tokenizer"],
                           merge_fingerprint(cfg, state), state["warnings"])


def built(cfg: dict, state: dict) -> bool:
    """meta.json is there and was written by a merge of exactly these jobs."""
    from data.formats.packed import read_meta
    try:
        return read_meta(cfg["out_dir"])[1].get("fingerprint") == merge_fingerprint(cfg, state)
    except (FileNotFoundError, ValueError):
        return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--stage", choices=["all", "prepare", "merge"], default="all",
                    help="prepare: read and plan every source, train the tokenizer, list the jobs; merge: after all "
                         "jobs (--job) are done")
    ap.add_argument("--job", type=int, default=None, help="run job K of the prepared build (0-based; a Slurm task)")
    ap.add_argument("--skip-bad", action="store_true", help="skip malformed input lines, counted by reason")
    ap.add_argument("--fresh", action="store_true", help="discard the work dir and outputs of an earlier run first")
    args, rest = ap.parse_known_args(argv)
    cfg = config_lib.load(args.config, config_lib.parse_overrides(rest))
    if args.skip_bad:
        cfg["skip_bad"] = True
    out_dir = pathlib.Path(cfg["out_dir"])
    if args.fresh:
        shutil.rmtree(cfg["work_dir"], ignore_errors=True)
        shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.job is not None:
        state = prepare(cfg, run=False)
        if not 0 <= args.job < len(state["jobs"]):
            raise SystemExit(f"--job {args.job}: this build has jobs 0..{len(state['jobs']) - 1}")
        j = state["jobs"][args.job]
        _run_job(cfg, j, state["plan_fps"][j.source], state["tokenizer"]["path"], state["tokenizer"]["sha256"])
        log(f"job {args.job} ({j.name}) done")
        return 0
    state = prepare(cfg, run=args.stage != "merge")
    if args.stage == "prepare":
        (pathlib.Path(cfg["work_dir"]) / "jobs.txt").write_text("".join(f"{j.name}\n" for j in state["jobs"]))
        print(len(state["jobs"]))
        log(f"prepared: {len(state['jobs'])} jobs ({cfg['work_dir']}/jobs.txt); run each with --job K, then "
            f"--stage merge")
        return 0
    if built(cfg, state):
        log(f"{out_dir}/meta.json is already the build of this config: nothing to do")
        return 0
    if args.stage == "merge":
        done = {}
        for j in state["jobs"]:
            record = workdir.done_record(jobs_lib.job_dir(cfg, j))
            fp = jobs_lib.job_fingerprint(cfg, j, state["plan_fps"][j.source], state["tokenizer"]["sha256"])
            if record is None or record["fingerprint"] != fp:
                raise SystemExit(f"job {state['jobs'].index(j)} ({j.name}) is not done for this config: run --job "
                                 f"{state['jobs'].index(j)}")
            done[j.name] = record
    else:
        workers = cfg["workers"] or os.cpu_count() or 1
        done = run_jobs(cfg, state, min(workers, len(state["jobs"])))
    meta = finish(cfg, state, done)
    print((out_dir / "stats.md").read_text())
    print(f"wrote {out_dir}/meta.json: {meta['pretrain']['rows']} rows x {meta['pretrain']['seq_len']} tokens, "
          f"{meta['instructions']['examples']} instruction pairs ({time.perf_counter() - t0:.1f} s)")
    return 0
