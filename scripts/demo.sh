#!/usr/bin/env bash
# The README's main command: set up, then the whole method end to end on MovieLens-100K, on a CPU
# (about 12 minutes on 2 cores, setup excluded), for two models side by side:
#   RecGPT's text model (items written as their titles and genres, App. B's templates), and the same MPT trained
#   on the same interactions with each item written as one token of its own (data/prepare/templates.py, item tokens)
#   0. MovieLens-100K: ../shared/data/movielens-100k when present, else the recbole==1.2.1 wheel from PyPI
#   1. corpus, twice (text, item tokens): P5 splits (next item leave-one-out, rating 80/10/10), leakage-free
#      pre-training documents and fine-tuning pairs from the training split, evaluation prompts with 99 sampled
#      negatives per user, a 4,096-id BPE trained on the corpus (the item-token build adds its item/rating tokens)
#   2. pre-train a small MPT (configs/model/demo.yaml) from scratch on the packed shards: 120 steps on the text
#      corpus; 360 on the item-token corpus (an eighth of the text's tokens: six passes in about 3 minutes)
#   3. instruction-tune each, loss on the responses only (80 steps)
#   4. export the text model to the Hugging Face MPT layout and back (checked bit-identical)
#   5. evaluate both on test samples: next item (10-beam search, MiniLM + FAISS grounding) -> HR/NDCG@5/10; the
#      same users' 100 candidates ranked by likelihood (P5's direct recommendation) -> HR@1/5/10, NDCG@5/10, after
#      the instruction prompt, and by each pre-trained model alone as the next line of the user's history document;
#      rating (sampling, 3 seeds; and the expected rating over the rating strings) -> RMSE/MAE; beside the
#      most-popular / global-mean / per-item-mean baselines, with paired bootstrap intervals within the candidates
# Environment: RECGPT_SHARED_DATA (default ../shared/data); DEMO_OUT (default out/demo); DEMO_SKIP_SETUP=1 to
# use the current python; DEMO_QUICK=1 for a shortened run (the test suite's version: a few steps and examples);
# DEMO_DEVICE (default cpu) for evaluate.py, e.g. cuda (training takes the GPU whenever torch sees one).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${DEMO_SKIP_SETUP:-0}" == 1 ]]; then PY=${PY:-python}; else bash scripts/setup.sh; PY=.venv/bin/python; fi
SHARED=${RECGPT_SHARED_DATA:-../shared/data}
OUT=${DEMO_OUT:-out/demo}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# the item-token model's pre-training: its corpus has an eighth of the text corpus's tokens, so the same 8 x 512-token
# steps pass over it six times in 360 steps (fixed as six epochs before this build existed; how, and what that
# check saw: docs/results.md section 1)
TOKEN_PRE=(--train.max_steps=360 --run.name=demo-item-tokens-pretrain)
if [[ "${DEMO_QUICK:-0}" == 1 ]]; then
  PRE=(--train.max_steps=4 --schedule.t_warmup=1 --checkpoint.interval=0); FT=("${PRE[@]}"); TOKEN_PRE=()
  NEXT_N=4; RATING_N=6; SEEDS=(0); MAX_NEW=(--max-new-tokens 8)
else
  PRE=(); FT=(); NEXT_N=200; RATING_N=300; SEEDS=(0 1 2); MAX_NEW=()
fi
# a fresh run each time: the training loop would otherwise resume the last demo's checkpoints
rm -rf "$OUT/pretrain" "$OUT/finetune" "$OUT/eval" "$OUT/item-tokens"
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
TOK=$OUT/item-tokens  # the item-token model's build, runs and evaluations
for build in "$OUT/data" "$TOK/data"; do
  ITEM_TOKENS=$([[ $build == "$TOK/data" ]] && echo true || echo false)
  $PY -m data.prepare configs/data/movielens-100k.yaml "--out_dir=$build" "--sources.0.options.path=$ML" \
    "--sources.0.item_tokens=$ITEM_TOKENS" 2>&1 | grep -v "it/s]\|batch/s]\|user/s]\|example/s]"
  $PY -m data.prepare.audit "$build" > "$build/audit.json"
done
step "2/5 pre-train"
$PY train.py configs/train/demo-pretrain.yaml "--run.out_dir=$OUT/pretrain" "--data.path=$OUT/data" "${PRE[@]}"
$PY train.py configs/train/demo-pretrain.yaml "--run.out_dir=$TOK/pretrain" "--data.path=$TOK/data" "${PRE[@]}" \
  "${TOKEN_PRE[@]}"
