"""Data-build configs: YAML files in configs/data/ with `--key=value` command-line overrides.

Precedence: command line > file > DEFAULTS. Dotted keys reach into nested maps and lists
(`--tokenizer.path=x.json`, `--sources.0.path=/data/ml-25m`); values are parsed as YAML
(`--max_seq_len=512`, `--skip_bad=true`). Relative paths are resolved against the working directory.
"""
import copy

import yaml

DEFAULTS = {
    "name": None,
    "out_dir": None,  # default out/data/<name>
    "seed": 1234,
    "max_seq_len": 2048,  # tokens; chunks and instruction pairs stay under it (recgpt.md §6)
    "min_interactions": 5,  # paper §2.1
    "finetune_fraction": 0.005,  # paper §2.1: 99.5 / 0.5 user split
    "skip_bad": False,
    "write_manifests": True,  # interaction keys of every output, for the audit
    # Execution (not part of what is built: the outputs are the same for any values of these)
    "batch_users": 512,  # users rendered and tokenized together
    "work_dir": None,  # default <out_dir>/work: normalised sources, the plan, the jobs' outputs, spill files
    "bucket_interactions": 250_000,  # users of a source are rendered in jobs of about this many interactions
    "workers": None,  # processes that run the jobs; default: the machine's cores
    "memory_limit": "512MB",  # the engine's (DuckDB's) memory budget per process; it spills to work_dir beyond it
    "tokenizer": {"path": None, "train": None},
    "pack": {"seq_len": None, "rows_per_shard": 65536},  # seq_len defaults to max_seq_len
    "eval": {"max_new_tokens": 128, "missing_title": "unknown title"},
    "sources": [],
}
SOURCE_DEFAULTS = {"name": None, "reader": None, "domain": None, "benchmark": False, "rating_split": True,
                   # benchmark only: also make fine-tuning pairs from every user's training history (its last
                   # training item is the answer); the paper's pairs come from other users (recgpt.md §5), but
                   # a benchmark used alone (the miniature ablation, docs/results.md) has no other users
                   "finetune_from_train": False,
                   "exclude_users_of": [], "options": {}}


class ConfigError(ValueError):
    pass


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_dotted(cfg, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = cfg
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def parse_overrides(args: list[str]) -> list[tuple[str, object]]:
    out = []
    for a in args:
        if not a.startswith("--") or "=" not in a:
            raise ConfigError(f"override {a!r} is not of the form --key=value")
        key, value = a[2:].split("=", 1)
        out.append((key.replace("-", "_") if "." not in key else key, yaml.safe_load(value)))
    return out


def load(path=None, overrides: list[tuple[str, object]] = ()) -> dict:
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        with open(path) as f:
            from_file = yaml.safe_load(f) or {}
        unknown = set(from_file) - set(DEFAULTS)
        if unknown:
            raise ConfigError(f"{path}: unknown keys {sorted(unknown)}")
        cfg = _merge(cfg, from_file)
    for key, value in overrides:
        if key.split(".")[0] not in DEFAULTS:
            raise ConfigError(f"unknown config key {key!r}")
        _set_dotted(cfg, key, value)
    return resolve(cfg, path)


def resolve(cfg: dict, path=None) -> dict:
    where = f"{path}: " if path else ""
    if not cfg["name"]:
        raise ConfigError(f"{where}'name' is required")
    cfg["out_dir"] = cfg["out_dir"] or f"out/data/{cfg['name']}"
    cfg["work_dir"] = cfg["work_dir"] or f"{cfg['out_dir']}/work"
    for key in ("bucket_interactions", "batch_users"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"{where}{key} must be a positive integer, got {cfg[key]!r}")
    if cfg["workers"] is not None and (not isinstance(cfg["workers"], int) or cfg["workers"] < 1):
        raise ConfigError(f"{where}workers must be a positive integer or null, got {cfg['workers']!r}")
    cfg["pack"]["seq_len"] = cfg["pack"]["seq_len"] or cfg["max_seq_len"]
    tok = cfg["tokenizer"]
    if bool(tok.get("path")) == bool(tok.get("train")):
        raise ConfigError(f"{where}set exactly one of tokenizer.path and tokenizer.train")
    sources = []
    for i, s in enumerate(cfg["sources"]):
        s = _merge(SOURCE_DEFAULTS, s)
        for key in ("name", "reader", "domain"):
            if not s[key]:
                raise ConfigError(f"{where}sources[{i}] needs '{key}'")
        if s["finetune_from_train"] and not s["benchmark"]:
            raise ConfigError(f"{where}sources[{i}].finetune_from_train needs benchmark: true")
        sources.append(s)
    if len({s["name"] for s in sources}) != len(sources):
        raise ConfigError(f"{where}source names must be unique")
    cfg["sources"] = sources
    if not sources:
        raise ConfigError(f"{where}no sources")
    return cfg
