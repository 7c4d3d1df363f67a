#!/usr/bin/env bash
# The two papers side by side, in miniature (issue 14; docs/results.md): on MovieLens-100K and Amazon Beauty (P5's
# split, real titles), the same model size, tokenizer, initialisation and number of training tokens for
#   (a) RecGPT: causal pre-training on the training histories, then instruction tuning on P5's multitask prompts;
#   (b) RecSysLLM: blank-infilling pre-training on the same rows, then the same prompts as [gMASK] generation;
#   (c) instruction tuning alone, from the same initialisation, for as many tokens as (a) pre-trains + tunes.
# Every arm is evaluated by `evaluate.py --task p5` (seen and unseen templates; rating by the expected value)
# beside the baselines, and scripts/papers.py prints the tables with paired bootstrap intervals.
#   bash scripts/papers.sh [all|data|train|eval|eval-sampled|ablate|cut|seeds|history|steps|sasrec|report]
# eval-sampled: MovieLens's rating templates by sampling (3 seeds) beside the expected value (part of eval);
# ablate: (b) with each RecSysLLM ingredient switched, one arm per name in PAPERS_ABLATIONS (no-entity, no-chrono,
# no-intra, behaviour; and again: nothing switched, the run-to-run reference; part of all when set), trained and
# evaluated as (b);
# cut: (a) pre-trained on the rows of the multitask prompts' users only (arm a-cut: the same tokenizer, steps, tuning
# and evaluation as (a)), where the prompts cover fewer users than the pre-training rows (Beauty's P5_USERS of
# 22,363): whether (a)'s lead comes from the other users' rows; not part of all;
# seeds: the arms of PAPERS_ARMS trained and evaluated again from another training seed (arm <arm>-s<seed>, for each
# seed in PAPERS_SEEDS, default 2; the main arms use 1337): the initialisation and data order change, nothing else, so
# the report's paired differences at each seed show whether an order between arms survives a retraining; not part of
# all;
# history: (c) tuned with the loss on the prompts' history titles too (arm c-history: finetune.py
# --data.prompt_loss_slots=[purchase_history], on the multitask prompts built again with each entity's slot, their
# tokens checked identical), the loss causal pre-training puts on every title of a history: whether that loss is what
# (a)'s pre-training adds; not part of all;
# steps: (a)'s pre-trained model tuned for as many steps as (c) (arm a-steps, so more training tokens than the other
# arms): whether (a) loses where the matched budget leaves it fewer tuning steps than (c); not part of all;
# sasrec: RecBole's SASRec on each build's training sequences, scored on the ranking templates' evaluated records
# (scripts/sasrec_baseline.py; not part of all: RecBole installs apart, requirements-baselines.txt; RECBOLE_PATH is the
# folder it was installed into with pip --target, added to PYTHONPATH).
# Environment: PAPERS_OUT (default out/papers), PAPERS_DATASETS (default "movielens beauty"), PAPERS_SCALE (cpu, the
# default; gpu, larger; quick, the test suite's: also PAPERS_QUICK=1), and to override a scale's values PRE_STEPS,
# FT_STEPS, EVAL_USERS, P5_USERS (Beauty's users in the multitask corpus), SASREC_EPOCHS (SASRec's most epochs);
# EVAL_DEVICE (default cpu); PAPERS_FIGURES (the report's training-curve plots; default PAPERS_OUT); PAPERS_ARMS (the
# arms the train, eval and seeds stages train or evaluate; default "a b c"); PAPERS_SEEDS (the seeds stage's training
# seeds).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SHARED=${RECGPT_SHARED_DATA:-../shared/data}
STAGE=${1:-all}
case $STAGE in all|data|train|eval|eval-sampled|ablate|cut|seeds|history|steps|sasrec|report) ;;
  *) echo "papers.sh: unknown stage '$STAGE' (all, data, train, eval, eval-sampled, ablate, cut, seeds, history," \
          "steps, sasrec, report)" >&2
     exit 2;;
