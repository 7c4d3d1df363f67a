"""Bring your own data: a build from your own prompt/response pairs and plain-text documents, without the
recommendation pipeline, written in the same format as `python -m data.prepare` so that finetune.py, train.py
and evaluate.py read it unchanged (data/README.md "Output layout").

    python -m data.prepare.own_files configs/data/own-pairs-example.yaml [--key=value ...]
    python finetune.py ... --data.path=out/data/<name>          # instructions/ (+ instructions_valid/)
    python train.py ... --data.path=out/data/<name>             # pretrain/ (+ pretrain_valid/), from documents
    python evaluate.py ... --benchmark out/data/<name>/eval/<name> --task text|yes_no --split test

Config (the project's one config system, config/__init__.py; `OwnFilesConfig` below is the schema):

    name: my-pairs                # required; out_dir defaults to out/data/<name>
    tokenizer: {path: x.json}     # required: a `tokenizers` JSON with <|endoftext|> (GPT-NeoX-20B's, or a build's BPE)
    max_seq_len: 2048             # a pair (or test example) whose prompt alone has >= this many tokens is skipped
                                  # and counted "prompt_too_long" (fine-tuning would drop it); longer pairs are kept
                                  # (fine-tuning cuts their response) and counted "longer_than_max_seq_len"
    valid_fraction: 0.05          # without a valid file: this share of the train file's records, seeded, is held out
    skip_bad: false               # false: the first malformed record stops the build, naming file:line
    pairs:                        # optional: prompt/response pairs (fine-tuning) and a test file (evaluation)
      train: pairs.jsonl          # required in the section
      valid: null                 # optional; else valid_fraction of train
      test: null                  # optional: written as the evaluation file
      format: auto                # auto | prompt_response | alpaca | fields
      prompt_field: prompt        # format fields: the keys holding prompt and response
      response_field: response
      alpaca_template: ...        # format alpaca, non-empty input (default: Stanford Alpaca's, below)
      alpaca_template_no_input: ...   # format alpaca, no or empty input
      eval_task: text             # text | yes_no: how the test file is scored
    documents:                    # optional: a plain-text corpus for (continued) pre-training
      train: docs.jsonl           # required in the section
      valid: null                 # optional; else valid_fraction of train
      text_field: text
    pack: {seq_len: null, rows_per_shard: 65536}   # packed row length (default max_seq_len), rows per shard file

At least one of `pairs` and `documents` is needed. Relative paths are resolved against the working directory.

Input files: JSONL (one JSON object per line; blank lines ignored; `.gz` allowed) or a JSON file holding one list
of objects (told apart by the first non-blank character, "["). Locations in messages are `file:line` for JSONL and
`file: record N` (counting from 1) for a JSON list.

Pair formats (`format: auto` looks at the first object of each file: "prompt" and "response" keys mean
prompt_response, else "instruction" and "output" mean alpaca; anything else is an error asking for `format`):
    prompt_response   {"prompt", "response"}: RecGPT's released instruction pairs; the prompt is used verbatim
    fields            the same with the keys `prompt_field` / `response_field`
    alpaca            {"instruction", "input" (optional), "output"}; the prompt is rendered with
                      `alpaca_template` when input is a non-empty string, else `alpaca_template_no_input`.
                      The defaults are Stanford Alpaca's prompts (its train.py PROMPT_DICT), ending "### Response:"
                      like RecGPT's own prompts (Alpaca-LoRA and TALLRec end "### Response:\n"; set the templates
                      to train that way). Templates are str.format strings with the fields {instruction} and
                      {input} (write a literal brace as {{ or }}).
The rendered prompt is what is trained on (tokens(prompt) + tokens(response) + EOS, loss on the response and EOS)
and, byte for byte, the prompt of the evaluation file: one function renders both.
A record's other keys are carried along under "fields" (an "id" key, string or integer, becomes the example id).

Outputs, in out_dir (meta.json written last, atomically; a reader trusts only what it lists):
    instructions/, instructions_valid/   pairs: data/formats/instructions.py (InstructionWriter); each JSONL record
                                         is {"id", "prompt", "response", "origin" (file:line), "fields"}
    pretrain/, pretrain_valid/           documents + EOS, packed into rows: data/formats/packed.py (PackWriter)
    eval/<name>/{eval_task}_test.jsonl   one example a line: "id" (the record's "id", else its record number
                                         in the file, from 1), "prompt", "response" (as written), "origin",
                                         "fields", and text: "target_text" (the response) | yes_no:
                                         "target_label" (1 yes, 0 no)
    eval/<name>/yes_no_answers.json      yes_no only: {"yes", "no"}, the answer strings to score (see below)
    tokenizer.json                       a copy of the tokenizer (training's export takes it from here)
    meta.json                            format, fingerprint, tokenizer {path, sha256, vocab_size, eos, eos_id},
                                         the sections above, eval, inputs {key: {path, sha256}}, counts, warnings,
                                         config
`counts` has, for every input file, read = kept + held_out + skipped (by reason), and the first message of each
reason: nothing is dropped silently.

yes_no: a test response is a label when, stripped of whitespace and of one trailing ".", it is "yes" or "no" in
any case; anything else is a bad record ("not_yes_no"). Scoring (evaluation/text_tasks.py) compares the model's
next-token probabilities of the first token of a yes and a no answer after the prompt; as prompt and response are
tokenised separately, those are the tokens of the answer strings encoded alone, and the strings must be spelled as
the training responses are. yes_no_answers.json holds the most frequent yes and no spellings of the training pairs'
responses (of the test file's when the training pairs have none, with a warning).

Bad records (not JSON, not an object, a missing or non-string field, an empty prompt / instruction / response /
text, an unparsable yes/no label, a duplicate test id): skip_bad false raises ValueError naming the location and
the problem; skip_bad true skips them, counted by reason and printed. A file that leaves no record is an error.
"""
import collections
import gzip
import hashlib
import json
import pathlib
import random
import shutil
import string
import sys
from dataclasses import dataclass, field
from typing import Iterator, Literal, Optional

