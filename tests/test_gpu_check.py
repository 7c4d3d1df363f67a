"""scripts/gpu_check.sh (issue 15) on the CPU: the plan (--dry-run, --only, errors), a run without CUDA (every stage
skipped, the summary still written), and the pieces that turn results into tables: attention/benchmark.py's
Markdown/JSON writer and its arguments, stage c's table and loss check, evaluation/bench_beams.py at a tiny shape.
Nothing heavy runs here: the stages themselves need a GPU."""
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()


def load_driver():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = load_driver()


def dry_run(*args, env=None):
    return subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=60)


def test_dry_run_lists_every_stage_with_its_commands_and_cap(tmp_path):
    proc = dry_run(env={"OUT": str(tmp_path / "device-out")})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for key, (title, cap, _) in gpu_check.STAGES.items():
        assert f"stage {key}: {title}  (cap {cap} s" in out
    assert f"out: {tmp_path / 'device-out'}" in out  # $OUT is the default output folder
    assert "-m pytest" in out and "tests/test_kernels.py tests/test_kernels_prefix.py tests/test_infill_attention.py" in out
    assert ("tests/test_flex_attention.py" in out) == (REPO / "tests" / "test_flex_attention.py").is_file()
    assert "-m attention.benchmark --seqs 512 1024 2048 4096 8192 --head-dim 128 --impls sdpa+bias triton flex fa2" in out
    assert f"--out {tmp_path / 'device-out' / 'b_attention.md'}" in out
    train = [line for line in out.splitlines() if "train.py configs/train/gpu-check-7b-shape.yaml" in line]
    assert len(train) == 4  # (triton, flex) x activation checkpointing (off, on)
    assert sum("attn_impl=flex" in line for line in train) == 2
    assert sum("activation_checkpointing=true" in line for line in train) == 2
    assert all("--model.overrides.n_layers=26" in line for line in train)
    assert "-m evaluation.bench_beams" in out
    assert "DEMO_DEVICE=cuda" in out and "bash scripts/demo.sh" in out


def test_only_selects_stages_in_order():
    proc = dry_run("--only", "d,b", "--train-layers", "32")
    assert proc.returncode == 0, proc.stderr
    assert "stage b:" in proc.stdout and "stage d:" in proc.stdout
    assert proc.stdout.index("stage b:") < proc.stdout.index("stage d:")
    for key in "ace":
        assert f"stage {key}:" not in proc.stdout
    args = gpu_check.parse_args(["--only", "c", "--train-layers", "32", "--cap", "c=300"])
    (stage,) = gpu_check.plan(args, "python")
    assert stage.cap == 300 and all("--model.overrides.n_layers=32" in s.argv for s in stage.steps)


@pytest.mark.parametrize("args, why", [
    (["--only", "a,x"], "unknown stage 'x'"),
    (["--only", ","], "unknown stage '(none given)'"),
    (["--cap", "z=3"], "expected STAGE=SECONDS"),
])
def test_bad_arguments_are_clear_errors(args, why):
    proc = dry_run(*args)
    assert proc.returncode == 2
    assert why in proc.stderr and "a, b, c, d, e" in proc.stderr


@pytest.mark.skipif(CUDA, reason="on a GPU machine this would run the stages")
def test_without_cuda_every_stage_is_skipped_and_the_summary_written(tmp_path, capsys):
    out = tmp_path / "out"
    code = gpu_check.main(["--out", str(out), "--work", str(tmp_path / "work"), "--python", sys.executable])
    assert code == 0
    text = (out / "gpu_check.md").read_text()
    for key in gpu_check.STAGES:
        assert f"no CUDA device: stage {key} skipped" in text
    # the interpreter's probe (import torch) reports the version; on a machine so loaded that it times out, that
    assert f"torch {torch.__version__}, CUDA device: none" in text or "the probe (import torch, triton) timed out" in text
    assert "nvidia-smi" in text and "train.py configs/train/gpu-check-7b-shape.yaml" in text  # the commands it skipped
    assert (out / "gpu_check.log").is_file()
    assert "no CUDA device: stage b skipped" in capsys.readouterr().out
    assert len(list(out.iterdir())) <= 8


