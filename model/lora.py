"""LoRA (Hu et al. 2021) for our MPT: low-rank adapters beside frozen base weights, merged into them for export, and
PEFT's on-disk format for sharing (../shared/spec/recsysllm.md section 3; litgpt's lora.py in spirit).

    add_lora(model, rank=8, alpha=16, dropout=0.05)         # RecSysLLM's four targets; the base is frozen
    ...train...
    merge_lora(model)                                        # W <- W + (alpha / r) B A; plain nn.Linear again
    save_adapter(out_dir, adapter_tensors(model.state_dict()), rank=8, alpha=16, dropout=0.05)
    model = load_adapter(load_model(base_dir), adapter_dir)  # a PEFT adapter of this format back onto our model

An adapted Linear y = x W^T + b + (alpha / r) * B(A(dropout(x))), with A (r, in) and B (out, r) as PEFT stores them.
A starts Kaiming-uniform (a = sqrt(5), nn.Linear's and PEFT's default) and B at zero, so the adapted model computes
exactly the base model's logits until the first step. The model file stays a plain model: `add_lora` swaps the target
nn.Linear modules for `LoRALinear`, which holds the *same* weight and bias parameters under the same names
(`blocks.0.attn.Wqkv.weight`), so base checkpoints load unchanged; the adapters add `...Wqkv.lora_A.weight` and
`...Wqkv.lora_B.weight` (PEFT's names minus its `base_model.model.transformer.` prefix). The adapters are kept in
fp32 whatever the base's dtype: a frozen bf16 base plus fp32 adapters and optimizer state is what lets 7B fine-tune
on one GPU (python -m training.memory).

PEFT's format (peft 0.21 `save_pretrained`, checked by tests/test_lora.py): a folder with `adapter_config.json` and
`adapter_model.safetensors` whose keys are `base_model.model.transformer.blocks.{i}.attn.Wqkv.lora_A.weight`, ...,
for transformers' MptForCausalLM (`PeftModel.from_pretrained(mpt, folder)`).
"""
import json
import math
import pathlib
import re
from typing import Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

# the Linear modules of a block that can carry an adapter, and the block attribute that holds each
TARGETS = ("Wqkv", "out_proj", "up_proj", "down_proj")
PARENT = {"Wqkv": "attn", "out_proj": "attn", "up_proj": "ffn", "down_proj": "ffn"}
PEFT_PREFIX = "base_model.model.transformer."
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# blocks.{i}.{attn|ffn}.{target}.lora_{A|B}.weight: the names of adapter tensors in our state dicts
ADAPTER_KEY = re.compile(r"^blocks\.(\d+)\.(attn|ffn)\.(\w+)\.lora_([AB])\.weight$")


class AdapterError(ValueError):
    """An adapter that does not fit the model or the format (one line naming the culprit)."""


class LoRALinear(nn.Module):
    """A frozen nn.Linear's weight and bias (the same Parameter objects, same names) plus a trainable low-rank update.

    forward: x (..., in) -> (..., out) = F.linear(x, W, b) + scaling * lora_B(lora_A(dropout(x))); the adapter path
    runs in the adapters' dtype (fp32 beside a bf16 base, as PEFT does) and is cast back to the base output's dtype.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, dtype=torch.float32):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # (out, in): the base parameter itself, so its state-dict key is unchanged
        self.bias = base.bias
        device = base.weight.device
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, device=device, dtype=dtype)  # weight (r, in)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, device=device, dtype=dtype)  # weight (out, r)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        if device.type != "meta":
            reset_adapter(self)

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)  # (..., out)
        a = self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype)))  # (..., r)
        return y + (self.lora_B(a) * self.scaling).to(y.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha:g}"


@torch.no_grad()
def reset_adapter(module: LoRALinear, generator: torch.Generator = None):
    """PEFT's default init (init_lora_weights=True): A Kaiming-uniform with a = sqrt(5), B = 0."""
    nn.init.kaiming_uniform_(module.lora_A.weight, a=math.sqrt(5), generator=generator)
    nn.init.zeros_(module.lora_B.weight)


def check_options(rank, alpha, dropout, targets) -> None:
    """The adapter options, each checked with the culprit named (the training config checks the same values)."""
    if not isinstance(rank, int) or rank <= 0:
        raise AdapterError(f"LoRA rank = {rank!r}: must be an integer >= 1")
    if not alpha > 0:
        raise AdapterError(f"LoRA alpha = {alpha!r}: must be > 0")
    if not 0 <= dropout < 1:
        raise AdapterError(f"LoRA dropout = {dropout!r}: must be in [0, 1)")
    targets = list(targets)
    if not targets:
        raise AdapterError(f"LoRA targets = {targets}: name at least one of {list(TARGETS)}")
    for name in targets:
        if name not in TARGETS:
            raise AdapterError(f"LoRA target module {name!r} is not a Linear of our MPT: choose from {list(TARGETS)}")
    if len(set(targets)) != len(targets):
        raise AdapterError(f"LoRA targets = {targets}: a module is named twice")


