"""Continual pre-training of MPT on packed recommendation text (RecGPT-7B, paper section 2.2), with the causal
objective or RecSysLLM's blank infilling (`--infill.objective=infill`, docs/recsysllm.md).

    # one CPU process, tiny model (data from `python -m data.prepare configs/data/<...>.yaml`)
    python train.py configs/train/tiny-pretrain.yaml --data.path=out/data/movielens-100k
    # one node, 8 GPUs
    torchrun --standalone --nproc_per_node 8 train.py configs/train/recgpt-7b-pretrain.yaml
    # several nodes: scripts/train_slurm.sbatch; throughput only: --benchmark.enabled=true --data.synthetic=true

Config: YAML (training/config.py lists every key and its default) with `--section.key=value` overrides; `--help`
lists the keys, `--dry-run` prints the resolved config and exits. The data is read from the packed shards of the
data build (data/formats/packed.py), validation (eval.interval) from its held-out rows; each row of `seq_len` tokens
is one training sequence whose every token is a target (labels = inputs, shifted in the loss). The loop, FSDP2,
LION, checkpoints and logging are shared with finetune.py (training/).
"""
import os
import sys

from config import cli, command_line
from training import distributed as dist_utils
from training.config import TrainConfig
from training.data import SyntheticDataset, open_packed, open_valid, pretrain_batch
from training.loop import model_config, run


def main(argv):
    cfg = command_line(TrainConfig, argv, __doc__)
    with dist_utils.process_group(cfg) as d:
        train(cfg, d)


def train(cfg, d):

    # -------------------------------------------------------------------------------- data: packed token rows
    valid = None
    if cfg.data.synthetic or (cfg.benchmark.enabled and cfg.data.path is None):
        config = model_config(cfg)
        seq_len = cfg.data.seq_len or config.max_seq_len
        n = cfg.train.global_batch_size * (cfg.benchmark.warmup_steps + cfg.benchmark.steps + 1)
        dataset = SyntheticDataset(n, seq_len, config.vocab_size, cfg.run.seed)
    else:
        if cfg.data.path is None:
            raise ValueError("data.path is not set: point it at a data build (the folder with meta.json)")
        dataset = open_packed(cfg.data.path)
        seq_len = dataset.seq_len
        if cfg.data.seq_len is not None:
            if cfg.data.seq_len > dataset.seq_len:
                raise ValueError(f"data.seq_len = {cfg.data.seq_len} is longer than the packed rows "
                                 f"({dataset.seq_len} tokens in {cfg.data.path})")
            seq_len = cfg.data.seq_len
        valid = open_valid(cfg.data.path, "pretrain_valid", cfg)
        if valid is not None and valid.seq_len < seq_len:
            raise ValueError(f"{cfg.data.path}: validation rows have {valid.seq_len} tokens, fewer than {seq_len}")

    def make_batch(ds, indices):
        return pretrain_batch(ds, indices, seq_len)

    if cfg.infill.objective == "infill":  # RecSysLLM's blank infilling on the same rows (training/infilling.py)
        from training.infilling import collator_for

        collator = collator_for(cfg, model_config(cfg), seq_len)

        def make_batch(ds, indices):  # noqa: F811
            return collator.batch(ds, [int(i) for i in indices])

    # -------------------------------------------------------------------------------- train (training/loop.py)
    run(cfg, d, dataset, make_batch, seq_len, task="pretrain", valid=valid)


if __name__ == "__main__":
    code = cli.run(main)  # an expected error: one line naming the culprit, exit 1 (config/cli.py)
    if code:
        sys.exit(code)
    sys.stdout.flush()
    os._exit(0)  # gloo workers can abort in interpreter shutdown after DCP; everything is flushed and closed here