esac
OUT=${PAPERS_OUT:-out/papers}
DATASETS=${PAPERS_DATASETS:-movielens beauty}
EVAL_DEVICE=${EVAL_DEVICE:-cpu}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
SCALE=${PAPERS_SCALE:-cpu}; [[ "${PAPERS_QUICK:-0}" == 1 ]] && SCALE=quick
if [[ $SCALE == quick ]]; then     # the test suite's version: a few steps and users
  PRE_STEPS=${PRE_STEPS:-2}; FT_STEPS=${FT_STEPS:-2}; EVAL_USERS=${EVAL_USERS:-3}; P5_USERS=${P5_USERS:-20}
  BEAMS=2; NEW_TOKENS=12; ML_USERS=(--max_users=20); WARMUP=(--schedule.t_warmup=1); SHAPE=demo; SASREC_MAX=1
elif [[ $SCALE == cpu ]]; then     # MovieLens: about 2.5 h on 2 cores, (c) 429 steps included (docs/results.md)
  PRE_STEPS=${PRE_STEPS:-200}; FT_STEPS=${FT_STEPS:-100}; EVAL_USERS=${EVAL_USERS:-300}; P5_USERS=${P5_USERS:-3000}
  BEAMS=10; NEW_TOKENS=48; ML_USERS=(); WARMUP=(); SHAPE=demo; SASREC_MAX=40
elif [[ $SCALE == gpu ]]; then     # the larger configuration, for one GPU (EVAL_DEVICE=cuda)
  PRE_STEPS=${PRE_STEPS:-2000}; FT_STEPS=${FT_STEPS:-1500}; EVAL_USERS=${EVAL_USERS:-943}
  P5_USERS=${P5_USERS:-22363}; BEAMS=10; NEW_TOKENS=48; ML_USERS=(); WARMUP=(); SHAPE=beauty-mini; SASREC_MAX=200
else
  echo "PAPERS_SCALE must be quick, cpu or gpu, got '$SCALE'" >&2; exit 2
fi
SASREC_EPOCHS=${SASREC_EPOCHS:-$SASREC_MAX}
# configs/train/beauty-mini-{pretrain,finetune}.yaml's batches; pre-training rows cut to 512 tokens; the model and the
# pairs take 2,048 (P5's direct prompts list 100 titles: about 900 tokens on MovieLens, more on Beauty)
PRE_ROWS=16; FT_BATCH=32; SEQ=512; CTX=2048
# the test suite's: fewer pre-training tokens, and tuning steps of 8 pairs (tuning is most of the test's time)
[[ $SCALE == quick ]] && SEQ=128 && FT_BATCH=8
# tuning's micro-batches: 4 pairs, cut from each step's FT_BATCH longest first (the same examples and gradient per step;
# about half the time, as a 900-token direct prompt no longer pads 15 short pairs)
BY_LENGTH=(--train.global_batch_size=$FT_BATCH --train.micro_batch_size=4 --data.micro_batches_by_length=true)
# SASRec: RecBole's model and defaults, but batches of 256 (SASRec's paper used 128): RecBole's 2,048 make 13 updates
# an epoch on Beauty's 3,000 users, and each epoch costs over a CPU-minute; early stopping after 10 epochs without a
# better validation MRR@10, at most SASREC_EPOCHS
SASREC=(--train-batch-size 256 --epochs "$SASREC_EPOCHS" --stopping-step 10 --seed 2020)
ABLATIONS=${PAPERS_ABLATIONS:-}
EVAL_ARMS=${PAPERS_ARMS:-a b c}
MAIN_SEED=1337  # the training seed of every arm but the seeds stage's
SEEDS=${PAPERS_SEEDS:-2}
if [[ $STAGE == seeds || $STAGE == train ]]; then
  for X in $EVAL_ARMS; do
    [[ $X == a || $X == b || $X == c ]] || { echo "PAPERS_ARMS: the $STAGE stage trains a, b or c, got '$X'" >&2
                                             exit 2; }
  done
fi
if [[ $STAGE == seeds ]]; then
  for S in $SEEDS; do
    [[ $S =~ ^[0-9]+$ && $S != "$MAIN_SEED" ]] || { echo "PAPERS_SEEDS: '$S' is not a seed other than the main" \
                                                       "arms' $MAIN_SEED" >&2; exit 2; }
  done
fi
declare -A SWITCH=([no-entity]=--infill.entity_masking=false [no-chrono]=--infill.chronological=false
                   [no-intra]=--infill.intra=false [behaviour]=--infill.behaviour_sampling=true
                   [again]=)  # (b) trained again beside the ablations: how far a rerun alone moves the table
