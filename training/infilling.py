"""The blank-infilling objective's batches (RecSysLLM on MPT; docs/recsysllm.md): packed pre-training rows of a data
build -> Part A + Part B examples (data/formats/infilling.py) -> padded tensors for the shared training loop.

Entities come from the renderer's layout, not from guessing: a pre-training document is a header line, a blank
line, then one item per line (data/prepare/templates.py; texts are whitespace-folded, so an item never holds a
newline). With the line-local tokenizers of our builds (GPT-NeoX-20B, the trained BPE) a line's tokens are exactly
the tokens between two newline tokens, so every item line is one entity; the header (the line before a blank line)
is text, and so are a row's first and last lines, pieces of lines the build's fixed-length rows cut
(data/formats/infilling.py row_lines).

Per example (seeded by the run's seed and the example index, so a resumed run builds the same batches):
- behaviour sampling (optional; RecSysLLM's long/medium/short-term 10/30/60, windows undefined in the paper): the
  row's item lines are cut into three chronological windows, the oldest `windows[0]` share (long term), the next
  `windows[1]` (medium), the newest rest (short), and a history of `keep` of its lines takes shares[0..2] of them
  from each window, in order;
- the mask level by the mixture (GLM-10B: 50% [MASK] spans of Poisson(3) units until >= 15%, 30% [sMASK] whole
  lines until >= 15%, 20% [gMASK] the newest item of the row's last whole history: next-item prediction, as
  evaluate.py asks it);
- ablations: entity_masking off (GLM's token spans: every token a unit), chronological off (Part B spans shuffled),
  intra off (all intra ids 0), behaviour sampling off.

Fine-tuning (finetune.py) takes prompt/response pairs as GLM fine-tunes generation: `PairInfillCollator`.

Batch: input_ids, labels, positions, intra_positions, prefix_end, attention_mask. The loop's loss is the usual
shifted one (logits[:, :-1] against labels[:, 1:]), so labels are the aligned targets moved one slot right and
every example ends in one padding slot: its last [END] target stays in the loss.
"""
import math
import random
from dataclasses import dataclass

import numpy as np
import torch

from data.formats.infilling import (IGNORE_INDEX, EntityTrie, Infilled, infill, pair_infilled, prompt_entities,
                                    record_entities, row_lines, sample_spans, units_of)


@dataclass
class InfillOptions:
    mix: tuple = (0.5, 0.3, 0.2)  # [MASK] spans, [sMASK] lines, [gMASK] suffix
    ratio: float = 0.15
    poisson_lambda: float = 3.0
    position_scheme: str = "continuation"  # or "glm"
    entity_masking: bool = True
    chronological: bool = True
    intra: bool = True
    behaviour_sampling: bool = False
    shares: tuple = (0.1, 0.3, 0.6)  # long, medium, short term
    windows: tuple = (0.5, 0.3)  # oldest share of a history that is long term, then medium; the rest is short


def behaviour_sample(n: int, keep: int, rng: random.Random, shares, windows) -> list[int]:
    """Indices (sorted) of `keep` of n chronological items: shares of them from the long-, medium- and short-term
    windows (any window's shortfall is filled from the newer ones)."""
    if keep >= n:
        return list(range(n))
    bounds = [0, round(windows[0] * n), round((windows[0] + windows[1]) * n), n]
    chosen, carry = [], 0
    for w, share in enumerate(shares):
        pool = list(range(bounds[w], bounds[w + 1]))
        want = min(len(pool), round(share * keep) + carry) if w < 2 else keep - len(chosen)
        want = min(want, len(pool))
        carry = round(share * keep) + carry - want if w < 2 else 0
        chosen += rng.sample(pool, want)
    return sorted(chosen)