import config as config_lib
from config import cli
from config import invalid
from data.formats.instructions import InstructionWriter
from data.prepare import build_command
from data.formats.instructions import section_meta as instructions_meta
from data.formats.packed import FORMAT, FORMAT_VERSION, PackWriter
from data.formats.packed import section_meta as packed_meta
from data.formats.tokenizer import EOS, load as load_tokenizer, sha256_file, token_dtype
from data.prepare.config import PackSection
from data.prepare.records import BadLines, DataError

ALPACA_TEMPLATE = ("Below is an instruction that describes a task, paired with an input that provides further "
                   "context. Write a response that appropriately completes the request.\n\n"
                   "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
ALPACA_TEMPLATE_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                            "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:")
ENCODE_BATCH = 512  # records tokenised together


# ---------------------------------------------------------------------------------------------------------------
# the config


def _template_fields(template: str) -> set:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


@dataclass
class TokenizerFile:
    path: str  # a tokenizers JSON with <|endoftext|>


@dataclass
class PairsSection:
    train: str
    valid: Optional[str] = None
    test: Optional[str] = None
    format: Literal["auto", "prompt_response", "alpaca", "fields"] = "auto"
    prompt_field: str = "prompt"
    response_field: str = "response"
    alpaca_template: str = ALPACA_TEMPLATE
    alpaca_template_no_input: str = ALPACA_TEMPLATE_NO_INPUT
    eval_task: Literal["text", "yes_no"] = "text"

    def __post_init__(self):
        if self.prompt_field == self.response_field:
            raise invalid("response_field", self.response_field, "must differ from prompt_field")
        for key, allowed in (("alpaca_template", {"instruction", "input"}),
                             ("alpaca_template_no_input", {"instruction"})):
            try:
                names = _template_fields(getattr(self, key))
            except ValueError as e:
                raise invalid(key, getattr(self, key), f"not a str.format template ({e}; write braces as {{{{ }}}})")
            if "instruction" not in names or not names <= allowed:
                raise invalid(key, getattr(self, key), f"must use {{instruction}}, and no field but {sorted(allowed)}")


@dataclass
class DocumentsSection:
    train: str
    valid: Optional[str] = None
    text_field: str = "text"