for X in $ABLATIONS; do
  [[ -v "SWITCH[$X]" ]] || { echo "PAPERS_ABLATIONS: unknown '$X' (known: ${!SWITCH[*]})" >&2; exit 2; }
done
log() { echo "== $* ($(date +%H:%M:%S))"; }
quiet() { "$@" 2>&1 | grep -v "it/s]\|batch/s]\|user/s]\|example/s]\|s/batch]"; }
# Each arm's training commands end with its seed ($SEED: MAIN_SEED, or the seeds stage's)
train_causal() {  # a causal arm ($1: a, a-cut or a-s<seed>; $2: its pre-training rows): pre-training, then tuning
  local arm=$1 rows=$2
  log "$D ($arm) causal pre-training"; quiet $PY train.py configs/train/beauty-mini-pretrain.yaml "${MODEL[@]}" \
    "--run.out_dir=$R/$arm-pretrain" "--data.path=$rows" "${PRE[@]}" --run.seed=$SEED > "$R/$arm-pretrain.log"
  tune_causal "$arm" "$R/$arm-pretrain/model" $FT_STEPS
}
tune_causal() {  # $1: a causal arm; $2: its pre-trained model; $3: tuning steps
  log "$D ($1) instruction tuning, $3 steps"; quiet $PY finetune.py configs/train/beauty-mini-finetune.yaml \
    "${MODEL[@]}" "--model.init_from=$2" "--run.out_dir=$R/$1" --train.max_steps=$3 "${FT[@]}" --run.seed=$SEED \
    > "$R/$1.log"
}
train_infill() {  # an infilling arm ($1: b, b-<ablation> or b-s<seed>; the rest: its switches): pre-training, then
  local arm=$1; shift  # [gMASK] tuning
  log "$D ($arm) infilling pre-training $*"; quiet $PY train.py configs/train/beauty-mini-pretrain.yaml \
    "${INFILL_MODEL[@]}" --infill.objective=infill "$@" "--run.out_dir=$R/$arm-pretrain" "--data.path=$R/data" \
    "${PRE[@]}" --run.seed=$SEED > "$R/$arm-pretrain.log"
  log "$D ($arm) [gMASK] instruction tuning"; quiet $PY finetune.py configs/train/beauty-mini-finetune.yaml \
    "${INFILL_MODEL[@]}" --infill.objective=infill "$@" "--model.init_from=$R/$arm-pretrain/model" \
    "--run.out_dir=$R/$arm" --train.max_steps=$FT_STEPS "${FT[@]}" --run.seed=$SEED > "$R/$arm.log"
}
alone_steps() {  # tuning alone's steps: (a)'s tuning steps plus as many as its pre-training tokens fill
  $PY scripts/papers.py sft-steps $PRE_STEPS $PRE_ROWS $SEQ $FT_STEPS $FT_BATCH "$R/p5"
}
train_alone() {  # a tuning-alone arm ($1: c, c-s<seed> or c-history; $2: its pairs' build; the rest: finetune.py
  local arm=$1 pairs=$2 steps; shift 2  # options): as many tokens as (a) pre-trains and tunes
  steps=$(alone_steps)
  log "$D ($arm) instruction tuning alone, $steps steps (the same tokens)${*:+, $*}"
  quiet $PY finetune.py configs/train/beauty-mini-finetune.yaml "${MODEL[@]}" --model.init_from=null \
    "--run.out_dir=$R/$arm" --train.max_steps=$steps "--data.path=$pairs" --data.seq_len=$CTX "${BY_LENGTH[@]}" \
    "${COMMON[@]}" "$@" --run.seed=$SEED > "$R/$arm.log"
}
train_arm() {  # $1: a, b or c; $2: the arm's name
  case $1 in a) train_causal "$2" "$R/data";; b) train_infill "$2";; c) train_alone "$2" "$R/p5";; esac
}
build_prompts() {  # P5's multitask prompts with the pre-training rows' tokenizer, into $1
  quiet $PY -m data.prepare.p5_tasks $PCFG "--out_dir=$1" "--source.path=$SRC" \
    "--tokenizer.path=$R/data/tokenizer.json" --render.items=title --render.max_history=20 --max_seq_len=$CTX \
    "${P5_LIMIT[@]}"
}
evaluate_arm() {  # $1: the arm; $2: its results' name (eval/$2, eval-$2.log); the rest: evaluate.py options
  local arm=$1 name=$2 obj=causal; shift 2
  [[ $arm == b* ]] && obj=infill
  log "$D evaluate $name"
  quiet $PY evaluate.py --checkpoint "$R/$arm/model" --objective $obj --out "$R/eval/$name" "${EVAL[@]}" "$@" \
    > "$R/eval-$name.log"
}

