#!/usr/bin/env bash
# The README's main command: set up, then the whole method end to end on MovieLens-100K, on a CPU
# (about 10 minutes on 2 cores, setup excluded):
#   0. MovieLens-100K: ../shared/data/movielens-100k when present, else the recbole==1.2.1 wheel from PyPI
#   1. corpus: P5 splits (next item leave-one-out, rating 80/10/10), leakage-free pre-training documents and
#      fine-tuning pairs from the training split, evaluation prompts, a 4,096-id BPE trained on the corpus
#   2. pre-train a small MPT (configs/model/demo.yaml) from scratch on the packed shards
#   3. instruction-tune it, loss on the responses only
#   4. export to the Hugging Face MPT layout and back (checked bit-identical)
#   5. evaluate on test samples: next item (10-beam search, MiniLM + FAISS grounding) -> HR/NDCG@5/10;
#      rating (sampling, 3 seeds) -> RMSE/MAE; beside most-popular / global-mean / per-item-mean baselines
# Environment: RECGPT_SHARED_DATA (default ../shared/data); DEMO_OUT (default out/demo); DEMO_SKIP_SETUP=1 to
# use the current python; DEMO_QUICK=1 for a shortened run (the test suite's version: a few steps and examples);
# DEMO_DEVICE (default cpu) for evaluate.py, e.g. cuda (training takes the GPU whenever torch sees one).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${DEMO_SKIP_SETUP:-0}" == 1 ]]; then PY=${PY:-python}; else bash scripts/setup.sh; PY=.venv/bin/python; fi
SHARED=${RECGPT_SHARED_DATA:-../shared/data}
OUT=${DEMO_OUT:-out/demo}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
if [[ "${DEMO_QUICK:-0}" == 1 ]]; then
  PRE=(--train.max_steps=4 --schedule.t_warmup=1 --checkpoint.interval=0); FT=("${PRE[@]}")
  NEXT_N=4; RATING_N=6; SEEDS=(0); MAX_NEW=(--max-new-tokens 8)
else
  PRE=(); FT=(); NEXT_N=200; RATING_N=300; SEEDS=(0 1 2); MAX_NEW=()
fi
# a fresh run each time: the training loop would otherwise resume the last demo's checkpoints
rm -rf "$OUT/pretrain" "$OUT/finetune" "$OUT/eval"
T0=$SECONDS
step() { echo; echo "== $1 ($((SECONDS - T0)) s)"; }

step "0/5 MovieLens-100K"
ML=$SHARED/movielens-100k
if [[ ! -f $ML/u.data ]]; then
  ML=$OUT/ml-100k-recbole
  echo "$SHARED/movielens-100k not found: taking ml-100k from the recbole==1.2.1 wheel on PyPI"
  $PY -m data.prepare.fetch_movielens "$ML"
fi
echo "reading $ML"

step "1/5 data"
$PY -m data.prepare configs/data/movielens-100k.yaml "--out_dir=$OUT/data" "--sources.0.options.path=$ML" \
  2>&1 | grep -v "it/s]\|batch/s]\|user/s]\|example/s]"
$PY -m data.prepare.audit "$OUT/data" > "$OUT/data/audit.json"
step "2/5 pre-train";  $PY train.py configs/train/demo-pretrain.yaml "--run.out_dir=$OUT/pretrain" "--data.path=$OUT/data" "${PRE[@]}"
step "3/5 fine-tune";  $PY finetune.py configs/train/demo-finetune.yaml "--run.out_dir=$OUT/finetune" \
                         "--model.init_from=$OUT/pretrain/model" "--data.path=$OUT/data" "${FT[@]}"
step "4/5 Hugging Face round trip"; $PY scripts/demo_generate.py "$OUT/finetune/model" "$OUT/data" 1

step "5/5 evaluate"
BENCH=$OUT/data/eval/movielens-100k
EVAL=(--checkpoint "$OUT/finetune/model" --benchmark "$BENCH" --device "${DEMO_DEVICE:-cpu}"
      --embedding-cache "$OUT/embedding_cache" "${MAX_NEW[@]}")
$PY evaluate.py "${EVAL[@]}" --task next_item --sample $NEXT_N --out "$OUT/eval/next_item" --batch-size 8 > /dev/null
$PY evaluate.py "${EVAL[@]}" --task rating --sample $RATING_N --seeds "${SEEDS[@]}" --out "$OUT/eval/rating" \
  --batch-size 32 > /dev/null
# the same examples, the rating read as the expected value of the model's distribution over the rating strings
$PY evaluate.py "${EVAL[@]}" --task rating --sample $RATING_N --rating.decoding=expected \
  --out "$OUT/eval/rating-expected" --batch-size 32 > /dev/null
$PY -m evaluation.baselines --benchmark "$BENCH" --next-item-sample $NEXT_N --rating-sample $RATING_N \
  --out "$OUT/eval/baselines" > /dev/null
$PY scripts/report.py --title "MovieLens-100K test samples (this run)" --baselines "$OUT/eval/baselines" \
  --model "demo model (pre-train + fine-tune)=$OUT/eval/next_item" --model "demo model (pre-train + fine-tune)=$OUT/eval/rating" \
  --model "demo model (pre-train + fine-tune)=$OUT/eval/rating-expected" \
  | tee "$OUT/results.md"
echo
echo "done in $((SECONDS - T0)) s. Wrote:"
echo "  $OUT/data            corpus: packed shards, instruction pairs, eval prompts, stats.md, audit.json"
echo "  $OUT/pretrain        metrics.jsonl, checkpoints/, model/ (exported)"
echo "  $OUT/finetune        metrics.jsonl, checkpoints/, model/, hf/ (Hugging Face layout), from-hf/"
echo "  $OUT/eval            predictions.jsonl, metrics.json, metrics.md per task; baselines/"
echo "  $OUT/results.md      the table above"
