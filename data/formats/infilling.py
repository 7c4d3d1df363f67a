"""Blank infilling (GLM, as RecSysLLM uses it): an entity-annotated token sequence -> Part A + Part B, with
positions, intra positions and aligned targets. Read by training (the collator) and by evaluation (the decoder's
intra rule), so that the two can never drift apart. Facts and choices: ../shared/spec/recsysllm.md 1.2-1.9,
docs/recsysllm.md.

    trie = EntityTrie([entity token ids, ...])                     # every entity of the pool
    spans = sample_spans(unit_lengths, rng)                        # [(first unit, end unit)] (GLM's sampler)
    ex = infill(tokens, entities, spans, ids, trie)                # Infilled: input_ids, targets, positions, ...

Units: an entity (an item line, an attribute value: marked by the renderer, never guessed) is one unit, every
other token is a unit of its own; spans are runs of whole units, so no entity is ever split.

Layout (GLM's make_block_data, spans in chronological order as RecSysLLM R5):
    Part A = the tokens with each span replaced by one mask token ([MASK], [sMASK] or [gMASK]);
    Part B = for each span in order: [START] followed by its tokens;
    targets = IGNORE_INDEX on Part A; for each span its tokens then [END] (aligned with the inputs, not shifted:
              the [START] slot predicts the first token, the last token predicts [END]).
Positions (ALiBi, docs/recsysllm.md "Option B"): Part A at 0..|A|-1 (GLM's inter ids); the k-th input of a span
([START] at k = 0) at inter(mask) + k. `position_scheme="glm"` gives GLM's own ids (every span input at its
mask's inter id), for the ablation.
Intra ids (RecSysLLM's 2D positions): Part A 0, but 1..len inside an entity that is not masked; Part B by the
greedy trie rule `span_intra`, the same function the decoder runs token by token (`IntraTracker`).
"""
import math
import random
from dataclasses import dataclass
from typing import Optional, Sequence

from data.formats.instructions import IGNORE_INDEX  # one loss convention for every objective


class EntityTrie:
    """The entity pool as a token trie: next(prefix) -> the tokens that continue some entity after `prefix`."""

    def __init__(self, entities: Sequence[Sequence[int]] = ()):
        self.root: dict = {}
        self.longest = 0  # tokens of the longest entity: what a span must be able to hold
        for e in entities:
            self.add(e)

    def add(self, tokens: Sequence[int]) -> None:
        self.longest = max(self.longest, len(tokens))
        node = self.root
        for t in tokens:
            node = node.setdefault(int(t), {})

    def next(self, prefix: Sequence[int]) -> dict:
        node = self.root
        for t in prefix:
            node = node.get(int(t))
            if node is None:
                return {}
        return node


class IntraTracker:
    """The dynamic position rule, one token at a time (spec 2.5c step 3): [START] has intra 1; the first token after
    it 2; afterwards a token continuing the current entity in the trie gets the previous intra + 1, any other 1.
    The entity prefix restarts with a token that begins some entity, else it is cleared."""

    def __init__(self, trie: EntityTrie):
        self.trie, self.prefix, self.intra, self.after_start = trie, [], 1, True

    def copy(self) -> "IntraTracker":
        """An independent tracker in the same state (beam search duplicates rows)."""
        other = IntraTracker(self.trie)
        other.prefix, other.intra, other.after_start = list(self.prefix), self.intra, self.after_start
        return other

    def step(self, token: int) -> int:
        token = int(token)
        continues = bool(self.prefix) and token in self.trie.next(self.prefix)
        if self.after_start or continues:
            self.intra += 1
        else:
            self.intra = 1
        if continues:
            self.prefix.append(token)
        else:
            self.prefix = [token] if token in self.trie.root else []
        self.after_start = False
        return self.intra


def span_intra(span: Sequence[int], trie: EntityTrie) -> list[int]:
    """Intra ids of [START] + span (the inputs of one Part-B span)."""
    tracker = IntraTracker(trie)
    return [1] + [tracker.step(t) for t in span]