# trained in full beside the adapters when the model has them: the blank-infilling intra table starts at zero and
# exists to be learned (a frozen one would stay zero); it is not part of the PEFT adapter (transformers' MPT has no
# such table, spec/recsysllm.md 3.4), only of the merged export
FULLY_TRAINED = ("wte_intra",)


def add_lora(model, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0, targets: Iterable[str] = TARGETS,
             base_dtype: Optional[torch.dtype] = None, adapter_dtype=torch.float32):
    """Wrap every block's target Linears in LoRALinear, freeze everything else (but FULLY_TRAINED modules the model
    has), return the model (changed in place).

    Works on a model on `meta` (before FSDP2 sharding; the adapters are then filled like the base weights:
    `initial_adapter_tensors`) or on a real one (adapters initialised here). base_dtype: cast the frozen base
    parameters to it (bf16 training keeps the base in bf16: no fp32 master copy of weights that never change); the
    adapters and FULLY_TRAINED modules are in adapter_dtype.
    """
    targets = list(targets)
    check_options(rank, alpha, dropout, targets)
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise AdapterError("the model already has LoRA adapters (add_lora was called twice)")
    for p in model.parameters():
        p.requires_grad_(False)
    if base_dtype is not None:
        model.to(base_dtype)  # before the adapters exist: they stay in adapter_dtype
    for block in model.blocks:
        for name in targets:
            parent = getattr(block, PARENT[name])
            setattr(parent, name, LoRALinear(getattr(parent, name), rank, alpha, dropout, adapter_dtype))
    for name in FULLY_TRAINED:
        module = getattr(model, name, None)
        if module is not None:
            module.to(adapter_dtype).requires_grad_(True)
    return model


