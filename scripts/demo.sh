#!/usr/bin/env bash
# The README's main command: set up, then run the pipeline end to end on MovieLens-100K, on the CPU
# (about 4 minutes on 2 cores):
#   1. build the corpus: history documents + instruction pairs, with a 4,096-id BPE trained on it
#   2. continual pre-training of a small MPT (configs/model/demo.yaml) on the packed shards
#   3. instruction tuning from that checkpoint, loss on the responses only
#   4. export to the Hugging Face MPT layout and back (bit-identical), then 10-beam next-item generation
# MovieLens-100K is read from ../shared/data/movielens-100k (RECGPT_SHARED_DATA overrides ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
SHARED=${RECGPT_SHARED_DATA:-../shared/data}
[ -f "$SHARED/movielens-100k/u.data" ] || { echo "MovieLens-100K not found under $SHARED (set RECGPT_SHARED_DATA)"; exit 1; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
echo "== 1/4 data";        $PY -m data.prepare --config configs/data/movielens-100k.yaml --out_dir=out/demo/data \
                             "--sources.0.options.path=$SHARED/movielens-100k"
echo "== 2/4 pre-train";   $PY train.py configs/train/demo-pretrain.yaml
echo "== 3/4 fine-tune";   $PY finetune.py configs/train/demo-finetune.yaml
echo "== 4/4 export + generate"; $PY scripts/demo_generate.py out/demo/finetune/model out/demo/data
echo "wrote out/demo/data, out/demo/pretrain, out/demo/finetune (model/, hf/, from-hf/)"