def _infill_setup(cfg, config) -> tuple:
    """What both collators need from the data build at data.path, for a model with this MPTConfig: the infilling
    token ids (added to the build's tokenizer, data/formats/tokenizer.py), the newline token that separates lines,
    the build's meta.json, the entity pool of the intra rule and the tokenizer. The pool is the one the decoder uses,
    the catalogs' items as the texts show them (data/formats/evalfiles.py read_entity_pool), when the build has
    benchmark catalogs (a line's own rating or review then restarts at intra 1, as when decoding); otherwise None
    (each row's own item lines)."""
    from data.formats.packed import read_meta
    from data.formats.tokenizer import add_infill_tokens, load_build_tokenizer, newline_id

    if not config.intra_positions:
        raise ValueError("infill.objective = infill needs a model with an intra-position table: set "
                         "model.overrides: {intra_positions: 64} (zero-initialised; docs/recsysllm.md)")
    meta_path, meta = read_meta(cfg.data.path)
    tok = load_build_tokenizer(cfg.data.path)
    ids = add_infill_tokens(tok, config.vocab_size)
    newline = newline_id(tok, f"{cfg.data.path}'s tokenizer")
    pool = None
    catalogs = [meta_path.parent / e["catalog"] for e in (meta.get("eval") or {}).values() if e.get("catalog")]
    if catalogs:  # the decoder's entity pool (evaluation/infill_prompts.py): the items as the texts show them
        from data.formats.evalfiles import read_entity_pool

        lines = [line for c in catalogs for line in read_entity_pool(c)]
        pool = EntityTrie([e.ids for e in tok.encode_batch(lines, add_special_tokens=False)])
    return ids, newline, meta, pool, tok


def collator_for(cfg, config, rows_len: int) -> "InfillCollator":
    """train.py's collator (TrainConfig `infill` section) on the packed rows of the build at data.path."""
    ids, newline, meta, pool, _ = _infill_setup(cfg, config)
    o = cfg.infill
    opts = InfillOptions(tuple(o.mix), o.ratio, o.poisson_lambda, o.position_scheme, o.entity_masking,
                         o.chronological, o.intra, o.behaviour_sampling, tuple(o.shares), tuple(o.windows))
    return InfillCollator(opts, ids, newline, int(meta["pretrain"]["eos_id"]), config.max_seq_len, cfg.run.seed,
                          config.intra_positions, pool, rows_len)


def pair_collator_for(cfg, config, max_seq_len: int) -> "PairInfillCollator":
    """finetune.py's collator: the build's prompt/response pairs as [gMASK] generation (Part A = the prompt)."""
    ids, newline, meta, pool, tok = _infill_setup(cfg, config)
    return PairInfillCollator(ids, newline, int(meta["instructions"]["eos_id"]), max_seq_len,
                              config.intra_positions, pool, cfg.infill.intra, cfg.infill.position_scheme, tok)


def _check_intra(ex: Infilled, i: int, max_intra: int) -> None:
    if max(ex.intra) >= max_intra:
        raise ValueError(f"example {i}: an entity of {max(ex.intra) - 1} tokens needs intra id {max(ex.intra)}, but "
                         f"the model's intra table has {max_intra} rows (model.overrides intra_positions)")


def padded_batch(examples: list, eos_id: int) -> dict:
    """Infilled examples -> the loop's tensors, right-padded (pad id EOS, no loss, no attention)."""
    S = max(len(ex.input_ids) for ex in examples) + 1  # + one padding slot: the last target stays in the loss
    B = len(examples)
    out = {"input_ids": torch.full((B, S), eos_id, dtype=torch.long),
           "labels": torch.full((B, S), IGNORE_INDEX, dtype=torch.long),
           "positions": torch.zeros((B, S), dtype=torch.long),
           "intra_positions": torch.zeros((B, S), dtype=torch.long),
           "prefix_end": torch.tensor([ex.prefix_end for ex in examples]),
           "attention_mask": torch.zeros((B, S), dtype=torch.long)}
    for b, ex in enumerate(examples):
        n = len(ex.input_ids)
        out["input_ids"][b, :n] = torch.tensor(ex.input_ids)
        out["labels"][b, 1:n + 1] = torch.tensor(ex.targets)  # label i + 1 = target i (the loop shifts)
        out["positions"][b, :n] = torch.tensor(ex.positions)
        out["positions"][b, n:] = ex.positions[-1] + 1
        out["intra_positions"][b, :n] = torch.tensor(ex.intra)
        out["attention_mask"][b, :n] = 1
    return out


