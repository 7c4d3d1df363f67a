#!/usr/bin/env bash
# Create .venv and install the project: `bash scripts/setup.sh` (library), `bash scripts/setup.sh --test`
# (library + test references). torch comes first, pinned, so nothing else pulls a different build:
# on a machine with a local CPU wheel of torch 2.13.0 pip takes it; elsewhere PyPI's Linux wheel (CUDA) is
# used. Set TORCH_INDEX_URL to install torch from another index (e.g. a specific CUDA version).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip 2>/dev/null
if ! python -c "import torch, sys; sys.exit(not torch.__version__.startswith('2.13.0'))" 2>/dev/null; then
  pip install -q torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
REQ=requirements.txt
[ "${1:-}" = "--test" ] && REQ=requirements-test.txt
pip install -q -r "$REQ"
python -c "import torch; print(f'torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"
