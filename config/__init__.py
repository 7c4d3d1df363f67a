"""The one configuration system: a dataclass schema per command, YAML files, `--dotted.key=value` overrides.

Every command reads its config the same way (data builds, train.py, finetune.py, evaluate.py; the model's own
hyperparameters are the MPTConfig dataclass in model/config.py):

    cfg = config.load(TrainConfig, "configs/train/tiny-pretrain.yaml", ["--optim.lr=1e-3"])
    cfg.optim.lr                     # typed attributes
    config.dump(cfg)                 # the resolved config as YAML: printed at start, saved with every output

Precedence: command line > file > the command's own base defaults > the dataclass defaults. A dotted key reaches
into nested sections and lists (`--optim.lr=1e-3`, `--sources.0.options.path=/data/ml-25m`); values are parsed as
YAML scalars (`--optim.betas=[0.9,0.98]`, `--checkpoint.resume=null`). Every key must exist in the schema and
every value must have the field's type (a `Literal[...]` field lists its choices); a wrong one is a ConfigError
naming the key and where it was set: the file, the command line, or a command's defaults.

A schema is a dataclass whose fields are bool / int / float / str, Optional[...] of those, Literal[...], list[...],
dict (free-form, e.g. a reader's options) or another schema dataclass (a section). Checks that involve a value
(ranges, combinations) live in the dataclass's `__post_init__` and raise `invalid(key, value, why)`, which the
loader turns into a message naming the key's full path and its file.
"""
import copy
import dataclasses
import math
import pathlib
import re
import types
import typing
from typing import Any

import yaml

__all__ = ["ConfigError", "invalid", "load", "from_dict", "parse_overrides", "split_argv", "command_line", "to_dict",
           "dump", "save", "differences"]


class ConfigError(ValueError):
    """A bad config: the message names the key (dotted path) and the file or command line that set it."""


class InvalidValue(ConfigError):
    """Raised inside a schema's __post_init__; the loader adds the key's full path and its source."""

    def __init__(self, key: str, value, why: str):
        super().__init__(f"key '{key}' = {value!r}: {why}")
        self.key, self.value, self.why = key, value, why


def invalid(key: str, value, why: str) -> InvalidValue:
    return InvalidValue(key, value, why)


# ---------------------------------------------------------------------------------------------------------------
# raw values -> typed dataclasses


class _Origins:
    """Where each dotted key was set (file, command line, defaults); an error reports the longest known prefix."""

    def __init__(self, default: str):
        self.default, self.of = default, {}

    def record(self, values, source: str, prefix: str = "") -> None:
        if isinstance(values, dict) and values:
            for k, v in values.items():
                self.record(v, source, f"{prefix}{k}.")
        self.of[prefix.rstrip(".")] = source

    def __call__(self, dotted: str) -> str:
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            found = self.of.get(".".join(parts[:n]))
            if found is not None:
                return found
        return self.default


