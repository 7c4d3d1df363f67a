"""Our model checkpoint format: safetensors shards, an index and the resolved config.

    OUR_DIR/
      config.yaml                     the resolved MPTConfig (every key written out)
      model.safetensors.index.json    {"metadata": {"total_size": bytes}, "weight_map": {tensor: shard}}
      model-00001-of-0000N.safetensors
      (tokenizer files, when the source had them)

Tensor names are the MPT module names without HF's `transformer.` prefix (`wte.weight`,
`blocks.0.attn.Wqkv.weight`, ...). `load_model` builds on `meta` and fills each parameter from its shard
directly on the target device and dtype, so the weights are never held twice.
"""
import dataclasses
import json
import pathlib

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model.config import MPTConfig
from model.mpt import MPT

INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.yaml"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


class CheckpointError(ValueError):
    pass


def expected_shapes(config: MPTConfig) -> dict:
    """{tensor name: shape} of a model with this config, computed on meta (no memory)."""
    with torch.device("meta"):
        model = MPT(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def check_tensor(name, shape, expected: dict, source):
    if name not in expected:
        raise CheckpointError(f"{source}: unexpected tensor '{name}' (not in a model with this config)")
    if tuple(shape) != expected[name]:
        raise CheckpointError(f"{source}: tensor '{name}' has shape {tuple(shape)}, but the config implies "
                              f"{expected[name]} (does config.json match the weights?)")


def check_complete(seen, expected: dict, source):
    missing = sorted(set(expected) - set(seen))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{source}: missing tensor(s) {missing[:5]}{more}")


class ShardWriter:
    """Writes safetensors shards one at a time, then the index: memory is bounded by one shard."""

    def __init__(self, out_dir, n_shards: int):
        self.out_dir = pathlib.Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.n_shards, self.written, self.weight_map, self.total = n_shards, 0, {}, 0

    def write(self, tensors: dict):
        self.written += 1
        shard = f"model-{self.written:05d}-of-{self.n_shards:05d}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, self.out_dir / shard, metadata={"format": "pt"})
        for name, t in tensors.items():
            self.weight_map[name] = shard
            self.total += t.numel() * t.element_size()

    def finish(self):
        assert self.written == self.n_shards, f"wrote {self.written} of {self.n_shards} shards"
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def write_config(config: MPTConfig, out_dir):
    (pathlib.Path(out_dir) / CONFIG_NAME).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def save_model(state_dict: dict, config: MPTConfig, out_dir, max_shard_bytes: int = 5 * 2**30, dtype=None):
    """Save a full (unsharded) state dict in our format, splitting into shards of at most max_shard_bytes."""
    expected = expected_shapes(config)
    for name, t in state_dict.items():
        check_tensor(name, t.shape, expected, "state_dict")
    check_complete(state_dict, expected, "state_dict")
    groups, current, size = [], {}, 0
    for name in expected:  # model order keeps each block's tensors together
        t = state_dict[name].detach().to("cpu", dtype=dtype or state_dict[name].dtype)
        if current and size + t.numel() * t.element_size() > max_shard_bytes:
            groups.append(current)
            current, size = {}, 0
        current[name] = t
        size += t.numel() * t.element_size()
    groups.append(current)
    writer = ShardWriter(out_dir, len(groups))
    for group in groups:
        writer.write(group)
    writer.finish()
    write_config(config, out_dir)


def read_config(model_dir) -> MPTConfig:
    path = pathlib.Path(model_dir) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: no {CONFIG_NAME} (is this a directory written by model.convert?)")
    return MPTConfig.from_yaml(path)


def read_index(model_dir) -> dict:
    """{tensor name: shard path}, checking that every shard the index names exists."""
    model_dir = pathlib.Path(model_dir)
    path = model_dir / INDEX_NAME
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except FileNotFoundError:
        raise CheckpointError(f"{model_dir}: no {INDEX_NAME}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors index ({e})") from None
    for shard in sorted(set(weight_map.values())):
        if not (model_dir / shard).is_file():
            raise CheckpointError(f"{path}: names shard '{shard}', which does not exist")
    return {name: model_dir / shard for name, shard in weight_map.items()}


def iter_safetensors(path, names=None, device="cpu"):
    """Yield (name, tensor) from one safetensors file, one tensor at a time; corrupt files name themselves."""
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            keys = list(f.keys())
            for name in names if names is not None else keys:
                if name not in keys:
                    raise CheckpointError(f"{path}: the index places tensor '{name}' here, but the file lacks it")
                yield name, f.get_tensor(name)
    except SafetensorError as e:
        raise CheckpointError(f"{path}: unreadable safetensors file (truncated or corrupt?): {e}") from None


def iter_checkpoint(model_dir, config: MPTConfig, device="cpu"):
    """Our checkpoint one shard at a time: yields (shard path, {name: tensor on device}), every name and shape
    checked against `config` and no tensor missing. Only one shard is in memory at a time."""
    expected = expected_shapes(config)
    index = read_index(model_dir)
    index_path = pathlib.Path(model_dir) / INDEX_NAME
    for name in index:
        if name not in expected:
            raise CheckpointError(f"{index_path}: unexpected tensor '{name}' (not in a model with this config)")
    check_complete(index, expected, index_path)
    by_shard = {}
    for name, shard in index.items():
        by_shard.setdefault(shard, []).append(name)
    for shard, names in sorted(by_shard.items()):
        tensors = {}
        for name, t in iter_safetensors(shard, names, device=device):
            check_tensor(name, t.shape, expected, shard)
            tensors[name] = t
        yield shard, tensors


def load_model(model_dir, device="cpu", dtype=None, **overrides) -> MPT:
    """Build the model from our directory onto `device` in `dtype` (default: as stored).

    `overrides` replace config keys that do not change the weights, e.g. attn_impl="torch".
    """
    config = read_config(model_dir)
    if overrides:
        config = dataclasses.replace(config, **overrides)
    with torch.device("meta"):
        model = MPT(config)
    for _, tensors in iter_checkpoint(model_dir, config, device):
        if dtype is not None:
            tensors = {name: t.to(dtype) for name, t in tensors.items()}
        model.load_state_dict(tensors, strict=False, assign=True)  # replaces the meta tensors, no copy
    return model.eval()
