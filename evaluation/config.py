"""evaluate.py's config: one dataclass schema read by the project's config system (config/__init__.py), from a
YAML file, `--section.key=value` overrides, and evaluate.py's own flags (`--batch-size 8`), which are overrides too.

    python evaluate.py configs/eval/beauty-next-item.yaml --checkpoint=out/recgpt-7b/model --batch-size 16
    python evaluate.py configs/eval/beauty-next-item.yaml --checkpoint=out/recgpt-7b/model --token-budget 40000
"""
from dataclasses import dataclass, field
from typing import Literal, Optional

import config as config_lib
from config import invalid

TASKS = ("next_item", "rating", "text", "yes_no", "p5")
RATING_FORMAT = "{value:.1f}/{high:.1f}"  # RecGPT's rating responses, "4.0/5.0" (data/prepare/templates.py format_rating)
P5_RATING_FORMAT = "{value:.1f}"  # P5's rating targets, "4.0" (one decimal: 41 classes 1.0 ... 5.0, p5.md §1.2)


@dataclass
class NextItemSection:
    num_beams: int = 10
    num_return_sequences: int = 10
    length_penalty: float = 0.0  # 0: keep and rank beams by cumulative log-prob; HF's default is 1.0
    embedder: str = "all-MiniLM-L6-v2"  # Sentence-Transformers name or local path
    embedding_cache: str = "out/embedding_cache"  # folder for catalog embeddings
    constrained: bool = False  # also run trie-constrained beam search, reported beside the grounded results
    # beams: generate (num_beams), ground each output to the catalog; candidates: no generation, each example's
    # "candidates" (a build with eval.negatives: the target + N sampled negatives) ranked by the log-likelihood of their
    # catalog text after the prompt, P5's direct recommendation (evaluation/scoring.py rank_candidates_by_likelihood)
    decoding: Literal["beams", "candidates"] = "beams"
    # a causal model's prompt: the `instruction` prompt (an instruction-tuned model), or, with decoding=candidates, the
    # history as a pre-training `document` continued by a newline, each candidate scored as the document line that
    # would show it (catalog "line"): a pre-trained model read in its own format. An infilling model's form is
    # infill_prompt
    prompt: Literal["instruction", "document"] = "instruction"


@dataclass
class RatingSection:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    temperature: float = 1.0
    top_p: float = 0.9
    top_k: int = 50
    fallback_rating: Optional[float] = None  # unparsable outputs; default: the training split's mean (train_stats)
    scale: Optional[list[float]] = None  # [low, high] predictions are clipped to; default: the build's
    # sample: the paper's sampling (seeds, temperature, top_p, top_k); greedy: greedy decoding, parsed; expected: the
    # expected rating under the model's distribution over the rating strings it was trained to write (`values`,
    # written by `value_format`, each followed by EOS), with the most likely string's rating ("greedy over the set")
    # reported beside (evaluation/scoring.py rating_over_set)
    decoding: Literal["sample", "greedy", "expected"] = "sample"
    values: Optional[list[float]] = None  # the set's ratings; default: every integer of the scale (p5: 1.0, 1.1 .. 5.0)
    value_format: Optional[str] = None  # Python format of {value}, {high}; default RATING_FORMAT (p5: P5_RATING_FORMAT)
    p5_filter: bool = False  # also report P5's metric over the outputs written "1.0" .. "4.9" only, with the count

    def __post_init__(self):
        if self.scale is not None and (len(self.scale) != 2 or self.scale[0] >= self.scale[1]):
            raise invalid("scale", self.scale, "must be [low, high] with low < high")
        if not self.seeds:
            raise invalid("seeds", self.seeds, "needs at least one seed")
        if self.values is not None and not self.values:
            raise invalid("values", self.values, "needs at least one rating")
        if self.value_format is not None:
            try:
                self.value_format.format(value=4.0, high=5.0)
            except (KeyError, IndexError, ValueError) as e:
                raise invalid("value_format", self.value_format, f"is not a format of {{value}} and {{high}} ({e})")


@dataclass
class YesNoSection:
    # the answers as the training responses spell them (P(yes) compares their first tokens); default: the build's
    # yes_no_answers.json (data/prepare/own_files.py), else "Yes" / "No"
    yes: Optional[str] = None
    no: Optional[str] = None


@dataclass
class P5Section:
    # template ids to evaluate, e.g. [2-3, 2-13]; default: every BENCHMARK/p5/<template>_<split>.jsonl present
    templates: Optional[list[str]] = None
    # sequential: exact_id = the output must be an item id (P5's parsing); grounding = embedding + FAISS top-1 on
    # BENCHMARK/catalog.jsonl (next_item's); auto = exact_id when the targets are written as the item ids
    item_match: Literal["auto", "exact_id", "grounding"] = "auto"
    max_new_tokens_text: int = 64  # explanation and review generation (greedy, as P5's paper)


