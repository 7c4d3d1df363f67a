"""Evaluation files of a data build (data/README.md "Evaluation files"): `eval/<source>/{task}_{split}.jsonl`,
`catalog.jsonl` and `train_stats.json`. Read by evaluate.py and evaluation/baselines.py, so that both see the
same examples; the build (data/prepare/eval_prompts.py) writes them. The tasks "text" and "yes_no" are the test
files of a build from your own pairs (data/prepare/own_files.py), scored by evaluation/text_tasks.py."""
import json
import pathlib
import random
from typing import Optional

# every domain's ratings start at 1 (MovieLens, Amazon, Yelp: 1-5; anime, BookCrossing: 1-10); the top of the scale
# is the domain's (data/prepare/templates.py) and train_stats.json records both as "rating_scale"
RATING_LOW = 1.0
DEFAULT_RATING_SCALE = (1.0, 5.0)  # for a train_stats.json written before it recorded its scale

REQUIRED_KEYS = {"next_item": ("user", "prompt", "target_item_id"), "rating": ("user", "prompt", "target_rating"),
                 # your own pairs' test file (data/prepare/own_files.py): generated text, or P(yes) vs P(no)
                 "text": ("id", "prompt", "target_text"), "yes_no": ("id", "prompt", "target_label")}


def item_id_order(item_id: str) -> tuple:
    """Sort key for item ids (the catalog's order): numeric ids by value first ("2" < "10"), then the others as
    strings."""
    return (not item_id.isdigit(), int(item_id) if item_id.isdigit() else 0, item_id)


def _checked_records(path: pathlib.Path, check, limit=None) -> list:
    """The JSON records of a JSONL file (blank lines skipped), each passed to check(record, where) which raises
    naming `where` (file:line); at most `limit`; an empty file is an error."""
    examples = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not JSON ({e})") from None
            check(record, f"{path}:{lineno}")
            examples.append(record)
            if limit is not None and len(examples) >= limit:
                break
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


def read_examples(path: pathlib.Path, task: str, limit=None) -> list:
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {path} not found (run `python -m data.prepare`, or check "
                                f"--benchmark/--task/--split)")

    def check(record, where):
        missing = [k for k in REQUIRED_KEYS[task] if record.get(k) is None]
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing} for task '{task}'")
        label = record.get("target_label")
        if task == "yes_no" and not (type(label) is int and label in (0, 1)):
            raise ValueError(f"{where}: target_label must be 0 (no) or 1 (yes), got {label!r}")
    return _checked_records(path, check, limit)


def read_catalog(path: pathlib.Path, field: str = "text") -> tuple:
    """(item ids, their `field`): "text", the next-item rendering, or "line", the pre-training line rendering."""
    if not path.is_file():
        raise FileNotFoundError(f"catalog {path} not found (next_item needs BENCHMARK/catalog.jsonl)")
    ids, texts = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            for key in ("item_id", field):
                if not isinstance(record.get(key), str):
                    raise ValueError(f"{path}:{lineno}: key '{key}' must be a string, got {record.get(key)!r}")
            ids.append(record["item_id"])
            texts.append(record[field])
    return ids, texts


def read_entity_pool(path: pathlib.Path) -> list:
    """The catalog's items as the training texts show them, blank infilling's entity pool (docs/recsysllm.md): the
    document `line` of a `python -m data.prepare` catalog, or the `text` of a P5 prompt build's (no documents)."""
    with open(path, encoding="utf-8") as f:
        first = json.loads(next((line for line in f if line.strip()), "{}"))
    return read_catalog(path, "line" if "line" in first else "text")[1]


def sample_examples(examples: list, n: Optional[int], seed: int = 0) -> list:
    """A seeded random sample of n examples, in file order; all of them when n is None or >= len(examples)."""
    if n is None or n >= len(examples):
        return examples
    if n <= 0:
        raise ValueError(f"--sample must be positive, got {n}")
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def read_train_stats(benchmark_dir) -> dict:
    """BENCHMARK/train_stats.json: the training split's per-item counts and ratings (data/prepare/plan.py)."""
    path = pathlib.Path(benchmark_dir) / "train_stats.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: rebuild the data with `python -m data.prepare` (it writes "
                                f"train_stats.json beside the evaluation files)")
    stats = json.loads(path.read_text())
    for key in ("interactions", "mean_rating", "items"):
        if key not in stats:
            raise ValueError(f"{path}: key '{key}' missing")
    stats.setdefault("rating_scale", list(DEFAULT_RATING_SCALE))
    return stats


# P5's task families (data/prepare/p5_tasks.py): eval/<source>/p5/<template>_<split>.jsonl. Every record has
# "user", "family", "template", "seen", "prompt" and "target_text" (what P5 trains the model to output); the keys
# below by family (direct by template: candidate lists 5-5..5-8, yes/no prompts 5-1..5-4).
P5_COMMON_KEYS = ("user", "family", "template", "seen", "prompt", "target_text")
P5_KEYS = {"rating": ("target_rating",), "sequential": ("target_item_id", "history_item_ids"),
           "explanation": (), "review": (), "direct_candidates": ("target_item_id", "candidates", "candidate_texts"),
           "direct_yes_no": ("target_item_id", "candidates", "candidate_prompts", "yes", "no")}
P5_RATING_TEMPLATES = ("1-1", "1-2", "1-5", "1-6", "1-7", "1-10", "4-2", "4-4")  # targets that are star ratings


def p5_record_kind(record: dict) -> str:
    """The key set of a P5 evaluation record: its family, the direct family split by template, and the review
    family's rating templates (4-2, 4-4) as "rating"."""
    family, template = record.get("family"), str(record.get("template"))
    if family == "direct":
        return "direct_yes_no" if template in ("5-1", "5-2", "5-3", "5-4") else "direct_candidates"
    if template in P5_RATING_TEMPLATES:
        return "rating"
    return family


def read_p5_examples(path, limit=None) -> list:
    """The records of one P5 evaluation file, each checked for its family's keys (an error names file:line)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"P5 evaluation file {path} not found (run `python -m data.prepare.p5_tasks`)")

    def check(record, where):
        kind = p5_record_kind(record)
        if kind not in P5_KEYS:
            raise ValueError(f"{where}: unknown family {record.get('family')!r}")
        missing = [k for k in P5_COMMON_KEYS + P5_KEYS[kind] if record.get(k) is None]
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing} for P5 {kind} records")
        n = len(record.get("candidates", ()))
        for key in ("candidate_texts", "candidate_prompts"):
            if key in record and len(record[key]) != n:
                raise ValueError(f"{where}: {len(record[key])} {key} for {n} candidates")
    return _checked_records(path, check, limit)


def p5_files(benchmark_dir) -> dict:
    """{(template, split): path} of a build's P5 evaluation files (BENCHMARK/p5/<template>_<split>.jsonl)."""
    folder = pathlib.Path(benchmark_dir) / "p5"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found: build P5's tasks with `python -m data.prepare.p5_tasks`")
    out = {}
    for p in sorted(folder.glob("*_*.jsonl")):
        template, split = p.stem.rsplit("_", 1)
        out[(template, split)] = p
    return out
