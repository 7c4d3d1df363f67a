import os
import pathlib

import pytest
import torch

# Triton kernels run on the CPU only through its interpreter, which must be switched on before any
# kernel module is imported; on a CUDA machine the real kernels run instead.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Real datasets live outside the repository (never copied in); override with RECGPT_SHARED_DATA.
SHARED_DATA = pathlib.Path(os.environ.get("RECGPT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_data():
    """Path to ../shared/data; skips the test with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} not found (set RECGPT_SHARED_DATA)")
    return SHARED_DATA
