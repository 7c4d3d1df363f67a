"""Build the RecGPT corpus: raw datasets -> packed pre-training rows, instruction pairs, benchmark evaluation
files, manifests for the leakage audit and a Table-4 report (formats: data/README.md).

    python -m data.prepare configs/data/movielens-100k.yaml                # every stage; resumes where it stopped
    python -m data.prepare configs/data/amazon-beauty.yaml --max_seq_len=1024 --skip_bad=true
    scripts/build_slurm.sh configs/data/paper.yaml                        # the same stages as Slurm jobs

The stages, each resumable (data/prepare/workdir.py), in <work_dir> (default <out_dir>/work):
  1. normalise.py  each source read once, into Parquet                    (--stage prepare runs 1-2 and the
  2. plan.py       the recipe on each whole source, in DuckDB; buckets     tokenizer, and lists the jobs)
  3. jobs.py       per bucket: render, tokenize, write                     (--job K: one job, e.g. a Slurm task)
  4. merge.py      the jobs' outputs in order -> <out_dir>, meta.json last (--stage merge)
Stages 1-3 run in `workers` processes (default: one per core): a process's memory is bounded by `memory_limit`
(the engine, which spills to disk), a bucket and a batch of users, never by the size of the corpus, and is
given back when its task ends. Same inputs + config -> byte-identical outputs, whatever the number of buckets,
workers or restarts.
"""
import argparse
import concurrent.futures
import ctypes
import multiprocessing
import os
import pathlib
import shutil
import signal
import sys
import time

from tqdm import tqdm

import config
from data.formats import tokenizer as tokenizer_lib
from data.formats.packed import read_meta
from data.prepare import bpe, normalise, plan, workdir
from data.prepare import config as config_lib
from data.prepare.config import BuildConfig
from data.prepare import jobs as jobs_lib
from data.prepare import merge as merge_lib
from data.prepare.workdir import log
from output import OutputLock
from output.provenance import write_environment