def adapted_modules(model):
    """(name, LoRALinear) of a model; names as in its state dict (FSDP2/checkpoint wrappers stripped)."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", ""), module


def initial_adapter_tensors(model, generator: torch.Generator = None) -> dict:
    """{state-dict name: full tensor} of freshly initialised adapters (A Kaiming-uniform, B zero), on the CPU in fp32,
    in model order: what rank 0 scatters into the adapters of a model built on meta and sharded (training)."""
    out = {}
    for name, m in adapted_modules(model):
        a = torch.empty(m.lora_A.weight.shape)  # (r, in)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        out[f"{name}.lora_A.weight"] = a
        out[f"{name}.lora_B.weight"] = torch.zeros(m.lora_B.weight.shape)  # (out, r)
    return out


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts (of the full tensors also when the model is sharded)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def adapter_parameter_count(config, rank: int, targets: Iterable[str] = TARGETS) -> int:
    """r * (in + out) per adapted Linear, over all blocks: MPT-7B, r 8, four targets -> 524,288 per block."""
    d, hidden = config.d_model, config.expansion_ratio * config.d_model
    shapes = {"Wqkv": (d, 3 * d), "out_proj": (d, d), "up_proj": (d, hidden), "down_proj": (hidden, d)}
    return config.n_layers * sum(rank * sum(shapes[t]) for t in targets)


def merged_weight(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """W + scaling * B A, computed in fp32 (then the caller casts): (out, in) + (out, r) @ (r, in)."""
    return weight.float() + scaling * (lora_b.float() @ lora_a.float())


@torch.no_grad()
def merge_lora(model):
    """Fold every adapter into its base weight (in fp32, stored back in the weight's dtype) and put a plain nn.Linear
    back in its place: the model is a plain MPT again (same state-dict keys as the base), computing the same logits."""
    for block in model.blocks:
        for parent in (block.attn, block.ffn):
            for name, child in list(parent.named_children()):
                if isinstance(child, LoRALinear):
                    w = child.weight
                    w.copy_(merged_weight(w, child.lora_A.weight, child.lora_B.weight, child.scaling).to(w.dtype))
                    plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                      device="meta")
                    plain.weight, plain.bias = w, child.bias
                    setattr(parent, name, plain)
    return model


def merge_state_dict(state_dict: dict, scaling: float) -> dict:
    """A full state dict with adapters -> the base model's keys only, each adapted weight merged (in fp32; the
    returned merged weights are fp32, the other tensors as they were). For exporting a sharded model's gathered
    state dict without rebuilding the model."""
    out = {k: v for k, v in state_dict.items() if not ADAPTER_KEY.match(k)}
    for key in state_dict:
        m = ADAPTER_KEY.match(key)
        if m and m.group(4) == "A":
            module = key[: -len(".lora_A.weight")]
            out[f"{module}.weight"] = merged_weight(state_dict[f"{module}.weight"], state_dict[key],
                                                    state_dict[f"{module}.lora_B.weight"], scaling)
    return out


def adapter_tensors(state_dict: dict) -> dict:
    """The adapter tensors of a state dict (ours: blocks.0.attn.Wqkv.lora_A.weight, ...)."""
    return {k: v for k, v in state_dict.items() if ADAPTER_KEY.match(k)}


# -- PEFT's on-disk format ----------------------------------------------------------------------------------------

def peft_key(name: str) -> str:
    return PEFT_PREFIX + name


def save_adapter(out_dir, tensors: dict, rank: int, alpha: float, dropout: float, targets: Iterable[str] = None,
                 base_model: Optional[str] = None) -> pathlib.Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` as peft's save_pretrained does for transformers'
    MptForCausalLM. tensors: our adapter tensors (adapter_tensors(state_dict)), written in their dtype (fp32)."""
    if not tensors:
        raise AdapterError("no adapter tensors to save (is LoRA on?)")
    found = sorted({ADAPTER_KEY.match(k).group(3) for k in tensors}, key=TARGETS.index)
    targets = list(targets) if targets is not None else found
    if sorted(targets, key=TARGETS.index) != found:
        raise AdapterError(f"the adapter tensors adapt {found}, but the targets given are {targets}")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({peft_key(k): v.detach().cpu().contiguous() for k, v in sorted(tensors.items())},
              out_dir / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    # the fields PEFT's LoraConfig needs to rebuild these adapters exactly; PEFT fills every other one with its default
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model, "revision": None,
              "r": rank, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": targets, "bias": "none",
              "fan_in_fan_out": False, "init_lora_weights": True, "use_rslora": False, "use_dora": False,
              "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {},
              "alpha_pattern": {}, "inference_mode": True}
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def read_adapter_config(adapter_dir) -> dict:
    """adapter_config.json, checked for what our LoRALinear can represent (a plain LoRA on our four Linears)."""
    path = pathlib.Path(adapter_dir) / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise AdapterError(f"{adapter_dir}: no {ADAPTER_CONFIG} (not a PEFT adapter folder)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{path}: not valid JSON ({e})") from None
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"{path}: peft_type {config.get('peft_type')!r}; only 'LORA' adapters are supported")
    unsupported = {"use_dora": False, "use_rslora": False, "fan_in_fan_out": False, "bias": "none",
                   "layers_to_transform": None, "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}}
    for key, plain in unsupported.items():
        if config.get(key, plain) not in (plain, None, {}, False):
            raise AdapterError(f"{path}: {key} = {config[key]!r} is not supported (plain LoRA only: {key} = {plain!r})")
    targets = config.get("target_modules")
    if isinstance(targets, str):  # PEFT also takes one regex; ours are names
        targets = [targets]
    try:
        check_options(config.get("r"), config.get("lora_alpha", 8), config.get("lora_dropout", 0.0), targets or [])
    except AdapterError as e:
        raise AdapterError(f"{path}: {e}") from None
    return config


def load_adapter(model, adapter_dir, dtype=torch.float32):
    """A PEFT LoRA folder (ours, or peft's save_pretrained for transformers' MPT) onto our model: adapters added with
    the folder's rank, alpha and targets, every tensor's name and shape checked against the model. Returns the model."""
    adapter_dir = pathlib.Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    path = adapter_dir / ADAPTER_WEIGHTS
    if not path.is_file():
        raise AdapterError(f"{adapter_dir}: no {ADAPTER_WEIGHTS}")
    try:
        stored = load_file(path)
    except Exception as e:  # noqa: BLE001  (safetensors raises its own error types)
        raise AdapterError(f"{path}: unreadable safetensors file ({e})") from None
    targets = config["target_modules"]
    targets = [targets] if isinstance(targets, str) else targets
    r, alpha = config["r"], config.get("lora_alpha", 8)
    tensors = {}
    for key, t in stored.items():
        name = key.removeprefix(PEFT_PREFIX) if key.startswith(PEFT_PREFIX) else None
        m = ADAPTER_KEY.match(name or "")
        if m is None:
            raise AdapterError(f"{path}: tensor '{key}' is not a LoRA tensor of an MPT block "
                               f"('{PEFT_PREFIX}blocks.<i>.attn.Wqkv.lora_A.weight', ...)")
        layer, parent, target = int(m.group(1)), m.group(2), m.group(3)
        if target not in targets or PARENT.get(target) != parent:
            raise AdapterError(f"{path}: tensor '{key}' adapts '{parent}.{target}', which is not among the "
                               f"config's target_modules {targets}")
        if layer >= len(model.blocks):
            raise AdapterError(f"{path}: tensor '{key}' is for block {layer}, but the model has "
                               f"{len(model.blocks)} blocks")
        tensors[name] = t
    add_lora(model, r, alpha, 0.0, targets, adapter_dtype=dtype)  # dropout only matters in training
    expected = {k: tuple(v.shape) for k, v in adapter_tensors(model.state_dict()).items()}
    for name, t in tensors.items():
        if tuple(t.shape) != expected[name]:
            raise AdapterError(f"{path}: tensor '{peft_key(name)}' has shape {tuple(t.shape)}, but the model "
                               f"(rank {r}) needs {expected[name]}: the adapter was made for another base model "
                               f"or rank")
    missing = sorted(set(expected) - set(tensors))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise AdapterError(f"{path}: missing tensor(s) {[peft_key(k) for k in missing[:3]]}{more}")
    model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=False)
    for p in model.parameters():  # loaded for use, not for training on: nothing requires a gradient
        p.requires_grad_(False)
    return model