@dataclass
class OwnFilesConfig:
    name: str
    tokenizer: TokenizerFile
    out_dir: Optional[str] = None  # default out/data/<name>
    seed: int = 1234
    max_seq_len: int = 2048
    valid_fraction: float = 0.05
    skip_bad: bool = False
    pairs: Optional[PairsSection] = None
    documents: Optional[DocumentsSection] = None
    pack: PackSection = field(default_factory=PackSection)

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise invalid("name", self.name, "must be a non-empty folder name")
        self.out_dir = self.out_dir or f"out/data/{self.name}"
        if self.max_seq_len < 2:
            raise invalid("max_seq_len", self.max_seq_len, "must be >= 2")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise invalid("valid_fraction", self.valid_fraction, "must be in [0, 1)")
        self.pack.seq_len = self.pack.seq_len or self.max_seq_len
        if self.pack.seq_len < 1 or self.pack.rows_per_shard < 1:
            raise invalid("pack", config_lib.to_dict(self.pack), "seq_len and rows_per_shard must be positive")
        if self.pairs is None and self.documents is None:
            raise invalid("pairs", None, "give pairs (prompt/response files), documents (a text corpus) or both")


# ---------------------------------------------------------------------------------------------------------------
# reading records: every record read is kept, held out or skipped (counted by reason)


class Tally:
    """One input file's counts. `bad`: a malformed record, by the project's bad-input policy (records.BadLines: an
    error naming the place unless skip_bad, else counted by reason); `drop`: a well-formed record skipped by rule."""

    def __init__(self, key: str, path: pathlib.Path, skip_bad: bool):
        self.key, self.path = key, path
        self.lines = BadLines(skip_bad)
        self.read = self.kept = self.held_out = 0
        self.dropped: collections.Counter = collections.Counter()
        self.first_dropped: dict[str, str] = {}  # reason -> its first message
        self.notes: collections.Counter = collections.Counter()  # kept records worth knowing about

    def bad(self, where: str, reason: str, detail: str) -> None:
        self.lines.bad(where, None, reason, detail)

    def drop(self, reason: str, message: str) -> None:
        self.dropped[reason] += 1
        self.first_dropped.setdefault(reason, message)

    @property
    def skipped(self) -> collections.Counter:
        return self.lines.counts + self.dropped

    @property
    def first(self) -> dict:
        return {**self.lines.examples, **self.first_dropped}

    def as_dict(self) -> dict:
        out = {"file": str(self.path), "read": self.read, "kept": self.kept, "held_out": self.held_out,
               "skipped": dict(sorted(self.skipped.items())), "first_skipped": self.first}
        if self.notes:
            out["notes"] = dict(sorted(self.notes.items()))
        return out

    def line(self) -> str:
        skipped = ", ".join(f"{r} {n}" for r, n in sorted(self.skipped.items())) or "0"
        notes = "".join(f"; {r} {n}" for r, n in sorted(self.notes.items()))
        return (f"{self.key:<16} {self.path}: read {self.read}, kept {self.kept}, held out {self.held_out}, "
                f"skipped {skipped}{notes}")


