import os
import pathlib

import pytest
import torch

# Triton kernels run on the CPU only through its interpreter, which must be switched on before any
# kernel module is imported; on a CUDA machine the real kernels run instead.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    """Refuse a known-broken interpreter up front rather than fail every kernel test with a numpy TypeError: Triton
    up to 3.6 keeps interpreter scalars as 1-element arrays and calls int() on them, which numpy 2.4 no longer allows
    ("only 0-dimensional arrays can be converted to Python scalars"); Triton 3.7 fixed it."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    import numpy
    import triton

    def version(text):
        return tuple(int(x) for x in text.split("+")[0].split(".")[:2])
    if version(triton.__version__) < (3, 7) and version(numpy.__version__) >= (2, 4):
        raise pytest.UsageError(f"the kernel tests run under Triton's interpreter, which in triton "
                                f"{triton.__version__} fails with numpy {numpy.__version__}: install triton>=3.7 "
                                f"(requirements.txt's torch brings one) or numpy<2.4")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Real datasets live outside the repository (never copied in); override with RECGPT_SHARED_DATA.
SHARED_DATA = pathlib.Path(os.environ.get("RECGPT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_data():
    """Path to ../shared/data; skips the test with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} not found (set RECGPT_SHARED_DATA)")
    return SHARED_DATA
