"""Run configuration: YAML file + `--section.key=value` overrides, precedence CLI > file > defaults.

    cfg = load_config("configs/train/tiny-pretrain.yaml", ["--optim.lr=1e-3", "--train.max_steps=20"])
    cfg.optim.lr, cfg["optim"]["lr"], cfg.to_dict()

Every key must exist in DEFAULTS (a typo is an error naming the key and file); values from the CLI are parsed as
YAML scalars (`--optim.betas=[0.9,0.98]`, `--checkpoint.resume=null`). A bare `--key=value` is accepted when the
key exists in exactly one section. The resolved config is printed at start and saved with every checkpoint.
"""
import copy
import pathlib

import yaml

# section -> key -> default. None means "no default / optional"; the type of a non-None default is enforced.
DEFAULTS = {
    "run": {
        "name": "run",
        "out_dir": "out/run",          # metrics.jsonl, checkpoints/, model/ (the exported final model)
        "seed": 1337,
        "deterministic": False,        # torch.use_deterministic_algorithms + no TF32
    },
    "model": {
        "name": "tiny",                # configs/model/<name>.yaml, used when init_from is null
        "config": None,                # or a path to a model YAML (overrides name)
        "init_from": None,             # a checkpoint dir, ours or a HF MPT dir (mosaicml/mpt-7b); null = scratch
        "overrides": {},               # model config keys that do not change the weights, e.g. {attn_impl: triton}
    },
    "data": {
        "path": None,                  # a data build (folder with meta.json): packed rows / instruction pairs
        "seq_len": None,               # train.py: packed row length (may cut rows shorter); finetune.py: max length, default model max_seq_len
        "shuffle": True,
        "eos_id": None,                # finetune.py: EOS/pad id; default: meta.json instructions.eos_id
        "pad_to": "max_seq_len",       # finetune.py: "max_seq_len" (llm-foundry, allow_pad_trimming false) | "longest"
        "synthetic": False,            # random tokens instead of data (benchmark mode); no data.path needed
    },
    "optim": {
        "lr": 2.5e-5,
        "betas": [0.9, 0.99],
        "weight_decay": 0.0,
        "decay_mode": "lr",            # "lr" (paper: decay lr*wd) | "schedule" (llm-foundry: decay (lr/lr0)*wd)
        "foreach": True,
        "grad_clip": 1.0,              # global L2 norm; 0 disables
    },
    "schedule": {
        "name": "cosine_with_warmup",
        "t_warmup": 2000,              # steps
        "alpha_f": 0.1,
    },
    "train": {
        "global_batch_size": 128,      # sequences per optimizer step, over all ranks
        "micro_batch_size": 1,         # sequences per forward/backward per rank
        "max_steps": None,             # total optimizer steps; null = epochs * steps_per_epoch
        "epochs": 1,
        "stop_after": None,            # leave the loop after this step (as if killed), schedule still uses max_steps
        "compile": False,
    },
    "parallel": {
        "mixed_precision": "bf16",     # "bf16": bf16 compute params, fp32 sharded master + fp32 reduce | "fp32"
        "activation_checkpointing": False,
        "reshard_after_forward": True,
        "backend": None,               # default nccl on CUDA, gloo on CPU
    },
    "checkpoint": {
        "interval": 1000,              # steps; 0 = only at the end
        "keep_last": 2,
        "resume": "auto",              # "auto" (newest complete in out_dir/checkpoints) | a step-N dir | null
        "export_final": True,          # write out_dir/model in our safetensors format at the end
        "export_dtype": "bfloat16",
    },
    "log": {
        "interval": 10,                # steps between console lines
        "wandb": "disabled",           # disabled | offline | online
        "wandb_project": "recgpt",
        "peak_flops": None,            # per-device peak FLOP/s for MFU when the device is not in the table
    },
    "benchmark": {
        "enabled": False,              # time steps (synthetic data), print tokens/s, MFU, memory; no checkpoints
        "warmup_steps": 3,
        "steps": 10,
    },
}


# types of the keys whose default is None (null stays allowed)
OPTIONAL_TYPES = {
    ("model", "config"): str, ("model", "init_from"): str, ("data", "path"): str, ("data", "seq_len"): int,
    ("data", "eos_id"): int, ("train", "max_steps"): int, ("train", "stop_after"): int,
    ("parallel", "backend"): str, ("log", "peak_flops"): float,
}


class ConfigError(ValueError):
    pass


class Section(dict):
    """A dict whose keys are also attributes."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


class Config(Section):
    """The run config: section name -> Section."""

    def to_dict(self) -> dict:
        return {s: dict(v) for s, v in self.items()}


def _check_type(section, key, value, default, source):
    if value is None:
        return value
    if default is None:
        kind = OPTIONAL_TYPES.get((section, key))
        if kind is None:
            return value
        default = kind()
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {section}.{key} = {value!r}: must be true or false")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {section}.{key} = {value!r}: must be a number")
        value = float(value)
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {section}.{key} = {value!r}: must be an integer")
    elif isinstance(default, (list, dict, str)) and not isinstance(value, type(default)):
        raise ConfigError(f"{source}: {section}.{key} = {value!r}: must be a {type(default).__name__}")
    return value


def _merge(cfg, values: dict, source: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(values).__name__}")
    for section, block in values.items():
        if section not in DEFAULTS:
            raise ConfigError(f"{source}: unknown section '{section}'; sections: {sorted(DEFAULTS)}")
        if not isinstance(block, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping")
        for key, value in block.items():
            if key not in DEFAULTS[section]:
                raise ConfigError(f"{source}: unknown key '{section}.{key}'; keys of '{section}': "
                                  f"{sorted(DEFAULTS[section])}")
            cfg[section][key] = _check_type(section, key, value, DEFAULTS[section][key], source)


def parse_overrides(args) -> dict:
    out = {}
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"command line: '{arg}' is not of the form --section.key=value")
        dotted, raw = arg[2:].split("=", 1)
        if "." in dotted:
            section, key = dotted.split(".", 1)
        else:
            owners = [s for s, keys in DEFAULTS.items() if dotted in keys]
            if len(owners) != 1:
                raise ConfigError(f"command line: '--{dotted}' is {'ambiguous' if owners else 'unknown'}; "
                                  f"write --section.{dotted}=... (sections: {owners or sorted(DEFAULTS)})")
            section, key = owners[0], dotted
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"command line: --{dotted}: cannot parse {raw!r}: {e}") from None
        out.setdefault(section, {})[key] = value
    return out


def load_config(path=None, argv=(), base: dict = None) -> Config:
    """DEFAULTS <- `base` (an entry point's own defaults) <- YAML file <- CLI overrides."""
    cfg = Config({s: Section(copy.deepcopy(v)) for s, v in DEFAULTS.items()})
    if base:
        _merge(cfg, base, "<entry-point defaults>")
    if path is not None:
        path = pathlib.Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        values = yaml.safe_load(path.read_text()) or {}
        _merge(cfg, values, str(path))
    _merge(cfg, parse_overrides(argv), "command line")
    return cfg


def split_argv(argv):
    """`script.py [CONFIG.yaml] [--k=v ...]` -> (config path or None, overrides)."""
    path = None
    rest = []
    for a in argv:
        if not a.startswith("--") and path is None:
            path = a
        else:
            rest.append(a)
    return path, rest


def dump(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