@dataclass
class EvalConfig:
    checkpoint: Optional[str] = None  # our model folder or a Hugging Face MPT folder (required)
    # causal: the instruction prompt, continued; infill (docs/recsysllm.md): a prompt + [gMASK], one span decoded
    # with the dynamic position mechanism
    objective: Literal["causal", "infill"] = "causal"
    # infill's prompt: the history as a pre-training `document` (a pre-trained model; next_item only) or the
    # instruction `prompt` (a model fine-tuned with finetune.py --infill.objective=infill); default: document for
    # next_item, prompt for rating
    infill_prompt: Optional[Literal["document", "prompt"]] = None
    benchmark: Optional[str] = None  # folder with {task}_{split}.jsonl (and catalog.jsonl for next_item; required)
    task: Optional[Literal["next_item", "rating", "text", "yes_no", "p5"]] = None  # required; p5: BENCHMARK/p5/*
    out: Optional[str] = None  # output folder (required)
    tokenizer: Optional[str] = None  # tokenizers JSON; default: CHECKPOINT/tokenizer.json
    split: str = "test"
    # prompts per generate call (beams run together): an upper bound; default 8, or no bound when
    # generate_token_budget is set (then the budget alone sizes the batches)
    batch_size: Optional[int] = None
    device: Optional[str] = None  # default: cuda when available, else cpu
    dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None  # default: the checkpoint's
    verify: Literal["full", "fast"] = "full"  # checkpoint integrity: full = sha256 of each shard; fast = sizes, headers
    # the model's context here (its config key max_seq_len), default the checkpoint's. ALiBi has no position table,
    # so a longer one changes no weight and only lifts the length checks (MPT's extrapolation); e.g. Beauty's direct
    # prompts list 100 titles, and some, with their longest candidate, pass the 2,048 tokens the model trained on
    max_seq_len: Optional[int] = None
    limit: Optional[int] = None  # only the first N examples (a quick look)
    sample: Optional[int] = None  # a seeded random sample of N examples (the same for every model and baseline)
    sample_seed: int = 0
    max_new_tokens: Optional[int] = None  # default: 128 (next_item), 16 (rating), 64 (text)
    stop: list[str] = field(default_factory=list)  # stop strings; EOS always stops
    # likelihood scoring (candidates, rating sets): positions (rows x tokens) of one batch's KV cache; at 7B in bf16
    # a position of every layer's keys and values is 0.5 MiB (evaluation/scoring.py, evaluation/memory.py)
    score_token_budget: int = 16384
    # generation (next_item, rating, text, P5's generating families; yes/no's forward pass too): KV-cache positions of
    # one generate call, rows x length = prompts x beams x (longest prompt + max_new_tokens - 1); a prompt over it runs
    # alone. Default: batches of batch_size prompts. Sizes per GPU: docs/evaluation_memory.md (evaluation/memory.py)
    generate_token_budget: Optional[int] = None
    next_item: NextItemSection = field(default_factory=NextItemSection)
    rating: RatingSection = field(default_factory=RatingSection)
    yes_no: YesNoSection = field(default_factory=YesNoSection)
    p5: P5Section = field(default_factory=P5Section)

    def __post_init__(self):
        for key in ("checkpoint", "benchmark", "task", "out"):
            if getattr(self, key) is None:
                raise invalid(key, None, f"is required (in the config file, or --{key}=...)")
        for key, value in (("batch_size", self.batch_size), ("limit", self.limit), ("sample", self.sample),
                           ("max_seq_len", self.max_seq_len),
                           ("max_new_tokens", self.max_new_tokens), ("next_item.num_beams", self.next_item.num_beams),
                           ("score_token_budget", self.score_token_budget),
                           ("generate_token_budget", self.generate_token_budget),
                           ("p5.max_new_tokens_text", self.p5.max_new_tokens_text),
                           ("next_item.num_return_sequences", self.next_item.num_return_sequences)):
            if value is not None and value < 1:
                raise invalid(key, value, "must be >= 1")
        if self.batch_size is None and self.generate_token_budget is None:
            self.batch_size = 8  # the prompt count that sized every batch before generate_token_budget
        if self.objective == "infill" and self.task not in ("next_item", "rating", "p5"):
            raise invalid("objective", self.objective, f"infill is evaluated on next_item, rating and p5, not "
                          f"{self.task}")
        if self.infill_prompt == "document" and self.task != "next_item":
            raise invalid("infill_prompt", self.infill_prompt, "the pre-training document form exists for next_item "
                          "only (its answer is the next item line)")
        n = self.next_item
        if n.decoding == "candidates" and n.constrained:
            raise invalid("next_item.constrained", True, "constrains beam search, and next_item.decoding=candidates "
                          "generates nothing (it scores the candidates)")
        if n.prompt == "document" and (n.decoding != "candidates" or self.objective != "causal"):
            raise invalid("next_item.prompt", n.prompt, "the document form scores a causal model's candidates "
                          "(next_item.decoding=candidates; an infilling model's form is infill_prompt)")
        if n.decoding == "candidates" and self.objective == "infill":
            raise invalid("next_item.decoding", n.decoding, "ranks a causal model's responses; a blank-infilling "
                          "model's candidates are ranked by task p5 (direct templates)")
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
