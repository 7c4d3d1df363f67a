"""Model checkpoints: our format, which we write, and Hugging Face's MPT layout, which we read as it is.

    OUR_DIR/
      config.yaml                     the resolved MPTConfig (every key written out)
      model.safetensors.index.json    {"metadata": {"total_size": bytes, "config_sha256": sha256 of config.yaml,
                                      "shards": {shard: {"bytes": n, "sha256": hex}}}, "weight_map": {tensor: shard}}
      model-00001-of-0000N.safetensors
      (tokenizer files, when the source had them; README.md, the model card, on exports)

    HF_DIR/ (mosaicml/mpt-7b, vinai/RecGPT-7B(-Instruct), or transformers' save_pretrained)
      config.json                     mosaicml's remote-code MPT config or transformers' MptConfig
      model.safetensors[.index.json] or pytorch_model.bin[.index.json], one file or shards

Tensor names are the MPT module names without HF's `transformer.` prefix (`wte.weight`,
`blocks.0.attn.Wqkv.weight`, ...). An HF directory is read through a state-dict adapter, not converted:
its names are mapped at load time (`transformer.` dropped; llm-foundry's Composer `model.` too; transformers'
`lm_head.weight` checked equal to the tied embedding and dropped), one shard at a time; MPT's fused Wqkv is
[Q | K | V] in both layouts, so nothing is permuted (spec/mpt.md sections 3, 4, 13). `.bin` files are
pickles: they are read only with `torch.load(weights_only=True, mmap=True)`, which refuses anything but
tensors. `read_config`, `iter_checkpoint` and `load_model` take either layout. `load_model` builds on
`meta` and fills each parameter from its shard directly on the target device and dtype, so the weights are
never held twice. A missing, unexpected, duplicated, mis-placed or mis-shaped tensor, or an unreadable file,
is an error naming it.

Integrity (our layout): the index, written last, records each shard's size and sha256 and the sha256 of config.yaml.
Loading always checks the config's hash (an edited n_heads or alibi_bias_max would load as a different model) and
each shard's size; `verify="full"` (the default) also hashes every shard (about a minute for MPT-7B's 13 GB),
`verify="fast"` checks sizes and the safetensors headers only. A mismatch is an error naming the file. Indexes
written before these fields existed are read without the checks.
"""
import dataclasses
import hashlib
import json
import pathlib
import zipfile

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model.config import MPTConfig
from model.mpt import MPT

INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.yaml"
HF_CONFIG_NAME = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
HF_PREFIX = "transformer."
COMPOSER_PREFIX = "model."
TIED_HEAD = "lm_head.weight"


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


# tensors of an optional extension that a checkpoint of the base model lacks; they start as zeros (model/mpt.py)
EXTENSION_TENSORS = ("wte_intra.weight",)


def _zero_extensions(seen, expected: dict) -> dict:
    """The extension tensors a config asks for and a checkpoint does not hold, as zeros (a converted MPT-7B with
    the blank-infilling extension switched on computes exactly its own logits)."""
    return {name: torch.zeros(expected[name]) for name in EXTENSION_TENSORS if name in expected and name not in seen}


def check_complete(seen, expected: dict, source):
    missing = sorted(set(expected) - set(seen) - set(EXTENSION_TENSORS))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{source}: missing tensor(s) {missing[:5]}{more}")