def test_a_stage_reports_failures_and_is_stopped_at_its_cap(tmp_path):
    args = gpu_check.parse_args(["--only", "a", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    args.out.mkdir(parents=True)
    script = "print('FAILED tests/x.py::t - boom'); print('= 1 failed, 2 passed in 0.1s ='); raise SystemExit(1)"
    stage = gpu_check.Stage("a", "kernel tests", 60, 1, [gpu_check.Step("pytest", [sys.executable, "-c", script])])
    o = gpu_check.run_stage(stage, 60, args, dict(os.environ), lambda text="": None)
    assert o.failed and o.status == "failed (exit 1): 1 failed, 2 passed in 0.1s"
    assert "FAILED tests/x.py::t - boom" in o.body and "boom" in (args.out / "a_kernels.txt").read_text()

    stage.steps = [gpu_check.Step("hang", [sys.executable, "-c", "import time; time.sleep(60)"])]
    o = gpu_check.run_stage(stage, 2, args, dict(os.environ), lambda text="": None)
    assert o.failed and o.status.startswith("timed out") and o.seconds < 30


# attention/benchmark.py ---------------------------------------------------------------------------------------------

META = {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "triton": "3.6.0", "causal": True, "heads": 16,
        "head_dim": 128, "tokens": 16384, "unavailable": {"fa2": "flash_attn is not importable"}}


def timed(seq, impl, fwd, bwd, fb, peak):
    return {"seq": seq, "batch": 16384 // seq, "impl": impl, "status": "ok", "fwd_ms": 1.0, "bwd_ms": 2.0,
            "fwd_bwd_ms": 3.0, "fwd_tflops": fwd, "bwd_tflops": bwd, "fwd_bwd_tflops": fb, "peak_mib": peak}


ROWS = [timed(2048, "sdpa+bias", 100.0, 80.0, 85.0, 4096.4), timed(2048, "triton", 300.0, 200.0, 212.5, 40.0),
        {"seq": 2048, "batch": 8, "impl": "flex", "status": "WRONG", "max_err": 0.5, "ref_err": 0.01},
        {"seq": 4096, "batch": 4, "impl": "triton", "status": "OOM"}]

EXPECTED = """\
GPU: NVIDIA H100 80GB HBM3; torch 2.11.0, triton 3.6.0; bf16, causal, heads 16, head dim 128, batch = 16384 // seq
FLOPs: fwd = 4*B*H*S^2*D / 2, bwd = 2.5 x fwd, fwd+bwd = 3.5 x fwd; peak = extra memory of one fwd+bwd beyond q, k, v, dO
(fa2: not available, flash_attn is not importable)

| seq | batch | impl | fwd ms | fwd TFLOP/s | bwd ms | bwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | peak MiB |
|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|
| 2048 | 8 | sdpa+bias | 1.000 | 100.0 | 2.000 | 80.0 | 3.000 | 85.0 | 4096 |
| 2048 | 8 | triton | 1.000 | 300.0 | 2.000 | 200.0 | 3.000 | 212.5 | 40 |
| 2048 | 8 | flex | WRONG: max error 0.5 > 2 x bf16 reference error 0.01 + 1e-3 | | | | | | |
| 4096 | 4 | triton | OOM | | | | | | |

Ratio triton / sdpa+bias (TFLOP/s; > 1 means triton is faster)

| seq | fwd | bwd | fwd+bwd |
|---:|---:|---:|---:|
| 2048 | 3.00 | 2.50 | 2.50 |
"""


def test_benchmark_table_writer(tmp_path):
    from attention import benchmark

    assert benchmark.markdown(META, ROWS) == EXPECTED
    benchmark.write_results(tmp_path / "t" / "attention.md", META, ROWS)
    assert (tmp_path / "t" / "attention.md").read_text() == EXPECTED
    assert json.loads((tmp_path / "t" / "attention.json").read_text()) == {"meta": META, "rows": ROWS}


def test_benchmark_arguments_and_no_cuda(tmp_path):
    from attention import benchmark

    args = benchmark.parse_args(["--out", str(tmp_path / "a.md"), "--impls", "triton", "flex", "--seqs", "512"])
    assert args.out == tmp_path / "a.md" and args.impls == ["triton", "flex"] and "flex" in benchmark.IMPLS
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--out", str(tmp_path / "a.json")])  # the .md is named; the .json goes beside it
    if not CUDA:
        with pytest.raises(SystemExit, match="needs a CUDA GPU"):
            benchmark.main(["--out", str(tmp_path / "a.md"), "--impls", "flex"])
        assert not (tmp_path / "a.md").exists()


def test_flex_is_reported_unavailable_rather_than_crashing(monkeypatch):
    from attention import benchmark

    monkeypatch.setitem(sys.modules, "attention.flex", None)  # as if the module did not exist
    fn, why = benchmark.make_impl("flex", torch.ones(4), True)
    assert fn is None and "attention.flex is not importable" in why


# stage c's table and check; stage a's summary ------------------------------------------------------------------------


def fake_run(work, impl, ac, loss, tokens_per_s=9000.0):
    d = gpu_check.train_dir(work, impl, ac)
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": loss - 0.1 * (s - 1)}) + "\n"
                                             for s in (1, 2, 3)))
    (d / "benchmark.json").write_text(json.dumps({
        "tokens_per_s_per_device": tokens_per_s, "mfu": 0.4512, "tflops_per_device": 446.4, "mem_alloc_gib": 70.25,
        "mem_reserved_gib": 72.5, "params": 5441277952, "seq_len": 2048, "micro_batch": 1, "timed_steps": 3,
        "valid_tokens": 4 * 2047}))


