#!/usr/bin/env bash
# Build a data config on a Slurm cluster with one command (the work dir and outputs on a shared filesystem):
#   scripts/build_slurm.sh configs/data/paper.yaml --out_dir=out/data/recgpt [--key=value ...]
# It submits the stages of `python -m data.prepare` (data/prepare/pipeline.py) as Slurm jobs:
#   1. prepare: read every source once, plan it in the engine, train the tokenizer if asked; when done, that job
#      submits (with this script's --submit-jobs)
#   2. an array with one task per job of the plan (`--job $SLURM_ARRAY_TASK_ID`), and
#   3. the merge, which waits for every task of the array to succeed (afterok).
# Every stage resumes: if a task fails, run this script again, and only what is not done is redone.
# Environment: PY (default .venv/bin/python), SBATCH_ARGS (extra sbatch options, e.g. "--partition=cpu --time=4:00:00"),
# CPUS (per job, default 8), MEM (per job, default 16G: memory_limit and a batch of users fit in far less),
# ARRAY_PARALLEL (tasks running at once, default 64), LOGS (default slurm-logs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CPUS=${CPUS:-8}
MEM=${MEM:-16G}
ARRAY_PARALLEL=${ARRAY_PARALLEL:-64}
LOGS=${LOGS:-slurm-logs}
mkdir -p "$LOGS"
submit_jobs=0
if [[ "${1:-}" == --submit-jobs ]]; then submit_jobs=1; shift; fi
[[ $# -ge 1 ]] || { echo "usage: scripts/build_slurm.sh CONFIG [--key=value ...]" >&2; exit 2; }
ARGS=("$@")
QUOTED=$(printf '%q ' "${ARGS[@]}")  # for the commands the jobs run
ORIGINAL=$(printf '%q ' "$@")
PYQ=$(printf %q "$PY")
HERE=$(printf %q "$PWD")
# shellcheck disable=SC2086
SB=(sbatch --parsable --cpus-per-task="$CPUS" --mem="$MEM" ${SBATCH_ARGS:-})

if [[ $submit_jobs == 0 ]]; then
  id=$("${SB[@]}" --job-name=data-prepare --output="$LOGS/data-prepare-%j.log" \
       --wrap "cd $HERE && $PYQ -m data.prepare $QUOTED --stage prepare && PY=$PYQ bash scripts/build_slurm.sh --submit-jobs $ORIGINAL")
  echo "submitted data-prepare as job $id; it submits the bucket jobs and the merge when it is done (logs in $LOGS/)"
  exit 0
fi

# run inside the prepare job: the plan is done, so this prints the number of jobs at once
n=$($PY -m data.prepare "${ARGS[@]}" --stage prepare)
array=$("${SB[@]}" --job-name=data-jobs --array="0-$((n - 1))%$ARRAY_PARALLEL" --output="$LOGS/data-job-%A-%a.log" \
        --wrap "cd $HERE && $PYQ -m data.prepare $QUOTED --job \$SLURM_ARRAY_TASK_ID")
merge=$("${SB[@]}" --job-name=data-merge --dependency="afterok:$array" --output="$LOGS/data-merge-%j.log" \
        --wrap "cd $HERE && $PYQ -m data.prepare $QUOTED --stage merge")
echo "submitted $n bucket jobs as array $array and the merge as job $merge"