class ShardWriter:
    """Writes safetensors shards one at a time, then the index: memory is bounded by one shard."""

    def __init__(self, out_dir, n_shards: int):
        self.out_dir = pathlib.Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.n_shards, self.written, self.weight_map, self.total, self.shards = n_shards, 0, {}, 0, {}

    def write(self, tensors: dict):
        self.written += 1
        shard = f"model-{self.written:05d}-of-{self.n_shards:05d}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, self.out_dir / shard, metadata={"format": "pt"})
        path = self.out_dir / shard
        self.shards[shard] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        for name, t in tensors.items():
            self.weight_map[name] = shard
            self.total += t.numel() * t.element_size()

    def finish(self, config_name: str, config_text: str):
        """The config file (ours: config.yaml; HF's: config.json), then the index: last, as it vouches for both."""
        assert self.written == self.n_shards, f"wrote {self.written} of {self.n_shards} shards"
        (self.out_dir / config_name).write_text(config_text)
        text = config_text
        index = {"metadata": {"total_size": self.total, "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
                              "shards": self.shards},
                 "weight_map": dict(sorted(self.weight_map.items()))}
        (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def sha256_file(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def config_yaml(config: MPTConfig) -> str:
    """Our config.yaml: every key of the resolved MPTConfig."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def save_model(state_dict: dict, config: MPTConfig, out_dir, max_shard_bytes: int = 5 * 2**30, dtype=None):
    """Save a full (unsharded) state dict in our format, splitting into shards of at most max_shard_bytes."""
    expected = expected_shapes(config)
    for name, t in state_dict.items():
        check_tensor(name, t.shape, expected, "state_dict")
    check_complete(state_dict, expected, "state_dict")
    # shards planned from sizes alone, then each converted (to CPU and dtype) and written in turn: beyond the
    # state dict itself, memory holds one converted shard
    groups, current, size = [], [], 0
    for name in expected:  # model order keeps each block's tensors together
        t = state_dict[name]
        n_bytes = t.numel() * (dtype or t.dtype).itemsize
        if current and size + n_bytes > max_shard_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(name)
        size += n_bytes
    groups.append(current)
    writer = ShardWriter(out_dir, len(groups))
    for names in groups:
        shard = {name: state_dict[name].detach().to("cpu", dtype=dtype or state_dict[name].dtype) for name in names}
        writer.write(shard)
        del shard
    writer.finish(CONFIG_NAME, config_yaml(config))


def layout(model_dir) -> str:
    """"ours" (config.yaml) or "hf" (config.json); an error naming the directory otherwise."""
    model_dir = pathlib.Path(model_dir)
    if (model_dir / CONFIG_NAME).is_file():
        return "ours"
    if (model_dir / HF_CONFIG_NAME).is_file():
        return "hf"
    what = "not a directory" if not model_dir.is_dir() else f"neither {CONFIG_NAME} (ours) nor {HF_CONFIG_NAME} (HF)"
    raise CheckpointError(f"{model_dir}: not a model checkpoint: {what}")


def read_config(model_dir) -> MPTConfig:
    model_dir = pathlib.Path(model_dir)
    if layout(model_dir) == "ours":
        return MPTConfig.from_yaml(model_dir / CONFIG_NAME)
    return MPTConfig.from_mpt_json(model_dir / HF_CONFIG_NAME)


VERIFY = ("full", "fast")


def read_index(model_dir, verify: str = "fast") -> dict:
    """{tensor name: shard path}, checking that every shard the index names exists and, when the index records them,
    the hash of config.yaml and each shard's size ("fast") or size and sha256 ("full")."""
    if verify not in VERIFY:
        raise ValueError(f"verify = {verify!r}: must be one of {VERIFY}")
    model_dir = pathlib.Path(model_dir)
    path = model_dir / INDEX_NAME
    try:
        index = json.loads(path.read_text())
        weight_map, meta = index["weight_map"], index.get("metadata") or {}
    except FileNotFoundError:
        raise CheckpointError(f"{model_dir}: no {INDEX_NAME}") from None
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors index ({e})") from None
    for shard in sorted(set(weight_map.values())):
        if not (model_dir / shard).is_file():
            raise CheckpointError(f"{path}: names shard '{shard}', which does not exist")
    if "config_sha256" in meta:
        config_path = model_dir / (CONFIG_NAME if (model_dir / CONFIG_NAME).is_file() else HF_CONFIG_NAME)
        if hashlib.sha256(config_path.read_bytes()).hexdigest() != meta["config_sha256"]:
            raise CheckpointError(f"{config_path}: changed since the weights were written (its hash differs from "
                                  f"{path}'s): it would load as another model")
    for shard, recorded in sorted((meta.get("shards") or {}).items()):
        f = model_dir / shard
        if f.stat().st_size != recorded["bytes"]:
            raise CheckpointError(f"{f}: {f.stat().st_size} bytes, {path} says {recorded['bytes']} (truncated or "
                                  f"replaced)")
        if verify == "full" and sha256_file(f) != recorded["sha256"]:
            raise CheckpointError(f"{f}: its sha256 differs from {path}'s (corrupted since it was written; "
                                  f"verify=fast skips this check)")
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


def iter_checkpoint(model_dir, config: MPTConfig, device="cpu", verify: str = "full"):
    """A checkpoint of either layout one shard at a time: yields (shard path, {our name: tensor on device}),
    every name and shape checked against `config` and no tensor missing. Only one shard is in memory at a
    time (an HF shard holding only the tied lm_head yields an empty dict). verify: "full" | "fast" (see above;
    our layout only: an HF download carries no hashes of ours)."""
    if layout(model_dir) == "hf":
        yield from _iter_hf(pathlib.Path(model_dir), config, device)
        return
    expected = expected_shapes(config)
    index = read_index(model_dir, verify)
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
    zeros = _zero_extensions(index, expected)
    if zeros:
        yield "<zero-initialised extension>", {name: t.to(device) for name, t in zeros.items()}


def shard_count(model_dir) -> int:
    """How many shards iter_checkpoint yields."""
    if layout(model_dir) == "hf":
        return len(hf_weight_files(pathlib.Path(model_dir))[0])
    return len(set(read_index(model_dir).values()))


def load_model(model_dir, device="cpu", dtype=None, verify: str = "full", **overrides) -> MPT:
    """Build the model from a checkpoint of either layout onto `device` in `dtype` (default: as stored).

    `overrides` replace config keys that do not change the weights, e.g. attn_impl="torch"; verify: "full" |
    "fast" (the integrity checks above).
    """
    config = read_config(model_dir)
    if overrides:
        config = dataclasses.replace(config, **overrides)
    with torch.device("meta"):
        model = MPT(config)
    for _, tensors in iter_checkpoint(model_dir, config, device, verify):
        if dtype is not None:
            tensors = {name: t.to(dtype) for name, t in tensors.items()}
        model.load_state_dict(tensors, strict=False, assign=True)  # replaces the meta tensors, no copy
    return model.eval()


# -- Hugging Face's layout, read through name mapping ------------------------------------------------------

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
    """The weight shards of an HF directory, in order, the reader for their format, and the index (or None)."""
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


def _read_safetensors(path, device="cpu"):
    return dict(iter_safetensors(path, device=device))


def _read_bin(path, device="cpu"):
    # weights_only refuses to unpickle anything but tensors and plain containers. mmap needs the zip format of
    # torch >= 1.6; a file in the legacy format (benign, and still tensors only) is read without it
    legacy = not zipfile.is_zipfile(path)
    try:
        state = torch.load(path, map_location=device, weights_only=True, mmap=not legacy)
    except Exception as e:  # truncated zip, not a pickle, or a forbidden global
        raise CheckpointError(f"{path}: unreadable PyTorch weights file (truncated, corrupt or not "
                              f"tensor-only?): {type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a flat {{name: tensor}} state dict")
    return state


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def _iter_hf(hf_dir: pathlib.Path, config: MPTConfig, device="cpu"):
    """An HF directory one shard at a time, in our names (iter_checkpoint)."""
    expected = expected_shapes(config)
    shards, read, index = hf_weight_files(hf_dir)
    # hashing the 400 MB embedding is only needed when an lm_head must be checked against it
    check_head = index is None or any(hf_to_ours(k) is None for k in index)
    seen, digests = {}, {}
    for shard in shards:
        out = {}
        for hf_name, t in read(shard, device).items():
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
            out[name] = t
        yield shard, out
        del out
    check_complete(seen, expected, hf_dir)
    if TIED_HEAD in digests and digests[TIED_HEAD] != digests.get(HF_PREFIX + "wte.weight"):
        raise CheckpointError(f"{hf_dir}: '{TIED_HEAD}' differs from 'transformer.wte.weight', but MPT ties them")
    zeros = _zero_extensions(seen, expected)
    if zeros:
        yield "<zero-initialised extension>", {name: t.to(device) for name, t in zeros.items()}