class PairInfillCollator:
    """Prompt/response pairs (an instruction build, data/formats/instructions.py) as GLM fine-tunes generation:
    Part A = the prompt with its entities marked + [gMASK]; Part B = [START] + the response (its EOS dropped:
    [END] closes a span). The entities are the renderer's, when the record lists them (P5's prompts,
    data/prepare/p5_tasks.py: items, the user description; character spans mapped to tokens), else the item lines of
    RecGPT's prompt layout (data/formats/infilling.py prompt_entities). The decoder builds the same Part A
    (evaluation/infill_prompts.py). A response that does not fit keeps its first tokens."""

    # [gMASK], [START], at least one response token, [END]'s slot and the padding slot (finetune.py filters prompts
    # of more than seq_len - RESERVED tokens)
    RESERVED = 4

    def __init__(self, ids: dict, newline_id: int, eos_id: int, seq_len: int, max_intra: int,
                 trie: EntityTrie = None, intra: bool = True, position_scheme: str = "continuation", tokenizer=None):
        self.ids, self.newline_id, self.eos_id, self.seq_len = ids, newline_id, eos_id, seq_len
        self.max_intra, self.trie, self.intra, self.position_scheme = max_intra, trie, intra, position_scheme
        self.tokenizer = tokenizer  # maps a record's character-span entities to tokens

    def example(self, input_ids: np.ndarray, labels: np.ndarray, i: int, record: dict = None) -> Infilled:
        n_prompt = int(np.argmax(labels != IGNORE_INDEX)) if (labels != IGNORE_INDEX).any() else len(labels)
        prompt, response = input_ids[:n_prompt].tolist(), input_ids[n_prompt:].tolist()
        if response and response[-1] == self.eos_id:
            response = response[:-1]
        if not response:
            raise ValueError(f"example {i} has an empty response")
        if n_prompt + self.RESERVED > self.seq_len:
            raise ValueError(f"example {i}: its prompt has {n_prompt} tokens, no room for [gMASK], [START], a "
                             f"response token and [END] within {self.seq_len} (data.seq_len)")
        response = response[: self.seq_len - n_prompt - self.RESERVED + 1]
        entities = self.entities(prompt, record, i)
        trie = self.trie or EntityTrie([prompt[s:e] for s, e in entities])
        ex = pair_infilled(prompt, response, entities, self.ids, trie, self.position_scheme, self.intra)
        _check_intra(ex, i, self.max_intra)
        return ex

    def entities(self, prompt: list, record, i: int) -> list:
        if not record or record.get("entities") is None:
            return prompt_entities(prompt, self.newline_id)
        if self.tokenizer is None:
            raise ValueError(f"example {i} lists entities as character spans: the collator needs the tokenizer")
        return record_entities(self.tokenizer, record, prompt, f"example {i}")

    def batch(self, dataset, indices) -> dict:
        examples = []
        for i in indices:
            ex = dataset[int(i)]
            record = dataset.record(int(i)) if hasattr(dataset, "record") else None
            examples.append(self.example(np.asarray(ex["input_ids"]), np.asarray(ex["labels"]), int(i), record))
        return padded_batch(examples, self.eos_id)


