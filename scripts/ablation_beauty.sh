#!/usr/bin/env bash
# The miniature "MPT-7B + SFT vs RecGPT-7B-Instruct" ablation on Amazon Beauty (docs/results.md):
#   (a) pre-train from scratch on the training histories, then fine-tune;  (b) fine-tune alone from the same init.
# Both are evaluated on P5's leave-one-out test split beside the most-popular baseline.
#   bash scripts/ablation_beauty.sh [all|data|train|eval]     (CPU, about 1.5 hours on 2 cores)
# EVAL_USERS (default 2000): test users evaluated, a seeded sample (the full 22,363 take ~10x longer).
# ABLATION_OUT (default out/beauty-mini), ABLATION_PLOT (default docs/figures/beauty-mini-curves.png),
# EVAL_DEVICE (default cpu; cuda on a GPU machine, where training picks the GPU by itself).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SHARED=${RECGPT_SHARED_DATA:-../shared/data}
STAGE=${1:-all}
EVAL_USERS=${EVAL_USERS:-2000}
EVAL_DEVICE=${EVAL_DEVICE:-cpu}
OUT=${ABLATION_OUT:-out/beauty-mini}
PLOT=${ABLATION_PLOT:-docs/figures/beauty-mini-curves.png}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p $OUT/logs
run() { echo "== $1 ($(date +%H:%M:%S))"; shift; "$@" 2>&1 | tee "$OUT/logs/$LOG.log" | grep -v "it/s]\|batch/s]\|user/s]\|example/s]" || exit 1; }

if [[ $STAGE == all || $STAGE == data ]]; then
  LOG=data run "data" $PY -m data.prepare configs/data/beauty-mini.yaml \
      "--sources.0.options.path=$SHARED/amazon-beauty-p5"
  LOG=audit run "audit" $PY -m data.prepare.audit out/data/beauty-mini
fi
if [[ $STAGE == all || $STAGE == train ]]; then
  LOG=pretrain run "(a) pre-train" $PY train.py configs/train/beauty-mini-pretrain.yaml "--run.out_dir=$OUT/pretrain"
  LOG=finetune run "(a) fine-tune" $PY finetune.py configs/train/beauty-mini-finetune.yaml \
      "--run.out_dir=$OUT/finetune" "--model.init_from=$OUT/pretrain/model"
  LOG=sft-only run "(b) fine-tune only" $PY finetune.py configs/train/beauty-mini-sft-only.yaml "--run.out_dir=$OUT/sft-only"
fi
if [[ $STAGE == all || $STAGE == eval ]]; then
  for arm in finetune sft-only; do
    LOG=eval-$arm run "evaluate $arm" $PY evaluate.py --checkpoint $OUT/$arm/model \
        --benchmark out/data/beauty-mini/eval/amazon-beauty-2014 --task next_item --split test \
        --tokenizer out/data/beauty-mini/tokenizer.json --embedding-cache $OUT/embedding_cache \
        --sample $EVAL_USERS --out $OUT/eval/$arm --batch-size 16 --device "$EVAL_DEVICE" --constrained
  done
  LOG=baselines run "baselines" $PY -m evaluation.baselines --benchmark out/data/beauty-mini/eval/amazon-beauty-2014 \
      --sample $EVAL_USERS --out $OUT/eval/baselines
  LOG=report run "report" $PY scripts/report.py --title "Amazon Beauty, P5 leave-one-out test, $EVAL_USERS sampled users" \
      --model "(a) pre-train + fine-tune=$OUT/eval/finetune" --model "(b) fine-tune only=$OUT/eval/sft-only" \
      --baselines $OUT/eval/baselines --compare \
      --reference "RecGPT-7B-Instruct (paper, all users)=.0364,.0236,.0527,.0288" \
      --reference "MPT-7B + SFT (paper, all users)=.0063,.0041,.0088,.0050" \
      --curve "(a) pre-train=$OUT/pretrain/metrics.jsonl" --curve "(a) fine-tune=$OUT/finetune/metrics.jsonl" \
      --curve "(b) fine-tune only=$OUT/sft-only/metrics.jsonl" --plot "$PLOT"
  cp $OUT/logs/report.log $OUT/results.md
fi