def lines_of(row, newline_id: int, eos_id: int) -> tuple[list[list[int]], list[bool], list[int]]:
    """A packed row -> its lines (token lists, without the newline/EOS tokens), whether each is an item line (an
    entity: every non-empty line but a header, i.e. a line followed by an empty one), and the separator token after
    each line but the last (newline or EOS: documents stay apart)."""
    lines, seps, current = [], [], []
    for t in (row.tolist() if hasattr(row, "tolist") else row):
        if t in (newline_id, eos_id):
            lines.append(current)
            seps.append(t)
            current = []
        else:
            current.append(t)
    lines.append(current)
    # a header is followed by a blank line; the empty remainder after a final separator is not one
    is_item = [bool(line) and not (i + 2 < len(lines) and not lines[i + 1]) for i, line in enumerate(lines)]
    return lines, is_item, seps


def row_lines(row, newline_id: int, eos_id: int) -> tuple[list[list[int]], list[bool], list[int]]:
    """lines_of for a packed row, which the build cut from a stream of documents at a fixed length
    (data/formats/packed.py): its first and last lines are usually pieces of lines that began or end in the
    neighbouring rows, so they are text, never entities (a piece of an item is not an item: the decoder's trie
    would not know it, and [gMASK] would learn to stop inside an item)."""
    lines, is_item, seps = lines_of(row, newline_id, eos_id)
    is_item[0] = is_item[-1] = False
    return lines, is_item, seps


def entity_ranges(lines: Sequence[Sequence[int]], is_item: Sequence[bool]) -> list[tuple[int, int]]:
    """The token ranges of the item lines, for lines joined by one separator token each."""
    out, at = [], 0
    for line, item in zip(lines, is_item):
        if item:
            out.append((at, at + len(line)))
        at += len(line) + 1
    return out


def document_entities(tokens: Sequence[int], newline_id: int, eos_id: int) -> list[tuple[int, int]]:
    """The item lines of a rendered document (token ranges): what the collator marks as entities (lines_of)."""
    lines, is_item, _ = lines_of(tokens, newline_id, eos_id)
    return entity_ranges(lines, is_item)


def row_entities(row: Sequence[int], newline_id: int, eos_id: int) -> list[tuple[int, int]]:
    """The whole item lines of a packed row (token ranges): what the collator marks as entities (row_lines)."""
    lines, is_item, _ = row_lines(row, newline_id, eos_id)
    return entity_ranges(lines, is_item)


def prompt_entities(tokens: Sequence[int], newline_id: int) -> list[tuple[int, int]]:
    """The item lines of a RecGPT instruction prompt (token ranges). The renderer (data/prepare/templates.py
    wrap_prompt) writes "### Instruction:", the task, the header, a blank line, one item per line, a blank line,
    "### Response:", so the items are the lines of the block after the first blank line. A prompt without that
    block (e.g. P5's one-line prompts) has none."""
    out, at, blanks, previous_blank = [], 0, 0, False
    lines, _, _ = lines_of(tokens, newline_id, -1)
    for line in lines:
        if not line:
            blanks += 1 if not previous_blank else 0
            previous_blank = True
        else:
            previous_blank = False
            if blanks == 1:
                out.append((at, at + len(line)))
        at += len(line) + 1
    return out


def token_entities(offsets: Sequence[tuple[int, int]], spans: Sequence[Sequence[int]], where: str = "prompt"
                   ) -> list[tuple[int, int]]:
    """The renderer's entities as [start, end) character spans (data/prepare/p5_tasks.py writes them beside each
    prompt) -> token ranges, by the tokenizer's offsets (one (start, end) per token): an entity covers every token
    that overlaps its span, so a token that merges an entity's edge with its neighbour joins the entity."""
    out = []
    for cs, ce in sorted((int(a), int(b)) for a, b in spans):
        covered = [k for k, (s, e) in enumerate(offsets) if s < ce and e > cs]
        if not covered:
            raise ValueError(f"{where}: entity span [{cs}, {ce}) covers no token")
        first, end = covered[0], covered[-1] + 1
        if out and first < out[-1][1]:
            raise ValueError(f"{where}: entity span [{cs}, {ce}) shares a token with the entity before it")
        out.append((first, end))
    return out


