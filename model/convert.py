"""Convert MPT checkpoints between Hugging Face's layout and ours, both directions.

    python -m model.convert from-hf HF_DIR OUR_DIR [--dtype bf16]   # mosaicml/mpt-7b, vinai/RecGPT-7B, ...
    python -m model.convert to-hf OUR_DIR HF_DIR [--dtype bf16]     # loads in transformers.MptForCausalLM

Every command that reads a model (load_model, evaluate.py, model.init_from, this converter) takes either
layout as it is (model/checkpoint.py reads HF directories through a name-mapping adapter); converting is
only needed to write the other layout, e.g. to share a trained model in transformers' format. One shard at
a time: each input shard becomes one output shard, so converting the 13 GB MPT-7B needs little more memory
than its largest shard. `to-hf` writes a model card (README.md) with what is known of the model. The output is
written into a temporary sibling and renamed into place when complete (output/), under a lock.
"""
import argparse
import dataclasses
import json
import pathlib
import shutil
import sys

import torch

from config import cli
from model.card import read_card, write_card
from model.checkpoint import (CONFIG_NAME, EXTENSION_TENSORS, HF_CONFIG_NAME, TOKENIZER_FILES, ShardWriter,
                              config_yaml, iter_checkpoint, ours_to_hf, read_config, shard_count)
from output import OutputLock, staged_dir

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def convert_from_hf(src_dir, out_dir, dtype=None):
    """A checkpoint of either layout -> our format."""
    src_dir, out_dir = pathlib.Path(src_dir), pathlib.Path(out_dir)
    config = read_config(src_dir)
    writer = ShardWriter(out_dir, shard_count(src_dir))
    for _, tensors in iter_checkpoint(src_dir, config):
        writer.write({name: t.to(dtype) if dtype is not None else t for name, t in tensors.items()})
        del tensors
    writer.finish(CONFIG_NAME, config_yaml(config))
    _copy_tokenizer_files(src_dir, out_dir)
    return config


def convert_to_hf(src_dir, hf_dir, dtype=None):
    """A checkpoint of either layout -> Hugging Face's layout (config.json, safetensors shards, a model card).

    A blank-infilling model (config.intra_positions > 0) is exported without its intra table: transformers'
    MptForCausalLM runs its plain causal path only, and the card says so (docs/recsysllm.md)."""
    src_dir, hf_dir = pathlib.Path(src_dir), pathlib.Path(hf_dir)
    config = read_config(src_dir)
    infill_rows = config.intra_positions
    writer = ShardWriter(hf_dir, shard_count(src_dir))
    stored_dtype = None
    for _, tensors in iter_checkpoint(src_dir, config):
        tensors = {name: t for name, t in tensors.items() if name not in EXTENSION_TENSORS}
        out = {ours_to_hf(name): t.to(dtype) if dtype is not None else t for name, t in tensors.items()}
        stored_dtype = stored_dtype or next((t.dtype for t in out.values()), None)
        writer.write(out)
        del out, tensors
    if infill_rows:
        config = dataclasses.replace(config, intra_positions=0)  # what transformers can run: the causal path
    hf_config = config.to_mpt_json()
    hf_config["torch_dtype"] = str(stored_dtype).removeprefix("torch.")
    writer.finish(HF_CONFIG_NAME, json.dumps(hf_config, indent=2) + "\n")
    _copy_tokenizer_files(src_dir, hf_dir)
    card = read_card(src_dir)
    if infill_rows:
        card["limitations"] = (f"transformers' MptForCausalLM runs this model's plain causal path only: its "
                               f"blank-infilling extension (an intra-position table of {infill_rows} rows, and the "
                               f"prefix and position inputs) is not in this export. Load the source folder "
                               f"{src_dir} with this project's model.checkpoint.load_model to infill.")
    write_card(hf_dir, config, **{**card, "converted_from": str(src_dir),
                                  "dtype": hf_config["torch_dtype"], "layout": "hf"})
    return config


def _copy_tokenizer_files(src: pathlib.Path, dst: pathlib.Path):
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m model.convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="direction", required=True)
    for direction, src, dst in (("from-hf", "HF_DIR", "OUR_DIR"), ("to-hf", "OUR_DIR", "HF_DIR")):
        p = sub.add_parser(direction)
        p.add_argument("src", metavar=src)
        p.add_argument("dst", metavar=dst)
        p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="cast weights (default: keep)")
    args = parser.parse_args(argv)
    convert = convert_from_hf if args.direction == "from-hf" else convert_to_hf
    if pathlib.Path(args.dst).resolve() == pathlib.Path(args.src).resolve():
        raise ValueError(f"{args.dst}: the output folder must not be the input folder")
    # one writer; written beside the destination and renamed into place whole (a failure leaves the old one intact)
    with OutputLock(args.dst, f"model.convert {args.direction}"), staged_dir(args.dst) as tmp:
        config = convert(args.src, tmp, DTYPES.get(args.dtype))
    print(f"{args.direction}: {args.src} -> {args.dst} ({config.num_params():,} parameters, "
          f"{config.n_layers} layers, d_model {config.d_model})")


if __name__ == "__main__":
    sys.exit(cli.run(main))
