"""The data-build config: YAML files in configs/data/, read by the project's one config system (config/__init__.py):
`python -m data.prepare CONFIG.yaml [--key=value ...]`, command line > file > the defaults below.

Dotted keys reach into sections and lists (`--tokenizer.path=x.json`, `--sources.0.options.path=/data/ml-25m`);
values are parsed as YAML (`--max_seq_len=512`, `--skip_bad=true`). Relative paths are resolved against the working
directory. Every key is typed; a typo or a wrong type is an error naming the key and the file.
"""
from dataclasses import dataclass, field
from typing import Literal, Optional

import config as config_lib
from config import ConfigError, invalid

__all__ = ["BuildConfig", "SourceConfig", "ConfigError", "load"]


@dataclass
class BpeSection:
    """A small byte-level BPE trained on the build's own training documents (data/prepare/bpe.py)."""
    vocab_size: int = 4096
    max_documents: int = 20000


@dataclass
class TokenizerSection:
    path: Optional[str] = None  # a tokenizers JSON (e.g. GPT-NeoX-20B's); or
    train: Optional[BpeSection] = None  # train one: {vocab_size, max_documents}

    def __post_init__(self):
        if (self.path is None) == (self.train is None):
            raise invalid("path", self.path, "set exactly one of tokenizer.path and tokenizer.train")


@dataclass
class PackSection:
    seq_len: Optional[int] = None  # packed row length; default max_seq_len
    rows_per_shard: int = 65536


@dataclass
class EvalPromptSection:
    max_new_tokens: int = 128  # an evaluation prompt leaves this many tokens of max_seq_len for the answer
    missing_title: str = "unknown title"
    # next-item prompts also carry the target among this many sampled negatives ("candidates": items of the source's
    # catalog the user never interacted with, uniform, seeded per user; P5's direct recommendation is 1 + 99), which
    # evaluate.py can rank by likelihood (next_item.decoding=candidates); 0: none
    negatives: int = 0


@dataclass
class LimitsSection:
    """Bounds on one record's cost, applied when a source is read, before any encoding; what they cut is counted."""
    history: int = 100_000  # a user's most recent interactions kept (older ones dropped: history_over_<N>)
    text_chars: int = 10_000  # an item's title/description/... and a review, cut to this many characters


@dataclass
class SourceConfig:
    name: str
    reader: str  # data/prepare/sources: movielens | amazon | p5 | ...
    domain: str  # data/prepare/templates.py
    benchmark: bool = False  # P5's protocol: leave-one-out next item, rating split; evaluation files written
    rating_split: bool = True
    # benchmark only: also make fine-tuning pairs from every user's training history (its last training item is the
    # answer); the paper's pairs come from other users (recgpt.md §5), but a benchmark used alone (the miniature
    # ablation, docs/results.md) has no other users
    finetune_from_train: bool = False
    exclude_users_of: list[str] = field(default_factory=list)  # earlier sources whose users this one leaves out
    # benchmark only: train on the users listed in this file only (one id per line, as the reader names them; e.g.
    # another build's users, `scripts/papers.py users`). P5's splits are still drawn over every user, so the held-out
    # interactions and evaluation files are the full source's; the other users' training rows are dropped and counted
    # ("user_not_in_users_file"), and a listed user the source lacks is an error
    users_file: Optional[str] = None
    # write each item as one token of its own (and each rating as one token) instead of its title and fields
    # (data/prepare/templates.py); needs tokenizer.train, which then adds those tokens after its BPE
    item_tokens: bool = False
    options: dict = field(default_factory=dict)  # the reader's own options (path, ...)

    def __post_init__(self):
        if self.finetune_from_train and not self.benchmark:
            raise invalid("finetune_from_train", True, "needs benchmark: true")
        if self.users_file is not None and not self.benchmark:
            raise invalid("users_file", self.users_file, "needs benchmark: true")


