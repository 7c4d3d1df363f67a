"""FSDP2 on CPU with gloo, launched with `torchrun --nproc_per_node 2`: parity with one process, kill-and-resume
(same world size and 2 -> 1), half-written checkpoints, keep-last-k.

Tolerance: per-step losses of runs that should agree must match to 1e-5 absolute (fp32 tiny model; the only
differences are summation orders across micro-batches and ranks, and LION's sign update does not amplify them).
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from training.checkpoint import MARKER, complete_checkpoints, latest
from training.testing import write_tiny_build

REPO = pathlib.Path(__file__).resolve().parents[1]
TOL = 1e-5
STEPS = 12


def launch(script, nproc, out_dir, *overrides, config="configs/train/tiny-pretrain.yaml", data=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 \
        else [sys.executable]
    cmd += [script, config, f"--data.path={data}", f"--run.out_dir={out_dir}", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


def losses(out_dir) -> dict:
    """step -> loss; a resumed run appends to the same metrics.jsonl, so later lines win."""
    out = {}
    for line in open(pathlib.Path(out_dir) / "metrics.jsonl"):
        r = json.loads(line)
        out[r["step"]] = r["loss"]
    return out


def assert_same(a: dict, b: dict, steps):
    for s in steps:
        assert abs(a[s] - b[s]) <= TOL, f"step {s}: {a[s]:.8f} vs {b[s]:.8f}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_build(tmp_path_factory.mktemp("data"), seq_len=32, n_docs=120, n_pairs=16)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data):
    """The reference runs, shared by the tests below."""
    root = tmp_path_factory.mktemp("runs")
    common = (f"--train.max_steps={STEPS}", "--checkpoint.interval=3", "--checkpoint.keep_last=2")
    launch("train.py", 2, root / "two", *common, data=data)
    launch("train.py", 1, root / "one", *common, data=data)
    return root


def test_two_ranks_match_one_rank(runs):
    two, one = losses(runs / "two"), losses(runs / "one")
    assert sorted(two) == list(range(1, STEPS + 1))
    assert_same(two, one, range(1, STEPS + 1))
    assert two[STEPS] < two[1]  # and it trains


def test_finetune_two_ranks_match_one_rank_with_uneven_tokens(tmp_path, data):
    # pad_to longest + different prompt/response lengths: ranks and micro-batches hold different numbers of
    # target tokens, so this checks the global valid-token normalisation across ranks
    args = ("--train.max_steps=6", "--checkpoint.interval=0", "--checkpoint.export_final=false")
    launch("finetune.py", 2, tmp_path / "two", *args, config="configs/train/tiny-finetune.yaml", data=data)
    launch("finetune.py", 1, tmp_path / "one", *args, "--train.micro_batch_size=2",
           config="configs/train/tiny-finetune.yaml", data=data)
    assert_same(losses(tmp_path / "two"), losses(tmp_path / "one"), range(1, 7))


def test_keep_last_and_export(runs):
    kept = [s for s, _ in complete_checkpoints(runs / "two" / "checkpoints")]
    assert kept == [9, 12]  # saved at 3, 6, 9 and the end; only the last 2 remain
    step12 = runs / "two" / "checkpoints" / "step-00000012"
    assert (step12 / MARKER).is_file() and (step12 / "config.yaml").is_file()
    assert json.loads((step12 / "train_state.json").read_text())["data"]["step"] == 12
    assert (runs / "two" / "model" / "model.safetensors.index.json").is_file()


def test_kill_and_resume(tmp_path, runs, data):
    """Stop after step 6 (as a kill after the step-6 save would), resume on 2 ranks and on 1 rank."""
    common = (f"--train.max_steps={STEPS}", "--checkpoint.interval=3", "--checkpoint.keep_last=3")
    stopped = tmp_path / "stopped"
    launch("train.py", 2, stopped, *common, "--train.stop_after=6", data=data)
    assert [s for s, _ in complete_checkpoints(stopped / "checkpoints")] == [3, 6]
    assert max(losses(stopped)) == 6
    one_rank = tmp_path / "one_rank"
    shutil.copytree(stopped, one_rank)

    # a save that died half-way: a step-9 folder without the completion marker, and a .partial folder
    fake = one_rank / "checkpoints" / "step-00000009"
    shutil.copytree(one_rank / "checkpoints" / "step-00000006", fake)
    (fake / MARKER).unlink()
    shutil.copytree(one_rank / "checkpoints" / "step-00000006", one_rank / "checkpoints" / "step-00000010.partial")
    assert latest(one_rank / "checkpoints").name == "step-00000006"

    log = launch("train.py", 2, stopped, *common, data=data)
    assert "resumed from" in log and "step-00000006 at step 6" in log
    reference = losses(runs / "two")
    assert_same(losses(stopped), reference, range(7, STEPS + 1))

    log = launch("train.py", 1, one_rank, *common, data=data)  # written by 2 ranks, resumed by 1
    assert "step-00000006 at step 6 (written by 2 ranks)" in log
    assert_same(losses(one_rank), reference, range(7, STEPS + 1))
    assert not (one_rank / "checkpoints" / "step-00000010.partial").exists()  # stale partial saves are cleared
    assert latest(one_rank / "checkpoints").name == f"step-{STEPS:08d}"


def test_latest_ignores_incomplete(tmp_path):
    root = tmp_path / "checkpoints"
    for step, complete in ((2, True), (4, True), (6, False)):
        d = root / f"step-{step:08d}"
        d.mkdir(parents=True)
        (d / ".metadata").write_text("")
        if complete:
            (d / MARKER).write_text("")
    (root / "step-00000008.partial").mkdir()
    (root / "step-00000008.partial" / MARKER).write_text("")
    assert latest(root).name == "step-00000004"
    assert latest(tmp_path / "nothing") is None


def test_bf16_mixed_precision_and_activation_checkpointing(tmp_path, data, runs):
    """bf16 compute copies (fp32 master shards, fp32 reduce) + per-block activation checkpointing on 2 ranks ==
    bf16 on 1 rank without checkpointing; and bf16 stays close to, but is not, the fp32 run."""
    args = ("--train.max_steps=4", "--checkpoint.interval=0", "--checkpoint.export_final=false",
            "--parallel.mixed_precision=bf16")
    launch("train.py", 2, tmp_path / "two", *args, "--parallel.activation_checkpointing=true", data=data)
    launch("train.py", 1, tmp_path / "one", *args, data=data)
    two, one, fp32 = losses(tmp_path / "two"), losses(tmp_path / "one"), losses(runs / "one")
    assert_same(two, one, range(1, 5))
    assert 0 < abs(two[1] - fp32[1]) < 0.05  # bf16 rounding shows, but only slightly
