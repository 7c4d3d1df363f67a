"""What produced an output: the code's commit, the packages and the machine, written beside the config as
`environment.json` by the data builds, train.py / finetune.py and evaluate.py.

Why: on one machine a rerun of the same commit and config is bit-identical (data build, training losses,
predictions), but a rerun in a fresh environment need not be. Versions other than torch's float, and another
CPU can take other kernels, so a retrained arm can move by a few points (docs/results.md section 3). When two runs
disagree, comparing their environment.json tells which of those changed.

    write_environment(out_dir)   # -> out_dir/environment.json
"""
import importlib.metadata
import json
import os
import pathlib
import platform
import socket
import subprocess
import sys

# the packages whose version can change an output: the BPE and the data build (tokenizers, duckdb, pyarrow,
# numpy), the numerics (torch, triton), the grounding (faiss-cpu, sentence-transformers)
PACKAGES = ("torch", "triton", "numpy", "tokenizers", "safetensors", "duckdb", "pyarrow", "faiss-cpu",
            "sentence-transformers", "transformers")
REPO = pathlib.Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or "unknown CPU"


def git_commit() -> dict:
    """{"commit": sha or None, "dirty": whether tracked files differ from it} for this checkout."""
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        status = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):  # no git here (an installed copy): say so, do not fail the run
        return {"commit": None, "dirty": None}


def _version(package: str):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """The code, packages and machine of this process (torch's threads and GPUs only where torch is imported)."""
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "host": socket.gethostname(),
               "platform": platform.platform(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    torch = sys.modules.get("torch")
    if torch is not None:
        # the distribution's version (packages) does not name the build: PyPI's CUDA wheel says 2.11.0 where
        # torch.__version__ says 2.11.0+cu130
        machine["torch_build"], machine["cuda"] = torch.__version__, torch.version.cuda
        machine["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            machine["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {**git_commit(), "python": platform.python_version(),
            "packages": {p: _version(p) for p in PACKAGES}, "machine": machine}


def write_environment(folder) -> pathlib.Path:
    path = pathlib.Path(folder) / "environment.json"
    path.write_text(json.dumps(environment(), indent=2) + "\n")
    return path
