"""Convert MPT checkpoints between Hugging Face's layout and ours, both directions.

    python -m model.convert from-hf HF_DIR OUR_DIR [--dtype bf16]   # mosaicml/mpt-7b, vinai/RecGPT-7B, ...
    python -m model.convert to-hf OUR_DIR HF_DIR [--dtype bf16]     # loads in transformers.MptForCausalLM

HF_DIR holds `config.json` plus `*.safetensors` or `pytorch_model*.bin` weights, single-file or sharded with
an index. `.bin` files are pickles: they are read only with `torch.load(weights_only=True, mmap=True)`, which
refuses anything but tensors, and one shard at a time, so converting the 13 GB MPT-7B needs little more
memory than its largest shard (each input shard becomes one output shard).

The key mapping is a rename (spec/mpt.md sections 3, 4, 13): MPT's fused Wqkv is stored [Q | K | V] in both
layouts, so no tensor is permuted. Each of our names `n` is HF's `transformer.n`; llm-foundry Composer
checkpoints add a leading `model.`; transformers may add `lm_head.weight`, which must equal the tied
`transformer.wte.weight` and is dropped. Every tensor must map exactly once: a missing, unexpected,
duplicated, mis-placed or mis-shaped tensor, or an unreadable file, is an error naming it.
"""
import argparse
import hashlib
import json
import pathlib
import shutil
import sys

import torch

from model.checkpoint import (TOKENIZER_FILES, CheckpointError, ShardWriter, check_complete, check_tensor,
                              expected_shapes, iter_checkpoint, iter_safetensors, read_config, read_index,
                              write_config)
from model.config import MPTConfig

HF_PREFIX = "transformer."
COMPOSER_PREFIX = "model."
TIED_HEAD = "lm_head.weight"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def hf_to_ours(hf_name: str):
    """HF tensor name -> our name; None for the tied lm_head."""
    name = hf_name.removeprefix(COMPOSER_PREFIX)
    if name == TIED_HEAD:
        return None
    if not name.startswith(HF_PREFIX):
        return hf_name  # reported as unexpected by check_tensor
    return name.removeprefix(HF_PREFIX)


def ours_to_hf(name: str) -> str:
    return HF_PREFIX + name


def hf_weight_files(hf_dir: pathlib.Path):
    """The weight shards of an HF directory, in order, and the reader for their format."""
    for index_name, single, reader in (("model.safetensors.index.json", "model.safetensors", _read_safetensors),
                                       ("pytorch_model.bin.index.json", "pytorch_model.bin", _read_bin)):
        index = hf_dir / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a valid weight index ({e})") from None
            shards = sorted(set(weight_map.values()))
            for shard in shards:
                if not (hf_dir / shard).is_file():
                    raise CheckpointError(f"{index}: names shard '{shard}', which does not exist")
            return [hf_dir / s for s in shards], reader, weight_map
        if (hf_dir / single).is_file():
            return [hf_dir / single], reader, None
    raise CheckpointError(f"{hf_dir}: no model.safetensors[.index.json] or pytorch_model.bin[.index.json]")


def _read_safetensors(path):
    return dict(iter_safetensors(path))


def _read_bin(path):
    try:  # weights_only refuses to unpickle anything but tensors and plain containers
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated zip, not a pickle, or a forbidden global
        raise CheckpointError(f"{path}: unreadable PyTorch weights file (truncated, corrupt or not "
                              f"tensor-only?): {type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a flat {{name: tensor}} state dict")
    return state


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def convert_from_hf(hf_dir, out_dir, dtype=None):
    hf_dir, out_dir = pathlib.Path(hf_dir), pathlib.Path(out_dir)
    config = MPTConfig.from_mpt_json(hf_dir / "config.json")
    expected = expected_shapes(config)
    shards, read, index = hf_weight_files(hf_dir)
    writer = ShardWriter(out_dir, len(shards))
    # hashing the 400 MB embedding is only needed when an lm_head must be checked against it
    check_head = index is None or any(hf_to_ours(k) is None for k in index)
    seen, digests = {}, {}
    for shard in shards:
        out = {}
        for hf_name, t in read(shard).items():
            if index is not None and index.get(hf_name) != shard.name:
                raise CheckpointError(f"{shard}: holds tensor '{hf_name}', which the index places in "
                                      f"{index.get(hf_name)!r}")
            name = hf_to_ours(hf_name)
            if name is None or (name == "wte.weight" and check_head):
                digests[hf_name.removeprefix(COMPOSER_PREFIX)] = _digest(t)
                if name is None:
                    continue
            check_tensor(name, t.shape, expected, shard)
            if name in seen:  # e.g. both `model.transformer.x` and `transformer.x`
                raise CheckpointError(f"{shard}: tensor '{hf_name}' maps to '{name}', which {seen[name]} "
                                      f"already provided")
            seen[name] = shard
            out[name] = t.to(dtype) if dtype is not None else t
        writer.write(out)
        del out
    check_complete(seen, expected, hf_dir)
    if TIED_HEAD in digests and digests[TIED_HEAD] != digests.get(HF_PREFIX + "wte.weight"):
        raise CheckpointError(f"{hf_dir}: '{TIED_HEAD}' differs from 'transformer.wte.weight', but MPT ties them")
    writer.finish()
    write_config(config, out_dir)
    _copy_tokenizer_files(hf_dir, out_dir)
    return config


def convert_to_hf(our_dir, hf_dir, dtype=None):
    our_dir, hf_dir = pathlib.Path(our_dir), pathlib.Path(hf_dir)
    config = read_config(our_dir)
    n_shards = len(set(read_index(our_dir).values()))
    writer = ShardWriter(hf_dir, n_shards)
    stored_dtype = None
    for _, tensors in iter_checkpoint(our_dir, config):
        out = {ours_to_hf(name): t.to(dtype) if dtype is not None else t for name, t in tensors.items()}
        stored_dtype = next(iter(out.values())).dtype
        writer.write(out)
        del out, tensors
    writer.finish()
    hf_config = config.to_mpt_json()
    hf_config["torch_dtype"] = str(stored_dtype).removeprefix("torch.")
    (hf_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    _copy_tokenizer_files(our_dir, hf_dir)
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
    try:
        config = convert(args.src, args.dst, DTYPES.get(args.dtype))
    except (CheckpointError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"{args.direction}: {args.src} -> {args.dst} ({config.num_params():,} parameters, "
          f"{config.n_layers} layers, d_model {config.d_model})")


if __name__ == "__main__":
    main()
