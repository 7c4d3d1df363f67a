#!/usr/bin/env bash
# One node: torchrun over the GPUs of this machine (or CPU processes with gloo when there is no GPU).
#
#   scripts/train_node.sh configs/train/recgpt-7b-pretrain.yaml [--section.key=value ...]
#   NGPU=4 SCRIPT=finetune.py scripts/train_node.sh configs/train/recgpt-7b-instruct.yaml
#
# NGPU defaults to the number of visible GPUs (1 CPU process without one). Logs of ranks other than 0 go to
# <LOG_DIR>/rank<N>.log (default out/logs) so the console shows rank 0 only.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:?usage: scripts/train_node.sh CONFIG.yaml [--section.key=value ...]}
shift
SCRIPT=${SCRIPT:-train.py}
if [[ -z "${NGPU:-}" ]]; then
  NGPU=$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
LOG_DIR=${LOG_DIR:-out/logs}
mkdir -p "$LOG_DIR"
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec torchrun --standalone --nproc_per_node "$NGPU" \
  --log-dir "$LOG_DIR" --redirects 3 --tee 3 --local-ranks-filter 0 \
  "$SCRIPT" "$CONFIG" "$@"