for D in $DATASETS; do
  R=$OUT/$D
  mkdir -p "$R"
  if [[ $D == movielens ]]; then
    DCFG=configs/data/movielens-100k.yaml; PCFG=configs/data/p5-movielens.yaml; SRC=$SHARED/movielens-100k
    P5_LIMIT=("${ML_USERS[@]}"); TEMPLATES=1-6,1-10,2-3,2-13,5-5,5-8; VOCAB=4224; P5_NAME=p5-movielens
    RATING_TEMPLATES=1-6,1-10; EVAL_CTX=$CTX
  else
    DCFG=configs/data/beauty-mini.yaml; PCFG=configs/data/p5-beauty.yaml; SRC=$SHARED/amazon-beauty-p5
    P5_LIMIT=(--max_users="$P5_USERS"); TEMPLATES=2-3,2-13,5-5,5-8; VOCAB=8320; P5_NAME=p5-beauty
    # 100 product titles: 4% of the direct prompts, with their longest candidate, pass 2,048 tokens (at most 2,382):
    # evaluated in a longer context, which ALiBi allows without a weight changing (evaluate.py max_seq_len)
    RATING_TEMPLATES=; EVAL_CTX=2560
  fi
  # one model for every arm: the scale's shape (cpu, quick: demo; gpu: beauty-mini) with the dataset's vocabulary
  # (the trained BPE's 4,096 / 8,192 ids plus 128 spare rows, as MPT-7B keeps spare rows: (b)'s five infilling tokens
  # go there); (b) adds the zero-initialised intra table its objective needs (256 x d_model parameters)
  MODEL=(--model.name=$SHAPE "--model.overrides={vocab_size: $VOCAB, max_seq_len: $CTX}")
  INFILL_MODEL=(--model.name=$SHAPE "--model.overrides={vocab_size: $VOCAB, max_seq_len: $CTX, intra_positions: 256}")

  if [[ $STAGE == all || $STAGE == data ]]; then
    log "$D: pre-training rows (python -m data.prepare) and the multitask prompts (p5_tasks), one tokenizer"
    quiet $PY -m data.prepare $DCFG "--out_dir=$R/data" "--sources.0.options.path=$SRC" > "$R/data.log"
    $PY -m data.prepare.audit "$R/data" > "$R/data-audit.json"
    build_prompts "$R/p5" > "$R/p5.log"
    $PY -m data.prepare.audit "$R/p5" > "$R/p5-audit.json"
    $PY scripts/papers.py heldout "$R/data" "$R/p5"
  fi
  SEED=$MAIN_SEED
  COMMON=(--checkpoint.interval=0 --log.interval=10 "${WARMUP[@]}")
  PRE=(--train.max_steps=$PRE_STEPS --data.seq_len=$SEQ "${COMMON[@]}")
  FT=("--data.path=$R/p5" --data.seq_len=$CTX "${BY_LENGTH[@]}" "${COMMON[@]}")  # and each arm's --train.max_steps
  BENCH=$R/p5/eval/$P5_NAME
  EVAL=(--benchmark "$BENCH" --task p5 --sample $EVAL_USERS --device "$EVAL_DEVICE" --rating.decoding=expected
        --max_seq_len=$EVAL_CTX
        --num-beams $BEAMS --num-return-sequences $BEAMS --max-new-tokens $NEW_TOKENS --next_item.constrained=true
        --embedding-cache "$OUT/embedding_cache" --batch-size 8)
  if [[ $STAGE == all || $STAGE == train ]]; then
    for ARM in $EVAL_ARMS; do  # the train stage trains anew
      rm -rf "$R/$ARM-pretrain" "$R/$ARM"
      train_arm $ARM $ARM
    done
  fi
  if [[ $STAGE == all || $STAGE == eval ]]; then
    for ARM in $EVAL_ARMS; do evaluate_arm $ARM $ARM --templates $TEMPLATES; done
    $PY -m evaluation.baselines --benchmark "$BENCH" --sample $EVAL_USERS --out "$R/eval/baselines" > /dev/null
  fi
  if [[ -n $RATING_TEMPLATES && ($STAGE == all || $STAGE == eval || $STAGE == eval-sampled) ]]; then
    for ARM in $EVAL_ARMS; do
      evaluate_arm $ARM $ARM-sampled --templates $RATING_TEMPLATES --rating.decoding=sample
    done
  fi
  if [[ $STAGE == cut && ${#P5_LIMIT[@]} == 0 ]]; then
    log "$D: the multitask prompts cover every user, so (a-cut) would be (a): skipped"
  elif [[ $STAGE == cut ]]; then
    rm -rf "$R/data-cut" "$R/a-cut-pretrain" "$R/a-cut"
    log "$D (a-cut): the pre-training rows of the prompts' users only, with the same tokenizer"
    $PY scripts/papers.py users "$R/p5" "$R/p5-users.txt"
    quiet $PY -m data.prepare $DCFG "--out_dir=$R/data-cut" "--sources.0.options.path=$SRC" \
      "--sources.0.users_file=$R/p5-users.txt" "--tokenizer.path=$R/data/tokenizer.json" --tokenizer.train=null \
      > "$R/data-cut.log"
    $PY scripts/papers.py heldout "$R/data-cut" "$R/p5"
    train_causal a-cut "$R/data-cut"
    evaluate_arm a-cut a-cut --templates $TEMPLATES
  fi
  if [[ $STAGE == seeds ]]; then
    for SEED in $SEEDS; do
      for ARM in $EVAL_ARMS; do
        rm -rf "$R/$ARM-s$SEED-pretrain" "$R/$ARM-s$SEED"
        train_arm $ARM "$ARM-s$SEED"
        evaluate_arm "$ARM-s$SEED" "$ARM-s$SEED" --templates $TEMPLATES
      done
    done
  fi
  if [[ $STAGE == history ]]; then
    rm -rf "$R/p5-slots" "$R/c-history"
    log "$D (c-history): the multitask prompts built again, each entity with its template slot"
    build_prompts "$R/p5-slots" > "$R/p5-slots.log"
    for f in instructions.tokens.bin instructions.index.npy; do  # the same pairs, token for token, as (c) tunes on
      cmp "$R/p5/instructions/$f" "$R/p5-slots/instructions/$f"
    done
    echo "the same tokens as $R/p5"
    train_alone c-history "$R/p5-slots" "--data.prompt_loss_slots=[purchase_history]"
    evaluate_arm c-history c-history --templates $TEMPLATES
  fi
  if [[ $STAGE == steps ]]; then
    rm -rf "$R/a-steps"
    log "$D (a-steps): (a)'s pre-trained model tuned for as many steps as (c)"
    tune_causal a-steps "$R/a-pretrain/model" "$(alone_steps)"
    evaluate_arm a-steps a-steps --templates $TEMPLATES
  fi
  if [[ $STAGE == sasrec ]]; then
    log "$D SASRec (RecBole), at most $SASREC_EPOCHS epochs"
    PYTHONPATH=${RECBOLE_PATH:+$RECBOLE_PATH:}${PYTHONPATH:-} quiet $PY scripts/sasrec_baseline.py --p5-build "$R/p5" \
      --templates 2-3,2-13,5-5,5-8 --sample $EVAL_USERS --out "$R/eval/sasrec" "${SASREC[@]}" > "$R/eval-sasrec.log"
  fi
  if [[ -n $ABLATIONS && ($STAGE == all || $STAGE == ablate) ]]; then
    for X in $ABLATIONS; do
      rm -rf "$R/b-$X-pretrain" "$R/b-$X"
      train_infill "b-$X" ${SWITCH[$X]:+"${SWITCH[$X]}"}
      evaluate_arm "b-$X" "b-$X" --templates $TEMPLATES
    done
  fi
done
if [[ $STAGE == all || $STAGE == report ]]; then
  $PY scripts/papers.py report "$OUT" --datasets $DATASETS --figures "${PAPERS_FIGURES:-$OUT}" | tee "$OUT/results.md"
fi
