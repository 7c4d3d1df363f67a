#!/usr/bin/env bash
# The GPU check (issue 15), one command on one GPU, under 8 minutes from a bare machine:
#   bash scripts/gpu_check.sh                    # stages a-e; tables + gpu_check.md under $OUT, else out/gpu_check
#   bash scripts/gpu_check.sh --dry-run          # each stage's commands and time cap (works on a CPU)
#   bash scripts/gpu_check.sh --only a,b --out /tmp/check
# a: kernel tests, b: attention benchmark, c: 7B-shape training throughput, d: 7B-shape beam search, e: the demo.
# The driver is scripts/gpu_check.py (standard library only; `python3 scripts/gpu_check.py --help`): it picks the
# interpreter for the stages (.venv/bin/python or python3, whichever has a CUDA torch; scripts/setup.sh --test when
# neither imports torch), caps every stage with `timeout`, and writes the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${GPU_CHECK_PYTHON:-python3}" scripts/gpu_check.py "$@"