def test_training_table_and_the_step1_loss_check(tmp_path):
    args = gpu_check.parse_args(["--only", "c", "--work", str(tmp_path), "--train-impls", "triton,flex"])
    (stage,) = gpu_check.plan(args, "python")
    for impl, ac, loss in [("triton", False, 11.8001), ("triton", True, 11.8001), ("flex", False, 11.8050)]:
        fake_run(tmp_path, impl, ac, loss)
    results = [("ok", ""), ("ok", ""), ("ok", ""), ("out of memory (exit 1)", "")]
    agree, text = gpu_check.train_table(stage, tmp_path, results, 26)
    assert agree
    assert "| triton | off | 26 | 5,441,277,952 | 9,000 | 45.1 | 446 | 70.2 | 72.5 | 11.8001 | ok |" in text
    assert "| flex | on | 26 |  |  |  |  |  |  |  | out of memory (exit 1) |" in text
    assert "global batch 4" in text and "within 0.02 of each other: yes" in text

    fake_run(tmp_path, "flex", True, 12.5)  # a run that computes another forward
    agree, text = gpu_check.train_table(stage, tmp_path, [("ok", "")] * 4, 26)
    assert not agree and "within 0.02 of each other: NO" in text


def test_kernel_test_summary():
    output = "....F..s\nFAILED tests/test_kernels.py::test_x - AssertionError\n= 1 failed, 95 passed, 2 skipped in 80.1s ="
    summary, body = gpu_check.kernel_tests_result(output)
    assert summary == "1 failed, 95 passed, 2 skipped in 80.1s"
    assert "FAILED tests/test_kernels.py::test_x" in body


# evaluation/bench_beams.py at a tiny shape on the CPU -----------------------------------------------------------------


def test_bench_beams_validates_and_writes_its_table(tmp_path):
    from evaluation import bench_beams

    result = bench_beams.main(["--device", "cpu", "--dtype", "float32", "--attn-impl", "torch", "--n-layers", "2",
                               "--d-model", "64", "--n-heads", "4", "--vocab", "512", "--prompts", "3", "--min-len", "6",
                               "--max-len", "10", "--batch-size", "2", "--num-beams", "3", "--max-new-tokens", "3",
                               "--repeats", "1", "--out", str(tmp_path / "beams.md")])
    assert result["identical_reruns"] and result["rescore_max_diff_per_token"] < 1e-4
    assert result["prompts_per_s"] > 0 and math.isnan(result["peak_gib"])
    table = (tmp_path / "beams.md").read_text()
    assert "| L2 d64 H4 V512 | 3 (6-10) | 2 | 3 / 3 | <= 3 |" in table
    assert json.loads((tmp_path / "beams.json").read_text())["returned"] == 2 * 3  # the first batch: 2 prompts x 3