@dataclass
class BuildConfig:
    name: str
    out_dir: Optional[str] = None  # default out/data/<name>
    seed: int = 1234
    max_seq_len: int = 2048  # tokens; chunks and instruction pairs stay under it (recgpt.md §6)
    min_interactions: int = 5  # paper §2.1
    finetune_fraction: float = 0.005  # paper §2.1: 99.5 / 0.5 user split
    # a seeded share of each source's training users (apart among pre-training and fine-tuning users) held out whole
    # for the validation loss (train.py / finetune.py eval.interval): their documents and pairs are written to
    # pretrain_valid/ and instructions_valid/, never to training. 0: no validation split (the paper has none)
    valid_fraction: float = 0.0
    skip_bad: bool = False
    # an exact repeat of a timed interaction (user, item, time, rating, review): kept and counted | dropped | error
    duplicate_interactions: Literal["keep", "drop", "error"] = "keep"
    duplicate_items: Literal["keep_first", "keep_last", "error"] = "keep_first"  # an item id defined twice
    limits: LimitsSection = field(default_factory=LimitsSection)
    write_manifests: bool = True  # interaction keys of every output, for the audit
    # Execution (not part of what is built: the outputs are the same for any values of these)
    batch_users: int = 512  # users rendered and tokenized together
    work_dir: Optional[str] = None  # default <out_dir>/work: normalised sources, plan, jobs' outputs, spill files
    bucket_interactions: int = 250_000  # users of a source are rendered in jobs of about this many interactions
    workers: Optional[int] = None  # processes that run the jobs; default: the machine's cores
    memory_limit: str = "512MB"  # the engine's (DuckDB's) memory budget per process; it spills to work_dir beyond
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    pack: PackSection = field(default_factory=PackSection)
    eval: EvalPromptSection = field(default_factory=EvalPromptSection)
    sources: list[SourceConfig] = field(default_factory=list)

    def __post_init__(self):
        self.out_dir = self.out_dir or f"out/data/{self.name}"
        self.work_dir = self.work_dir or f"{self.out_dir}/work"
        for key in ("bucket_interactions", "batch_users", "max_seq_len", "min_interactions"):
            if getattr(self, key) < 1:
                raise invalid(key, getattr(self, key), "must be a positive integer")
        for key in ("history", "text_chars"):
            if getattr(self.limits, key) < 1:
                raise invalid(f"limits.{key}", getattr(self.limits, key), "must be >= 1")
        if self.workers is not None and self.workers < 1:
            raise invalid("workers", self.workers, "must be a positive integer or null")
        if not 0.0 <= self.finetune_fraction < 1.0:
            raise invalid("finetune_fraction", self.finetune_fraction, "must be in [0, 1)")
        if not 0.0 <= self.valid_fraction < 0.5:
            raise invalid("valid_fraction", self.valid_fraction, "must be in [0, 0.5)")
        self.pack.seq_len = self.pack.seq_len or self.max_seq_len
        for key, value, low in (("pack.seq_len", self.pack.seq_len, 2),
                                ("pack.rows_per_shard", self.pack.rows_per_shard, 1),
                                ("eval.max_new_tokens", self.eval.max_new_tokens, 1),
                                ("eval.negatives", self.eval.negatives, 0)):
            if value < low:
                raise invalid(key, value, f"must be >= {low}")
        if self.eval.max_new_tokens >= self.max_seq_len:
            raise invalid("eval.max_new_tokens", self.eval.max_new_tokens, f"must leave room for a prompt in "
                          f"max_seq_len = {self.max_seq_len}")
        if self.tokenizer.train is not None and self.tokenizer.train.vocab_size < 257:
            raise invalid("tokenizer.train.vocab_size", self.tokenizer.train.vocab_size,
                          "must be > 256 (the byte alphabet and EOS)")
        if not self.sources:
            raise invalid("sources", self.sources, "no sources")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise invalid("sources", names, "source names must be unique")
        for i, s in enumerate(self.sources):
            if s.item_tokens and self.tokenizer.train is None:
                raise invalid(f"sources.{i}.item_tokens", True, "needs tokenizer.train: the trained BPE adds the item "
                              "and rating tokens (a given tokenizer's ids are fixed)")
            for o in s.exclude_users_of:
                if o not in names[:i]:
                    raise invalid(f"sources.{i}.exclude_users_of", o, "must name an earlier source")


def load(path=None, argv=()) -> BuildConfig:
    return config_lib.load(BuildConfig, path, argv)
