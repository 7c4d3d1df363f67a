"""attention.compile_check: the Triton kernels compiled ahead of time for GPU targets, on a machine without one.

It runs in a subprocess: this suite imports the kernels under TRITON_INTERPRET=1 (conftest.py), which gives
interpreter kernels and one fixed configuration, and the check needs the real ones."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _ptxas_available() -> bool:
    try:
        import triton
    except ImportError:
        return False
    return (pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").is_file()


pytestmark = pytest.mark.skipif(not _ptxas_available(), reason="triton's NVIDIA backend (ptxas) is not installed")


def run_check(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "attention.compile_check", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_every_kernel_of_a_training_step_compiles_for_sm80_and_sm90(tmp_path):
    out = tmp_path / "check.md"
    proc = run_check("--targets", "80", "90", "--cases", "train", "decode", "--configs", "first", "--out", str(out),
                     "--json", str(tmp_path / "check.json"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "check.json").read_text())
    rows = result["rows"]
    # a training step launches the forward and the backward's three kernels; decoding launches the forward alone,
    # with the decode family's 16-row query tile
    assert [(r["case"], r["kernel"]) for r in rows] == [("train", "_attn_fwd"), ("train", "_bwd_preprocess"),
                                                      ("train", "_attn_bwd_kv"), ("train", "_attn_bwd_q"),
                                                      ("decode", "_attn_fwd")]
    assert rows[-1]["tile"].startswith("16 x ") and rows[0]["tile"].startswith("128 x ")
    for r in rows:
        for cap in ("80", "90"):
            t = r["targets"][cap]
            assert "error" not in t, (r["kernel"], cap, t)
            assert 0 < t["regs"] <= 255 and t["spill_stores"] >= 0 and t["shared"] > 0, (r["kernel"], cap, t)
    # specialised as a real launch is: the unit strides of q, k, v (views of the fused QKV) become constants
    fwd = rows[0]["targets"]["90"]
    assert {"stride_qd", "stride_kd", "stride_vd", "stride_od"} <= set(fwd["specialised_to_1"])
    assert "stride_qm" not in fwd["specialised_to_1"]
    table = out.read_text()
    assert "| train | bf16 | 128 | _attn_fwd |" in table and "10 compilations" in table and "0 failed" in table


def test_the_interpreter_is_refused():
    proc = run_check("--configs", "first", env_extra={"TRITON_INTERPRET": "1"})
    assert proc.returncode == 2 and "without TRITON_INTERPRET=1" in proc.stderr


BROKEN = """
import torch, triton, triton.language as tl
from attention import compile_check

@triton.jit
def broken(X, BLOCK: tl.constexpr):
    x = tl.load(X + tl.arange(0, BLOCK))
    tl.store(X + tl.arange(0, BLOCK), tl.dot(x, x))  # tl.dot of 1-D blocks: the compiler refuses it

launch = compile_check.Launch("t", "broken", broken, (torch.empty(16),), {"BLOCK": 16})
print(compile_check.compile_one(launch, None, 90))
"""


def test_a_compile_error_is_reported_not_raised(tmp_path):
    script = tmp_path / "broken.py"  # a file: triton.jit reads the kernel's source
    script.write_text(BROKEN)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith("{'error': 'CompilationError"), proc.stdout