def _init_worker(threads: int) -> None:
    # a worker's tokenizer takes its share of the cores (read when its thread pool first starts)
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    # a worker dies with the build (killed, say): it must not go on writing into a stage a rerun redoes
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Runner:
    """Runs the tasks of a stage: in this process with one worker (debugging, tests), else in a pool of `workers`
    spawned processes (spawned: nothing is forked from a process holding engine and tokenizer threads)."""

    def __init__(self, workers: int):
        self.workers, self._pool = workers, None

    def map(self, fn, tasks: list[tuple], desc: str) -> list:
        """[fn(*task) for task in tasks], in task order, with a progress bar."""
        results = [None] * len(tasks)
        bar = tqdm(total=len(tasks), desc=desc, unit="task", leave=False, disable=len(tasks) < 2)
        if self.workers <= 1:
            for i, task in enumerate(tasks):
                results[i] = fn(*task)
                bar.update()
        else:
            if self._pool is None:
                cores = os.cpu_count() or 1
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                    initargs=(max(1, cores // self.workers),))
            futures = {self._pool.submit(fn, *task): i for i, task in enumerate(tasks)}
            for future in concurrent.futures.as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
        bar.close()
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


def prepare(cfg: BuildConfig, runner: Runner | None) -> dict:
    """Stages 1-2 and the tokenizer -> what the jobs and the merge need. Without a runner nothing is built: a
    stage that is not done (with this config) is an error (a job of a Slurm array must not redo the plan)."""
    names = [s.name for s in cfg.sources]
    for i, s in enumerate(cfg.sources):
        normalise.check_options(s, i)
    fps = {s.name: normalise.source_fingerprint(cfg, s) for s in cfg.sources}
    plan_fps = {s.name: plan.plan_fingerprint(cfg, s, fps) for s in cfg.sources}

    def stage(fn, folder, fp, tasks, desc):
        """The done records of a stage's tasks, running those that are not done."""
        todo = [i for i, s in enumerate(cfg.sources) if not workdir.is_done(folder(s), fp(s))]
        if todo and runner is None:
            s = cfg.sources[todo[0]]
            raise SystemExit(f"{desc} of {s.name} is not prepared for this config: run `python -m data.prepare "
                             f"CONFIG --stage prepare` first ({folder(s)})")
        done = runner.map(fn, [tasks[i] for i in todo], desc) if todo else []
        records = [workdir.done_record(folder(s)) for s in cfg.sources]
        for i, r in zip(todo, done):
            records[i] = r
        return dict(zip(names, records))
    t0 = time.perf_counter()
    sources = stage(normalise.normalise, lambda s: normalise.source_dir(cfg, s.name),
                    lambda s: fps[s.name], [(cfg, s) for s in cfg.sources], "read")
    # the engine uses the cores that the plans running side by side leave it
    threads = max(1, (os.cpu_count() or 1) // min(runner.workers if runner else 1, len(names)))
    t1 = time.perf_counter()
    plans = stage(plan.plan, lambda s: plan.plan_dir(cfg, s.name), lambda s: plan_fps[s.name],
                  [(cfg, s, fps, threads) for s in cfg.sources], "plan")
    t2 = time.perf_counter()
    if cfg.tokenizer.path:
        tok_path = cfg.tokenizer.path
    elif runner is not None:
        tok_path = bpe.tokenizer_path(cfg)
    else:
        tok_path = str(pathlib.Path(cfg.out_dir) / "tokenizer.json")
        if not bpe.is_trained(cfg):
            raise SystemExit(f"{tok_path}: the tokenizer is not trained for this config: run --stage prepare first")
    tok = jobs_lib.load_tokenizer(tok_path)
    tokenizer = {"path": tok_path, "sha256": tokenizer_lib.sha256_file(tok_path),
                 "vocab_size": tok.get_vocab_size(with_added_tokens=True)}
    jobs = jobs_lib.job_list(cfg, plans)
    warnings = [w for name in names for w in plans[name]["result"]["warnings"]]
    for w in warnings:
        log(f"WARNING: {w}")
    if runner is not None:
        log(f"read {t1 - t0:.1f} s, plan {t2 - t1:.1f} s, tokenizer {time.perf_counter() - t2:.1f} s")
    return {"sources": sources, "plans": plans, "plan_fps": plan_fps, "tokenizer": tokenizer, "jobs": jobs,
            "warnings": warnings}


def job_task(cfg: BuildConfig, state: dict, job) -> tuple:
    return cfg, job, state["plan_fps"][job.source], state["tokenizer"]["path"], state["tokenizer"]["sha256"]


def job_fingerprint(cfg: BuildConfig, state: dict, job) -> str:
    return jobs_lib.job_fingerprint(cfg, job, state["plan_fps"][job.source], state["tokenizer"]["sha256"])


def run_jobs(cfg: BuildConfig, state: dict, runner: Runner) -> dict:
    """Every job not done yet -> {job name: done record}."""
    records = {j.name: workdir.done_record(jobs_lib.job_dir(cfg, j)) for j in state["jobs"]}
    todo = [j for j in state["jobs"] if (records[j.name] or {}).get("fingerprint") != job_fingerprint(cfg, state, j)]
    changed = sum(records[j.name] is not None for j in todo)
    log(f"jobs: {len(state['jobs'])}, {len(state['jobs']) - len(todo)} done already"
        + (f", {changed} redoing it (their config or inputs changed)" if changed else ""))
    for j, r in zip(todo, runner.map(jobs_lib.run_job, [job_task(cfg, state, j) for j in todo], "jobs")):
        records[j.name] = r
    return records


def merge_fingerprint(cfg: BuildConfig, state: dict) -> str:
    code = workdir.code_fingerprint("data.prepare.merge", "data.prepare.stats", "data.formats.packed",
                                    "data.formats.instructions")
    return workdir.fingerprint("merge", code, [job_fingerprint(cfg, state, j) for j in state["jobs"]], cfg.pack,
                               cfg.write_manifests, cfg.name)


def built(cfg: BuildConfig, state: dict) -> bool:
    """meta.json is there and was written by a merge of exactly these jobs."""
    try:
        return read_meta(cfg.out_dir)[1].get("fingerprint") == merge_fingerprint(cfg, state)
    except (FileNotFoundError, ValueError):
        return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="a data-build YAML (configs/data/*.yaml); --key=value overrides follow")
    ap.add_argument("--stage", choices=["all", "prepare", "merge"], default="all",
                    help="prepare: read and plan every source, train the tokenizer, list the jobs; merge: after all "
                         "jobs (--job) are done")
    ap.add_argument("--job", type=int, default=None, help="run job K of the prepared build (0-based; a Slurm task)")
    ap.add_argument("--fresh", action="store_true", help="discard the work dir and outputs of an earlier run first")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    args, rest = ap.parse_known_args(argv)
    cfg = config_lib.load(args.config, rest)
    if args.dry_run:
        print(config.dump(cfg), end="")
        return 0
    log("resolved config:\n" + config.dump(cfg).rstrip())
    if args.job is not None:  # one job of a prepared build (a Slurm array task): jobs share the build's lock holder
        return run_one_job(cfg, args.job)
    with OutputLock(cfg.out_dir, "data.prepare"):  # one build writes out_dir at a time
        return build(cfg, args)


def run_one_job(cfg: BuildConfig, k: int) -> int:
    state = prepare(cfg, None)
    if not 0 <= k < len(state["jobs"]):
        raise SystemExit(f"--job {k}: this build has jobs 0..{len(state['jobs']) - 1}")
    job = state["jobs"][k]
    jobs_lib.run_job(*job_task(cfg, state, job))
    log(f"job {k} ({job.name}) done")
    return 0


def build(cfg: BuildConfig, args) -> int:
    out_dir = pathlib.Path(cfg.out_dir)
    if args.fresh:
        shutil.rmtree(cfg.work_dir, ignore_errors=True)
        shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runner = Runner(cfg.workers or os.cpu_count() or 1) if args.stage != "merge" else None
    try:
        state = prepare(cfg, runner)
        if args.stage == "prepare":
            (pathlib.Path(cfg.work_dir) / "jobs.txt").write_text("".join(f"{j.name}\n" for j in state["jobs"]))
            print(len(state["jobs"]))
            log(f"prepared: {len(state['jobs'])} jobs ({cfg.work_dir}/jobs.txt); run each with --job K, then "
                f"--stage merge")
            return 0
        if built(cfg, state):
            log(f"{out_dir}/meta.json is already the build of this config: nothing to do")
            return 0
        if runner is None:  # --stage merge: every job must be done
            done = {}
            for k, j in enumerate(state["jobs"]):
                done[j.name] = workdir.done_record(jobs_lib.job_dir(cfg, j))
                if (done[j.name] or {}).get("fingerprint") != job_fingerprint(cfg, state, j):
                    raise SystemExit(f"job {k} ({j.name}) is not done for this config: run --job {k}")
        else:
            t1 = time.perf_counter()
            done = run_jobs(cfg, state, runner)
            log(f"jobs {time.perf_counter() - t1:.1f} s")
    finally:
        if runner is not None:
            runner.close()
    t1 = time.perf_counter()
    meta = merge_lib.merge(cfg, state["sources"], state["plans"], state["jobs"], done, state["tokenizer"],
                           merge_fingerprint(cfg, state), state["warnings"])
    shutil.rmtree(pathlib.Path(cfg.work_dir) / "tmp", ignore_errors=True)  # the engine's spill files
    write_environment(out_dir)  # the merge's code, packages and machine (output/provenance.py)
    log(f"merge {time.perf_counter() - t1:.1f} s")
    print((out_dir / "stats.md").read_text())
    for w in state["warnings"]:  # again, where they cannot be missed
        log(f"WARNING: {w}")
    print(f"wrote {out_dir}/meta.json: {meta['pretrain']['rows']} rows x {meta['pretrain']['seq_len']} tokens, "
          f"{meta['instructions']['examples']} instruction pairs ({time.perf_counter() - t0:.1f} s)")
    return 0