def record_entities(tokenizer, record: dict, prompt_ids: Sequence[int], where: str, slots=None
                    ) -> list[tuple[int, int]]:
    """A prompt/response record's entities (data/prepare/p5_tasks.py: "entities", character spans of its prompt) as
    token ranges of its stored prompt tokens; with `slots`, only those that fill the named template slots (the record's
    "entity_slots"). The prompt is encoded again with the build's tokenizer, which must give exactly `prompt_ids`."""
    spans = record["entities"]
    if slots is not None:
        named = record.get("entity_slots")
        if named is None or len(named) != len(spans):
            raise ValueError(f"{where} names no entity slot per entity (records need \"entity_slots\" beside "
                             f"\"entities\", which data/prepare/p5_tasks.py writes): build it again with this version")
        spans = [span for span, slot in zip(spans, named) if slot in slots]
    if not spans:  # nothing to map: no need to encode (a direct prompt's 100 titles cost the most)
        return []
    enc = tokenizer.encode(record["prompt"], add_special_tokens=False)
    if enc.ids != [int(t) for t in prompt_ids]:
        raise ValueError(f"{where}: its prompt does not tokenise to its stored tokens (another tokenizer?)")
    return token_entities(enc.offsets, spans, where)


def units_of(n_tokens: int, entities: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """[(start, end)) token ranges of the units: each entity one unit, every other token one. Entities must be
    sorted, disjoint, non-empty and inside the sequence (an error names the first that is not)."""
    out, at = [], 0
    for s, e in entities:
        if not (at <= s < e <= n_tokens):
            raise ValueError(f"entity ({s}, {e}) is not a sorted, disjoint, non-empty range of {n_tokens} tokens")
        out += [(t, t + 1) for t in range(at, s)] + [(s, e)]
        at = e
    return out + [(t, t + 1) for t in range(at, n_tokens)]


def poisson_lengths(rng: random.Random, target: int, lam: float = 3.0, max_len: int = 40) -> list[int]:
    """GLM's span lengths: Poisson(lam) on 1..max_len-1 (renormalised), drawn until they sum to >= target."""
    weights = [lam ** k * math.exp(-lam) / math.factorial(k) for k in range(1, max_len)]
    out = []
    while sum(out) < target:
        out.append(rng.choices(range(1, max_len), weights)[0])
    return out


def sample_spans(n_units: int, rng: random.Random, ratio: float = 0.15, lam: float = 3.0) -> list[tuple[int, int]]:
    """Blank mode: Poisson(lam) lengths in units until >= ratio of the units, placed uniformly at random with at
    least one unit between spans (GLM's sample_spans; in units, so entities stay whole). [(first, end)) sorted."""
    lengths = poisson_lengths(rng, max(1, math.floor(ratio * n_units)), lam)
    while lengths and sum(lengths) + len(lengths) - 1 > n_units:  # does not fit: fewer spans (GLM drops the sample)
        lengths.pop()
    if not lengths:
        return []
    free = n_units - sum(lengths) - (len(lengths) - 1)  # units left over after the spans and their gaps
    slots = sorted(rng.randint(0, free) for _ in lengths)  # stars and bars: a uniform placement
    spans, start = [], 0
    for i, (slot, length) in enumerate(zip(slots, lengths)):
        first = slot + start
        spans.append((first, first + length))
        start += length + 1
    return spans


@dataclass
class InfillPrompt:
    """A [gMASK] prompt for decoding one span: Part A, then [START] (the decoder's first input)."""
    input_ids: list[int]  # Part A (ending in the mask) + [START]
    positions: list[int]  # Part A at 0..|A|-1, [START] at the mask's position
    intra: list[int]  # Part A's (1..len inside an entity), [START] 1
    prefix_end: int  # |Part A|


def gmask_prompt(tokens: Sequence[int], entities: Sequence[tuple[int, int]], ids: dict,
                 intra: bool = True) -> InfillPrompt:
    """The decoding prompt for "what comes next": `tokens` (a rendered history) with [gMASK] appended, as the
    training suffix mode builds it (infill(..., mask="gmask") with the answer as the span), then [START]."""
    last = len(units_of(len(tokens), entities))  # a placeholder unit after the history takes the mask's place
    part_a = infill(list(tokens) + [0], list(entities), [(last, last + 1)], ids, None, mask="gmask", intra=intra)
    n = part_a.prefix_end
    mask_pos = part_a.positions[n - 1]
    return InfillPrompt(part_a.input_ids[:n] + [ids["start"]], part_a.positions[:n] + [mask_pos],
                        part_a.intra[:n] + [1 if intra else 0], n)


@dataclass
class Infilled:
    input_ids: list[int]  # Part A ++ Part B
    targets: list[int]  # aligned with input_ids: IGNORE_INDEX on Part A, the span tokens then [END] on Part B
    positions: list[int]  # ALiBi positions
    intra: list[int]  # intra-position ids
    prefix_end: int  # |Part A|: keys before it are visible to every query


def infill(tokens: Sequence[int], entities: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]],
           ids: dict, trie: Optional[EntityTrie], mask: str = "mask", position_scheme: str = "continuation",
           intra: bool = True) -> Infilled:
    """Corrupt `tokens`: the units spans[i] = (first unit, end unit) become one `mask` token each ("mask", "smask"
    or "gmask": keys of `ids`, data/formats/tokenizer.py add_infill_tokens) in Part A and reappear, in order, in
    Part B. intra=False: all intra ids 0 (the 2D-position ablation)."""
    if position_scheme not in ("continuation", "glm"):
        raise ValueError(f"position_scheme = {position_scheme!r}: must be 'continuation' or 'glm'")
    units = units_of(len(tokens), entities)
    entity_units = {(s, e) for s, e in entities}
    spans = sorted(spans)
    for i, (a, b) in enumerate(spans):
        if not 0 <= a < b <= len(units) or (i + 1 < len(spans) and b > spans[i + 1][0]):
            raise ValueError(f"span ({a}, {b}) is not a non-empty run of the {len(units)} units apart from the next")
    a_ids, a_pos, a_intra, masked = [], [], [], []  # masked: (inter id of the mask, the span's tokens)
    u = 0
    for a, b in spans + [(len(units), len(units))]:
        for s, e in units[u:a]:  # unmasked units: their tokens, intra 1..len inside an entity
            entity = (s, e) in entity_units
            for k, t in enumerate(tokens[s:e]):
                a_pos.append(len(a_ids))
                a_ids.append(int(t))
                a_intra.append(k + 1 if entity and intra else 0)
        if a == b == len(units):
            break
        masked.append((len(a_ids), [int(t) for s, e in units[a:b] for t in tokens[s:e]]))
        a_pos.append(len(a_ids))
        a_ids.append(ids[mask])
        a_intra.append(0)
        u = b
    inputs, targets, positions, intras = list(a_ids), [IGNORE_INDEX] * len(a_ids), list(a_pos), list(a_intra)
    for inter, span in masked:
        inputs += [ids["start"]] + span
        targets += span + [ids["end"]]
        positions += [inter + (k if position_scheme == "continuation" else 0) for k in range(len(span) + 1)]
        intras += span_intra(span, trie) if intra and trie is not None else [0] * (len(span) + 1)
    return Infilled(inputs, targets, positions, intras, len(a_ids))


def pair_infilled(prompt: Sequence[int], response: Sequence[int], entities: Sequence[tuple[int, int]], ids: dict,
                  trie: Optional[EntityTrie], position_scheme: str = "continuation", intra: bool = True) -> Infilled:
    """A prompt/response pair as GLM fine-tunes generation: Part A = the prompt (its entities marked) + [gMASK],
    Part B = [START] + the response, predicting [END]. Its Part A is `gmask_prompt(prompt, entities, ids)`'s, so
    training and decoding see the same inputs."""
    tokens = list(prompt) + list(response)
    with_answer = list(entities) + [(len(prompt), len(tokens))]  # the response is one unit: one span
    last = len(units_of(len(tokens), with_answer)) - 1
    return infill(tokens, with_answer, [(last, last + 1)], ids, trie, mask="gmask", position_scheme=position_scheme,
                  intra=intra)