def _error(origins, dotted, value, why) -> ConfigError:
    return ConfigError(f"{origins(dotted)}: key '{dotted}' = {value!r}: {why}")


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _convert(tp, value, dotted: str, origins):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return copy.deepcopy(value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"schema field {dotted}: only Optional[X] unions are supported")
        return _convert(inner[0], value, dotted, origins)
    if value is None:
        raise _error(origins, dotted, value, "must not be null")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _error(origins, dotted, value, f"must be a mapping of the keys of '{dotted}'")
        return _build(tp, value, dotted + ".", origins)
    if origin is typing.Literal:
        if value not in args:
            raise _error(origins, dotted, value, f"must be one of {list(args)}")
        return value
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise _error(origins, dotted, value, "must be a list")
        item = args[0] if args else Any
        return [_convert(item, v, f"{dotted}.{i}", origins) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _error(origins, dotted, value, "must be a mapping")
        return copy.deepcopy(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise _error(origins, dotted, value, "must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _error(origins, dotted, value, "must be an integer")
        return value
    if tp is float:
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-5 (no dot) as a string; it is the number everyone means
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _error(origins, dotted, value, "must be a number")
        if not math.isfinite(value):
            raise _error(origins, dotted, value, "must be finite")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _error(origins, dotted, value, "must be a string")
        return value
    raise TypeError(f"schema field {dotted}: unsupported type {tp!r}")


def _build(cls, values: dict, prefix: str, origins):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in values if k not in fields]
    if unknown:
        where = f"'{prefix.rstrip('.')}'" if prefix else "the top level"
        raise ConfigError(f"{origins(prefix + str(unknown[0]))}: unknown key '{prefix}{unknown[0]}'; keys of "
                          f"{where}: {sorted(fields)}")
    kwargs = {k: _convert(hints[k], v, prefix + k, origins) for k, v in values.items()}
    for name, f in fields.items():  # a nested section given no values still gets its own defaults
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{origins(prefix + name)}: key '{prefix}{name}' is required")
    try:
        return cls(**kwargs)
    except InvalidValue as e:
        raise _error(origins, prefix + e.key, e.value, e.why) from None


def from_dict(schema, values: dict, source: str = "<dict>"):
    """A schema instance from plain values (checked as if they came from file `source`)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of keys, got {type(values).__name__}")
    origins = _Origins(source)
    origins.record(values, source)
    return _build(schema, values, "", origins)


# ---------------------------------------------------------------------------------------------------------------
# files and command lines


def parse_overrides(argv) -> list[tuple[str, Any]]:
    """["--optim.lr=1e-3", ...] -> [("optim.lr", 0.001), ...]; values are YAML scalars, lists or mappings."""
    out = []
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg or arg.startswith("--="):
            raise ConfigError(f"command line: '{arg}' is not of the form --key=value (--section.key=value)")
        dotted, raw = arg[2:].split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"command line: --{dotted}: cannot parse {raw!r}: {e}") from None
        out.append((dotted, value))
    return out


def split_argv(argv) -> tuple[Any, list[str]]:
    """`command [CONFIG.yaml] [--key=value ...]` -> (the config path or None, the overrides)."""
    path, rest = None, []
    for a in argv:
        if not a.startswith("--") and path is None:
            path = a
        else:
            rest.append(a)
    return path, rest


def _merge(into: dict, values: dict, source: str, origins, prefix: str = "") -> None:
    for k, v in values.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v, source, origins, f"{prefix}{k}.")
        else:
            into[k] = copy.deepcopy(v)
            origins.record(v, source, f"{prefix}{k}.")


def _set_dotted(raw: dict, dotted: str, value, origins) -> None:
    parts = dotted.split(".")
    node = raw
    for i, p in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, p, dotted)
        else:
            node = node.setdefault(p, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"command line: --{dotted}: '{'.'.join(parts[:i + 1])}' is not a section")
    if isinstance(node, list):
        index = _list_item(node, parts[-1], dotted, index_only=True)
        node[index] = value
    else:
        node[parts[-1]] = value
    origins.record(value, "command line", dotted + ".")


def _list_item(node: list, part: str, dotted: str, index_only=False):
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"command line: --{dotted}: the list has {len(node)} entries (index 0..{len(node) - 1})")
    return int(part) if index_only else node[int(part)]


def load(schema, path=None, argv=(), base: dict = None, flags: dict = None):
    """schema defaults <- `base` (a command's own defaults) <- YAML file `path` <- `--key=value` overrides and
    `flags` ({dotted key: value} from a command's own named flags, e.g. evaluate.py's `--batch-size 8`)."""
    raw, origins = {}, _Origins("defaults")
    if base:
        _merge(raw, base, "<command defaults>", origins)
    if path is not None:
        path = pathlib.Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" (line {mark.line + 1})" if mark is not None else ""
            raise ConfigError(f"{path}: not valid YAML{line}: {getattr(e, 'problem', e)}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of keys, got {type(values).__name__}")
        _merge(raw, values, str(path), origins)
    for dotted, value in parse_overrides(argv) + list((flags or {}).items()):
        _set_dotted(raw, dotted, value, origins)
    return _build(schema, raw, "", origins)


def command_line(schema, argv, doc: str, base: dict = None):
    """`command [CONFIG.yaml] [--key=value ...] [--dry-run]` for a command whose whole input is its config
    (train.py, finetune.py). --help prints `doc` and every key with its default; --dry-run resolves and prints the
    config, then exits, so a documented command can be checked without running it (tests/test_documented_commands.py).
    """
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        try:
            keys = ("\n\nConfig keys with their defaults (--section.key=value sets one):\n"
                    + dump(load(schema, None, (), base)))
        except ConfigError:  # a schema with required keys: its docstring lists them
            keys = ""
        print(doc.rstrip() + keys)
        raise SystemExit(0)
    dry_run = "--dry-run" in argv
    path, rest = split_argv([a for a in argv if a != "--dry-run"])
    cfg = load(schema, path, rest, base)
    if dry_run:
        print(dump(cfg), end="")
        raise SystemExit(0)
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# the resolved config, written out


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg, sort_keys=False)


def save(cfg, path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump(cfg))
    return path


def differences(saved: dict, now: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """[(dotted key, saved value, current value)] for every leaf that differs (a key only one side has too)."""
    out = []
    for k in list(saved) + [k for k in now if k not in saved]:
        a, b = saved.get(k, "<absent>"), now.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append((f"{prefix}{k}", a, b))
    return out