step "3/5 fine-tune"
for run in "$OUT" "$TOK"; do
  $PY finetune.py configs/train/demo-finetune.yaml "--run.out_dir=$run/finetune" "--model.init_from=$run/pretrain/model" \
    "--data.path=$run/data" "${FT[@]}"
done
step "4/5 Hugging Face round trip"; $PY scripts/demo_generate.py "$OUT/finetune/model" "$OUT/data" 1

step "5/5 evaluate"
for run in "$OUT" "$TOK"; do
  BENCH=$run/data/eval/movielens-100k
  EVAL=(--benchmark "$BENCH" --device "${DEMO_DEVICE:-cpu}" --embedding-cache "$OUT/embedding_cache" "${MAX_NEW[@]}"
        --checkpoint "$run/finetune/model")
  PRETRAINED_EVAL=(--benchmark "$BENCH" --device "${DEMO_DEVICE:-cpu}" --checkpoint "$run/pretrain/model")
  $PY evaluate.py "${EVAL[@]}" --task next_item --sample $NEXT_N --out "$run/eval/next_item" --batch-size 8 > /dev/null
  # the same users' 100 candidates (the target + the build's 99 sampled negatives), ranked by likelihood: after the
  # instruction prompt; and by the pre-trained model alone, each candidate as the next line of the history document
  $PY evaluate.py "${EVAL[@]}" --task next_item --sample $NEXT_N --next_item.decoding=candidates \
    --out "$run/eval/candidates" > /dev/null
  $PY evaluate.py "${PRETRAINED_EVAL[@]}" --task next_item --sample $NEXT_N --next_item.decoding=candidates \
    --next_item.prompt=document --out "$run/eval/candidates-pretrained" > /dev/null
  $PY evaluate.py "${EVAL[@]}" --task rating --sample $RATING_N --seeds "${SEEDS[@]}" --out "$run/eval/rating" \
    --batch-size 32 > /dev/null
  # the same examples, the rating read as the expected value of the model's distribution over the rating strings
  $PY evaluate.py "${EVAL[@]}" --task rating --sample $RATING_N --rating.decoding=expected \
    --out "$run/eval/rating-expected" --batch-size 32 > /dev/null
done
# both builds hold the same interactions, splits, users and candidates: one set of baselines
$PY -m evaluation.baselines --benchmark "$OUT/data/eval/movielens-100k" --next-item-sample $NEXT_N \
  --rating-sample $RATING_N --out "$OUT/eval/baselines" > /dev/null
TEXT="RecGPT text model (pre-train + fine-tune)"; ITEM="item-token model (pre-train + fine-tune)"
ALONE="pre-trained only, the candidate as the history document's next line"
$PY scripts/report.py --title "MovieLens-100K test samples (this run)" --baselines "$OUT/eval/baselines" --compare \
  --model "$TEXT=$OUT/eval/next_item" --model "$ITEM=$TOK/eval/next_item" \
  --model "$TEXT=$OUT/eval/candidates" --model "$ITEM=$TOK/eval/candidates" \
  --model "RecGPT text model, $ALONE=$OUT/eval/candidates-pretrained" \
  --model "item-token model, $ALONE=$TOK/eval/candidates-pretrained" \
  --model "$TEXT=$OUT/eval/rating" --model "$TEXT=$OUT/eval/rating-expected" \
  --model "$ITEM=$TOK/eval/rating" --model "$ITEM=$TOK/eval/rating-expected" \
  | tee "$OUT/results.md"
echo
echo "done in $((SECONDS - T0)) s. Wrote:"
echo "  $OUT/data            corpus: packed shards, instruction pairs, eval prompts, stats.md, audit.json"
echo "  $OUT/pretrain        metrics.jsonl, checkpoints/, model/ (exported)"
echo "  $OUT/finetune        metrics.jsonl, checkpoints/, model/, hf/ (Hugging Face layout), from-hf/"
echo "  $OUT/eval            predictions.jsonl, metrics.json, metrics.md per task; baselines/"
echo "  $OUT/item-tokens     the item-token model's data, pretrain, finetune and eval, laid out as above"
echo "  $OUT/results.md      the table above"