class BadRecord(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class InputFile:
    """A JSONL or JSON-list file of records: `n` records (non-blank lines / list entries, bad ones included) and
    `records()` -> (where, position, object) for each JSON object; other records are reported to `tally`."""

    def __init__(self, key: str, path: str, skip_bad: bool):
        self.key, self.path = key, pathlib.Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{key}: {self.path} not found")
        self.tally = Tally(key, self.path, skip_bad)
        self._list = self._json_list()
        self.n = len(self._list) if self._list is not None else sum(1 for raw in self._open() if raw.strip())

    def _open(self):
        return gzip.open(self.path, "rb") if self.path.suffix == ".gz" else open(self.path, "rb")

    def _json_list(self) -> Optional[list]:
        with self._open() as f:
            while (c := f.read(1)) and c.isspace():
                pass
            if c != b"[":
                return None
        with self._open() as f:
            try:
                records = json.loads(f.read().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:  # one document: nothing to skip to
                raise DataError(f"{self.path}: not a valid JSON list ({e})") from None
        if not isinstance(records, list):
            raise DataError(f"{self.path}: a JSON file must hold one list of objects")
        return records

    def records(self) -> Iterator[tuple[str, int, dict]]:
        tally = self.tally
        if self._list is not None:
            numbered = ((f"{self.path}: record {i + 1}", i, r) for i, r in enumerate(self._list))
        else:
            numbered = self._jsonl()
        for where, position, record in numbered:
            tally.read += 1
            if isinstance(record, BadRecord):
                tally.bad(where, record.reason, record.detail)
            elif not isinstance(record, dict):
                tally.bad(where, "not_an_object", f"a JSON {type(record).__name__}, not an object")
            else:
                yield where, position, record

    def _jsonl(self):
        position = 0
        with self._open() as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8-sig"))
                except UnicodeDecodeError as e:
                    record = BadRecord("bad_encoding", str(e))
                except json.JSONDecodeError as e:
                    record = BadRecord("not_json", str(e))
                yield f"{self.path}:{lineno}", position, record
                position += 1

    def held_out(self, fraction: float, seed: int) -> set:
        """The positions of a seeded `fraction` of the records (at least one, never all; none for fraction 0)."""
        if fraction <= 0 or self.n < 2:
            return set()
        k = min(self.n - 1, max(1, round(self.n * fraction)))
        return set(random.Random(seed).sample(range(self.n), k))

    def sha256(self) -> str:
        return sha256_file(self.path)


def _batched(iterable, n: int):
    batch = []
    for x in iterable:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _string(record: dict, key: str, required: bool = True) -> Optional[str]:
    value = record.get(key)
    if value is None:
        if required:
            raise BadRecord("missing_field", f"no {key!r} (keys: {sorted(record)})")
        return None
    if not isinstance(value, str):
        raise BadRecord("not_a_string", f"{key!r} is a JSON {type(value).__name__}, not a string")
    return value


# ---------------------------------------------------------------------------------------------------------------
# pairs: one rendering for training and evaluation


def detect_format(record: dict, where: str) -> str:
    if "prompt" in record and "response" in record:
        return "prompt_response"
    if "instruction" in record and "output" in record:
        return "alpaca"
    raise DataError(f"{where}: cannot tell the pair format from the first record's keys {sorted(record)}: expected "
                    f"prompt/response or instruction/(input)/output; set pairs.format (fields, with prompt_field and "
                    f"response_field, reads any two keys)")


def render_pair(record: dict, fmt: str, p: PairsSection) -> tuple[str, str, list]:
    """record -> (prompt as trained and evaluated, response, the keys used); BadRecord when malformed."""
    if fmt == "alpaca":
        instruction, text_input = _string(record, "instruction"), _string(record, "input", required=False)
        response = _string(record, "output")
        if not instruction.strip():
            raise BadRecord("empty_instruction", "'instruction' is empty")
        if text_input:
            prompt = p.alpaca_template.format(instruction=instruction, input=text_input)
        else:
            prompt = p.alpaca_template_no_input.format(instruction=instruction)
        used = ["instruction", "input", "output"]
    else:
        keys = ("prompt", "response") if fmt == "prompt_response" else (p.prompt_field, p.response_field)
        prompt, response = _string(record, keys[0]), _string(record, keys[1])
        if not prompt:
            raise BadRecord("empty_prompt", f"{keys[0]!r} is empty")
        used = list(keys)
    if not response.strip():
        raise BadRecord("empty_response", "the response is empty")
    return prompt, response, used


def parse_yes_no(response: str) -> Optional[int]:
    """'Yes', ' no.', 'YES' -> 1 / 0; anything else -> None."""
    return {"yes": 1, "no": 0}.get(response.strip().removesuffix(".").strip().casefold())


def _examples(file: InputFile, p: PairsSection) -> Iterator[tuple[str, int, dict]]:
    """(where, position, {"id", "prompt", "response", "origin", "fields"}) for each well-formed pair of `file`."""
    fmt = None if p.format == "auto" else p.format
    for where, position, record in file.records():
        fmt = fmt or detect_format(record, where)
        try:
            prompt, response, used = render_pair(record, fmt, p)
        except BadRecord as e:
            file.tally.bad(where, e.reason, e.detail)
            continue
        own_id = record.get("id")
        has_id = isinstance(own_id, (str, int)) and not isinstance(own_id, bool)
        example_id = str(own_id) if has_id else str(position + 1)
        fields = {k: v for k, v in record.items() if k not in used and not (has_id and k == "id")}
        yield where, position, {"id": example_id, "prompt": prompt, "response": response,
                                "origin": where, "fields": fields}


def _encoded(tok, examples, texts=("prompt", "response")):
    """Batches of examples -> (where, position, example, {text key: ids}), in order."""
    for batch in _batched(examples, ENCODE_BATCH):
        ids = {key: [e.ids for e in tok.encode_batch([x[key] for _, _, x in batch], add_special_tokens=False)]
               for key in texts}
        for i, (where, position, example) in enumerate(batch):
            yield where, position, example, {key: ids[key][i] for key in texts}


def _too_long(tally: Tally, where: str, n_prompt: int, max_seq_len: int) -> bool:
    if n_prompt >= max_seq_len:
        tally.drop("prompt_too_long", f"{where}: prompt_too_long: {n_prompt} tokens >= max_seq_len {max_seq_len}")
        return True
    return False


class Build:
    """One run: the tokenizer, the output folder, and what meta.json will list."""

    def __init__(self, cfg: OwnFilesConfig):
        self.cfg, self.out_dir = cfg, pathlib.Path(cfg.out_dir)
        self.tok = load_tokenizer(cfg.tokenizer.path)
        self.eos_id = self.tok.token_to_id(EOS)
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.dtype = token_dtype(self.vocab_size)
        self.files: list[InputFile] = []
        self.sections: dict = {}
        self.evals: dict = {}
        self.warnings: list[str] = []

    def open(self, key: str, path: str) -> InputFile:
        f = InputFile(key, path, self.cfg.skip_bad)
        self.files.append(f)
        return f

    def _check_nonempty(self, file: InputFile, what: str) -> None:
        if file.tally.kept == 0:
            raise DataError(f"{file.key}: {file.path} leaves no {what} ({file.tally.line()})")

    # pairs ---------------------------------------------------------------------------------------------------
    def pairs(self, p: PairsSection) -> None:
        cfg = self.cfg
        train = self.open("pairs.train", p.train)
        valid = self.open("pairs.valid", p.valid) if p.valid else None
        held_out = set() if valid else train.held_out(cfg.valid_fraction, cfg.seed)
        prompts = {"train": set(), "valid": set()}  # hashes, for the overlap warnings
        answers = {1: collections.Counter(), 0: collections.Counter()}  # yes / no spellings of the training pairs
        writers = {"train": InstructionWriter(self.out_dir / "instructions", self.dtype, self.eos_id)}
        if valid or held_out:
            writers["valid"] = InstructionWriter(self.out_dir / "instructions_valid", self.dtype, self.eos_id)
        sources = [(train, lambda pos: "valid" if pos in held_out else "train")] + \
                  ([(valid, lambda pos: "valid")] if valid else [])
        for file, split_of in sources:
            for where, position, example, ids in _encoded(self.tok, _examples(file, p)):
                n_prompt = len(ids["prompt"])
                if _too_long(file.tally, where, n_prompt, cfg.max_seq_len):
                    continue
                if n_prompt + len(ids["response"]) + 1 > cfg.max_seq_len:
                    file.tally.notes["longer_than_max_seq_len"] += 1  # fine-tuning keeps its first tokens
                split = split_of(position)
                writers[split].add(example, ids["prompt"], ids["response"])
                prompts[split].add(hash(example["prompt"]))
                label = parse_yes_no(example["response"])
                if label is not None:
                    answers[label][example["response"]] += 1
                if split == "valid" and file is train:
                    file.tally.held_out += 1
                else:
                    file.tally.kept += 1
        n = {split: w.close() for split, w in writers.items()}
        self._check_nonempty(train, "training pair")
        if valid:
            self._check_nonempty(valid, "pair")
        self.sections["instructions"] = instructions_meta("instructions", n["train"], self.dtype, self.eos_id)
        if n.get("valid"):
            self.sections["instructions_valid"] = instructions_meta("instructions_valid", n["valid"], self.dtype,
                                                                       self.eos_id)
        elif "valid" in writers:
            shutil.rmtree(self.out_dir / "instructions_valid")
            self.warnings.append("pairs: the held-out validation records were all skipped; no instructions_valid")
        self._overlap("pairs.valid" if valid else "held-out validation pairs", prompts["valid"], prompts["train"])
        if p.test:
            self.test_file(p, prompts["train"], answers)

    def _overlap(self, what: str, prompts: set, train_prompts: set) -> None:
        shared = len(prompts & train_prompts)
        if shared:
            self.warnings.append(f"{what}: {shared} of {len(prompts)} distinct prompts are also training prompts")

    def test_file(self, p: PairsSection, train_prompts: set, answers: dict) -> None:
        cfg, test = self.cfg, self.open("pairs.test", p.test)
        folder = self.out_dir / "eval" / cfg.name
        folder.mkdir(parents=True, exist_ok=True)
        fname = f"{p.eval_task}_test.jsonl"
        ids_seen, prompts, test_answers = set(), set(), {1: collections.Counter(), 0: collections.Counter()}
        with open(folder / fname, "w", encoding="utf-8") as out:
            for where, _, example, ids in _encoded(self.tok, _examples(test, p), texts=("prompt",)):
                label = parse_yes_no(example["response"]) if p.eval_task == "yes_no" else None
                if example["id"] in ids_seen:
                    test.tally.bad(where, "duplicate_id", f"id {example['id']!r} seen before")
                    continue
                if p.eval_task == "yes_no" and label is None:
                    test.tally.bad(where, "not_yes_no", f"response {example['response'][:80]!r} is not yes/no")
                    continue
                if _too_long(test.tally, where, len(ids["prompt"]), cfg.max_seq_len):
                    continue
                if p.eval_task == "yes_no":
                    example["target_label"] = label
                    test_answers[label][example["response"]] += 1
                else:
                    example["target_text"] = example["response"]
                ids_seen.add(example["id"])
                prompts.add(hash(example["prompt"]))
                out.write(json.dumps(example, ensure_ascii=False, sort_keys=True) + "\n")
                test.tally.kept += 1
        self._check_nonempty(test, "test example")
        self._overlap("pairs.test", prompts, train_prompts)
        entry = {"dir": f"eval/{cfg.name}", "task": p.eval_task, "files": {fname: test.tally.kept}}
        if p.eval_task == "yes_no":
            entry["answers"] = self._answers(answers, test_answers)
            (folder / "yes_no_answers.json").write_text(json.dumps(entry["answers"], indent=1) + "\n")
            entry["answers_file"] = f"eval/{cfg.name}/yes_no_answers.json"
        self.evals[cfg.name] = entry

    def _answers(self, train: dict, test: dict) -> dict:
        """The yes and no strings to score: the training responses' most frequent spellings."""
        if not (train[1] and train[0]):
            self.warnings.append("yes_no: the training pairs have no yes and no responses to learn the answer "
                                 "tokens from; yes_no_answers.json holds the test file's spellings")
            train = test
        positives, negatives = sum(test[1].values()), sum(test[0].values())
        if not (positives and negatives):
            self.warnings.append(f"yes_no: the test file has {positives} yes and {negatives} no examples; AUC needs "
                                 f"both")
        return {"yes": train[1].most_common(1)[0][0] if train[1] else "Yes",
                "no": train[0].most_common(1)[0][0] if train[0] else "No",
                "test_positives": positives, "test_negatives": negatives}

    # documents ----------------------------------------------------------------------------------------------
    def documents(self, d: DocumentsSection) -> None:
        cfg = self.cfg
        train = self.open("documents.train", d.train)
        valid = self.open("documents.valid", d.valid) if d.valid else None
        held_out = set() if valid else train.held_out(cfg.valid_fraction, cfg.seed)

        def writer(folder):
            return PackWriter(self.out_dir / folder, folder, cfg.pack.seq_len, self.dtype, cfg.pack.rows_per_shard,
                              self.eos_id)

        writers = {"pretrain": writer("pretrain")}
        if valid or held_out:
            writers["pretrain_valid"] = writer("pretrain_valid")
        sources = [(train, lambda pos: "pretrain_valid" if pos in held_out else "pretrain")] + \
                  ([(valid, lambda pos: "pretrain_valid")] if valid else [])
        for file, folder_of in sources:
            for where, position, example, ids in _encoded(self.tok, self._texts(file, d.text_field), ("text",)):
                folder = folder_of(position)
                writers[folder].add(ids["text"])  # EOS appended by the writer
                if folder == "pretrain_valid" and file is train:
                    file.tally.held_out += 1
                else:
                    file.tally.kept += 1
        shards = {folder: w.close() for folder, w in writers.items()}
        self._check_nonempty(train, "document")
        if valid:
            self._check_nonempty(valid, "document")
        for folder, w in writers.items():
            if w.documents:
                self.sections[folder] = packed_meta(w, shards[folder], folder)

    @staticmethod
    def _texts(file: InputFile, text_field: str):
        for where, position, record in file.records():
            try:
                text = _string(record, text_field)
                if not text.strip():
                    raise BadRecord("empty_text", f"{text_field!r} is empty")
            except BadRecord as e:
                file.tally.bad(where, e.reason, e.detail)
                continue
            yield where, position, {"text": text}

    # meta.json -----------------------------------------------------------------------------------------------
    def meta(self) -> dict:
        cfg = self.cfg
        tok_path = pathlib.Path(cfg.tokenizer.path)
        tokenizer = {"path": str(tok_path), "sha256": sha256_file(tok_path), "vocab_size": self.vocab_size,
                     "eos": EOS, "eos_id": self.eos_id}
        inputs = {f.key: {"path": str(f.path), "sha256": f.sha256()} for f in self.files}
        config = config_lib.to_dict(cfg)
        fingerprint = hashlib.sha256(json.dumps(
            {"config": config, "inputs": inputs, "tokenizer": tokenizer["sha256"], "format_version": FORMAT_VERSION},
            sort_keys=True).encode()).hexdigest()
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "fingerprint": fingerprint, "builder": "own_files",
                "tokenizer": tokenizer, **self.sections, "eval": self.evals, "inputs": inputs,
                "counts": {f.key: f.tally.as_dict() for f in self.files}, "warnings": self.warnings,
                "config": config}


OUTPUTS = ("instructions", "instructions_valid", "pretrain", "pretrain_valid")


def build(cfg: OwnFilesConfig, log=print) -> dict:
    """Write the build's outputs and meta.json (last) into cfg.out_dir -> meta."""
    b = Build(cfg)  # the tokenizer loads, and every input exists, before anything old is removed
    inputs = [(f"{name}.{split}", getattr(section, split)) for name, section in (("pairs", cfg.pairs),
              ("documents", cfg.documents)) if section is not None for split in ("train", "valid", "test")
              if getattr(section, split, None)]
    missing = [f"{key}: {path}" for key, path in inputs if not pathlib.Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"input file(s) not found: {'; '.join(missing)}")
    out_dir = pathlib.Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)  # until the new one is written, the build is not complete
    for old in [out_dir / name for name in OUTPUTS] + [out_dir / "eval" / cfg.name]:
        if old.exists():
            shutil.rmtree(old)
    if cfg.pairs is not None:
        b.pairs(cfg.pairs)
    if cfg.documents is not None:
        b.documents(cfg.documents)
    tok_copy = out_dir / "tokenizer.json"  # training's export copies the tokenizer from here (copy_tokenizer)
    if not (tok_copy.exists() and tok_copy.samefile(cfg.tokenizer.path)):
        shutil.copyfile(cfg.tokenizer.path, tok_copy)
    meta = b.meta()
    tmp = out_dir / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    tmp.replace(out_dir / "meta.json")
    for f in b.files:
        log(f.tally.line())
        for message in f.tally.first.values():
            log(f"  first skipped: {message}")
    for w in b.warnings:
        log(f"WARNING: {w}")
    written = ", ".join(f"{k} ({v.get('examples', v.get('rows'))} {'pairs' if 'examples' in v else 'rows'})"
                        for k, v in b.sections.items())
    log(f"wrote {out_dir}: {written}" + "".join(f", eval/{k}/{f}" for k, v in b.evals.items() for f in v["files"]))
    return meta


def main(argv=None) -> int:
    return build_command(OwnFilesConfig, build, "own_files", __doc__, argv)


if __name__ == "__main__":
    sys.exit(cli.run(main))