class InfillCollator:
    def __init__(self, opts: InfillOptions, ids: dict, newline_id: int, eos_id: int, seq_len: int, seed: int,
                 max_intra: int, trie: EntityTrie = None, rows_len: int = None):
        """seq_len: the longest example the model takes; max_intra: rows of the model's intra table (an entity needs
        its length + 1); trie: the entity pool the decoder will use (default: each row's own item lines); rows_len:
        the packed rows are cut to this many tokens first (data.seq_len), as the causal objective cuts them."""
        self.opts, self.ids, self.newline_id, self.eos_id = opts, ids, newline_id, eos_id
        self.seq_len, self.seed, self.max_intra, self.trie, self.rows_len = seq_len, seed, max_intra, trie, rows_len

    def example(self, row: np.ndarray, index: int) -> Infilled:
        o = self.opts
        rng = random.Random(self.seed * 1_000_003 + index)
        lines, is_item, seps = row_lines(row, self.newline_id, self.eos_id)
        kept = range(len(lines))
        if o.behaviour_sampling:
            items = [i for i, item in enumerate(is_item) if item]
            keep = set(items[k] for k in behaviour_sample(len(items), max(1, math.ceil(0.5 * len(items))), rng,
                                                          o.shares, o.windows))
            kept = [i for i in kept if not is_item[i] or i in keep]
        tokens, entities = [], []  # without sampling, tokens == row: the collator only marks and masks
        ends_document = []  # per entity: is it its document's last line (followed by EOS)?
        for n, i in enumerate(kept):
            if n:
                tokens.append(seps[kept[n - 1]] if kept[n - 1] < len(seps) else self.newline_id)
            if is_item[i]:
                entities.append((len(tokens), len(tokens) + len(lines[i])))
                ends_document.append(i < len(seps) and seps[i] == self.eos_id)
            tokens += lines[i]
        trie = self.trie or EntityTrie([tokens[s:e] for s, e in entities])
        entities_for_units = entities if o.entity_masking else []  # off: GLM's token spans, entities ignored
        units = units_of(len(tokens), entities_for_units)
        level = rng.choices(("mask", "smask", "gmask"), o.mix)[0]
        if level == "gmask" and entities_for_units:
            # the suffix, next-item prediction as evaluation asks it: the last line of the row's last whole document
            # (a history, then [gMASK] for its newest item), else the row's last whole item line; the rest of the
            # row after it is dropped
            last = max((k for k, end in enumerate(ends_document) if end), default=len(entities) - 1)
            tokens, entities = tokens[:entities[last][1]], entities[:last + 1]
            entities_for_units = entities
            units = units_of(len(tokens), entities_for_units)
            spans = [(len(units) - 1, len(units))]
        elif level == "gmask" and not o.entity_masking:  # GLM's token spans: the second half of the tokens
            spans = [(max(1, len(units) // 2), len(units))]
        elif level == "smask" and entities_for_units:
            spans = self._lines(units, set(entities), rng)
        else:  # [MASK] spans, also for a row without a whole item line (one long line across the row)
            level = "mask"
            spans = sample_spans(len(units), rng, o.ratio, o.poisson_lambda)
        ex = infill(tokens, entities_for_units, spans, self.ids, trie, mask=level if spans else "mask",
                    position_scheme=o.position_scheme, intra=o.intra)
        if not o.chronological and len(spans) > 1:
            ex = self._shuffled(ex, rng)
        return ex

    def _lines(self, units, entity_units, rng) -> list:
        """[sMASK]: whole item lines, chosen at random until >= ratio of the units, never adjacent."""
        candidates = [u for u, unit in enumerate(units) if unit in entity_units]
        rng.shuffle(candidates)
        chosen, covered = [], 0
        for u in candidates:
            if covered >= self.opts.ratio * len(units):
                break
            if all(abs(u - c) > 1 for c in chosen):
                chosen.append(u)
                covered += 1
        return sorted((u, u + 1) for u in chosen)

    def _shuffled(self, ex: Infilled, rng) -> Infilled:
        """Part B spans in a random order (GLM's default; RecSysLLM keeps them chronological)."""
        a = ex.prefix_end
        starts = [i for i in range(a, len(ex.input_ids)) if ex.input_ids[i] == self.ids["start"]]
        bounds = starts + [len(ex.input_ids)]
        pieces = [(bounds[k], bounds[k + 1]) for k in range(len(starts))]
        rng.shuffle(pieces)

        def reorder(xs):
            return xs[:a] + [v for s, e in pieces for v in xs[s:e]]
        return Infilled(reorder(ex.input_ids), reorder(ex.targets), reorder(ex.positions), reorder(ex.intra), a)

    def batch(self, dataset, indices) -> dict:
        examples = []
        for i in indices:
            row = np.asarray(dataset[i])[:self.rows_len]
            ex = self.example(row, int(i))
            while len(ex.input_ids) + 1 > self.seq_len:  # the mask and [START]/[END] tokens did not fit: shorter row
                if len(row) <= 2:
                    raise ValueError(f"example {i}: no row fits the model's context (max_seq_len {self.seq_len}) "
                                     f"with its mask tokens")
                row = row[: max(2, len(row) - (len(ex.input_ids) + 1 - self.seq_len))]
                ex = self.example(row, int(i))
            _check_intra(ex, int(i), self.max_intra)
            examples.append(ex)
        return padded_batch(examples, self.eos_id)
