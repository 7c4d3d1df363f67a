"""evaluate.py's config: one dataclass schema read by the project's config system (config/__init__.py), from a
YAML file, `--section.key=value` overrides, and evaluate.py's own flags (`--batch-size 8`), which are overrides too.

    python evaluate.py configs/eval/beauty-next-item.yaml --checkpoint=out/recgpt-7b/model --batch-size 16
"""
from dataclasses import dataclass, field
from typing import Literal, Optional

import config as config_lib
from config import invalid

TASKS = ("next_item", "rating", "text", "yes_no")


@dataclass
class NextItemSection:
    num_beams: int = 10
    num_return_sequences: int = 10
    length_penalty: float = 0.0  # 0: keep and rank beams by cumulative log-prob; HF's default is 1.0
    embedder: str = "all-MiniLM-L6-v2"  # Sentence-Transformers name or local path
    embedding_cache: str = "out/embedding_cache"  # folder for catalog embeddings
    constrained: bool = False  # also run trie-constrained beam search, reported beside the grounded results


@dataclass
class RatingSection:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    temperature: float = 1.0
    top_p: float = 0.9
    top_k: int = 50
    fallback_rating: Optional[float] = None  # unparsable outputs; default: the training split's mean (train_stats)
    scale: Optional[list[float]] = None  # [low, high] predictions are clipped to; default: the build's

    def __post_init__(self):
        if self.scale is not None and (len(self.scale) != 2 or self.scale[0] >= self.scale[1]):
            raise invalid("scale", self.scale, "must be [low, high] with low < high")
        if not self.seeds:
            raise invalid("seeds", self.seeds, "needs at least one seed")


@dataclass
class YesNoSection:
    # the answers as the training responses spell them (P(yes) compares their first tokens); default: the build's
    # yes_no_answers.json (data/prepare/own_files.py), else "Yes" / "No"
    yes: Optional[str] = None
    no: Optional[str] = None


@dataclass
class EvalConfig:
    checkpoint: Optional[str] = None  # our model folder or a Hugging Face MPT folder (required)
    # causal: the instruction prompt, continued; infill (next_item; docs/recsysllm.md): the history as a
    # pre-training document + [gMASK], one span decoded with the dynamic position mechanism
    objective: Literal["causal", "infill"] = "causal"
    benchmark: Optional[str] = None  # folder with {task}_{split}.jsonl (and catalog.jsonl for next_item; required)
    task: Optional[Literal["next_item", "rating", "text", "yes_no"]] = None  # required
    out: Optional[str] = None  # output folder (required)
    tokenizer: Optional[str] = None  # tokenizers JSON; default: CHECKPOINT/tokenizer.json
    split: str = "test"
    batch_size: int = 8  # prompts per generate call (beams run together)
    device: Optional[str] = None  # default: cuda when available, else cpu
    dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None  # default: the checkpoint's
    verify: Literal["full", "fast"] = "full"  # checkpoint integrity: full = sha256 of each shard; fast = sizes, headers
    limit: Optional[int] = None  # only the first N examples (a quick look)
    sample: Optional[int] = None  # a seeded random sample of N examples (the same for every model and baseline)
    sample_seed: int = 0
    max_new_tokens: Optional[int] = None  # default: 128 (next_item), 16 (rating), 64 (text)
    stop: list[str] = field(default_factory=list)  # stop strings; EOS always stops
    next_item: NextItemSection = field(default_factory=NextItemSection)
    rating: RatingSection = field(default_factory=RatingSection)
    yes_no: YesNoSection = field(default_factory=YesNoSection)

    def __post_init__(self):
        for key in ("checkpoint", "benchmark", "task", "out"):
            if getattr(self, key) is None:
                raise invalid(key, None, f"is required (in the config file, or --{key}=...)")
        for key, value in (("batch_size", self.batch_size), ("limit", self.limit), ("sample", self.sample),
                           ("max_new_tokens", self.max_new_tokens), ("next_item.num_beams", self.next_item.num_beams),
                           ("next_item.num_return_sequences", self.next_item.num_return_sequences)):
            if value is not None and value < 1:
                raise invalid(key, value, "must be >= 1")
        if self.objective == "infill" and self.task != "next_item":
            raise invalid("objective", self.objective, f"infill is evaluated on next_item only, not {self.task}")
        n = self.next_item
        if n.num_return_sequences > n.num_beams:
            raise invalid("next_item.num_return_sequences", n.num_return_sequences,
                          f"must be <= next_item.num_beams = {n.num_beams}")
        r = self.rating
        for key, ok, why in (("temperature", r.temperature > 0, "must be > 0"), ("top_p", 0 < r.top_p <= 1,
                             "must be in (0, 1]"), ("top_k", r.top_k >= 0, "must be >= 0 (0: no top-k)")):
            if not ok:
                raise invalid(f"rating.{key}", getattr(r, key), why)


def load_eval_config(path=None, argv=(), flags: dict = None) -> EvalConfig:
    return config_lib.load(EvalConfig, path, argv, flags=flags)
