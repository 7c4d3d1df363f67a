"""Instruction fine-tuning on prompt/response pairs (RecGPT-7B-Instruct, paper section 2.3; the MPT-7B + SFT
ablation is the same config with a different model.init_from).

    python finetune.py configs/train/tiny-finetune.yaml --data.path=out/data/movielens-100k \
        --model.init_from=out/tiny-pretrain/model
    torchrun --standalone --nproc_per_node 8 finetune.py configs/train/recgpt-7b-instruct.yaml

Data: the instruction pairs of a data build (data/formats/instructions.py; your own prompt/response files are built
by data/prepare/own_files.py): input_ids = prompt + response + EOS, labels -100 over the prompt, so the loss
covers only the response and EOS (llm-foundry's decoder-only format). Examples whose prompt alone fills max_seq_len
are dropped (and counted); a longer response keeps its first tokens and ends in EOS. `--infill.objective=infill`
fine-tunes a blank-infilling model instead: prompt + [gMASK], the response as its span (docs/recsysllm.md).
`--data.prompt_loss_slots=[purchase_history]` also puts the loss on the prompt's entities from those template slots
(a P5 build's history titles; training/data.py PromptSlotLoss).
Sequences are right-padded with EOS (MPT's tokenizer has no pad token) to max_seq_len (llm-foundry,
allow_pad_trimming false) or to the longest in the micro-batch (`data.pad_to=longest`), labels -100 on padding.
"""
import os
import sys

from config import cli, command_line
from training import distributed as dist_utils
from training.config import TrainConfig
from training.data import FilteredDataset, PromptSlotLoss, open_instructions, open_valid, sft_batch
from training.loop import model_config, run

# fine-tuning defaults (RecGPT's fine-tuning.yaml) under the file and the command line
BASE = {"optim": {"lr": 1e-5, "betas": [0.9, 0.98], "weight_decay": 1e-7, "decay_mode": "schedule"},
        "schedule": {"name": "cosine_with_warmup", "t_warmup": 200, "alpha_f": 0.1},
        "train": {"epochs": 2}}


def main(argv):
    cfg = command_line(TrainConfig, argv, __doc__, base=BASE)
    with dist_utils.process_group(cfg) as d:
        train(cfg, d)


def train(cfg, d):

    # -------------------------------------------------------------------------------- data: prompt/response pairs
    if cfg.data.path is None:
        raise ValueError("data.path is not set: point it at a data build (the folder with meta.json)")
    max_seq_len = cfg.data.seq_len or model_config(cfg).max_seq_len
    raw = open_instructions(cfg.data.path)
    eos_id = cfg.data.eos_id
    if eos_id is None:
        from data.formats.packed import read_meta

        eos_id = int(read_meta(cfg.data.path)[1]["instructions"]["eos_id"])
    infill = cfg.infill.objective == "infill"
    if infill:
        from training.infilling import PairInfillCollator, pair_collator_for
    # a prompt must leave room for a response token (and, infilling, for [gMASK], [START], [END] and a padding slot)
    prompt_limit = max_seq_len - (PairInfillCollator.RESERVED - 1 if infill else 0)
    dataset = FilteredDataset(raw, prompt_limit)
    if d.is_main and dataset.dropped:
        print(f"[finetune] dropped {dataset.dropped} of {len(raw)} examples whose prompt has >= {prompt_limit} "
              f"tokens", flush=True)

    valid = open_valid(cfg.data.path, "instructions_valid", cfg)
    if valid is not None:
        valid = FilteredDataset(valid, prompt_limit)

    def make_batch(ds, indices):
        return sft_batch(ds, indices, max_seq_len, eos_id, cfg.data.pad_to)

    if cfg.data.prompt_loss_slots:
        if infill:
            raise ValueError("data.prompt_loss_slots is for the causal objective: infill.objective = infill puts its "
                             "loss on the [gMASK] span alone")
        from data.formats.tokenizer import load_build_tokenizer

        slot_loss = PromptSlotLoss(load_build_tokenizer(cfg.data.path), cfg.data.prompt_loss_slots, cfg.data.path)

        def make_batch(ds, indices):  # noqa: F811
            return slot_loss.apply(sft_batch(ds, indices, max_seq_len, eos_id, cfg.data.pad_to), ds, indices)

    if infill:  # RecSysLLM: each pair as [gMASK] generation (training/infilling.py)
        collator = pair_collator_for(cfg, model_config(cfg), max_seq_len)

        def make_batch(ds, indices):  # noqa: F811
            return collator.batch(ds, indices)

    # -------------------------------------------------------------------------------- train (training/loop.py)
    run(cfg, d, dataset, make_batch, max_seq_len, task="finetune", valid=valid)


if __name__ == "__main__":
    code = cli.run(main)  # an expected error: one line naming the culprit, exit 1 (config/cli.py)
    if code:
        sys.exit(code)
    sys.stdout.flush()
    os._exit(0)  # gloo workers can abort in interpreter shutdown after DCP; everything is flushed and closed here
