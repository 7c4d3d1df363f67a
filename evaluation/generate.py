"""Batched text generation on our MPT and its KV cache: greedy, sampling and beam search.

    cfg = GenerationConfig(num_beams=10, num_return_sequences=10, max_new_tokens=128, eos_token_id=0)
    outputs = generate(model, [prompt_ids_1, prompt_ids_2], cfg)     # one list of `Generation`s per prompt
    outputs = generate_text(model, tokenizer, ["### Instruction: ..."], cfg)   # the same, with .text filled

Prompts of different lengths are left padded into one batch; the attention mask keeps the pad keys out
for the whole generation. The beams of every prompt of a batch run as one (batch * beams) model call.

Decoding rules are transformers' `generate` (v4.50+ / 5.x, `generation/utils.py`), so that results can
be compared with it token for token (tests/test_generate.py):
- greedy: argmax of the logits; a finished row is fed the pad token until every row is done.
- sampling: temperature, then top-k, then top-p (HF's order and tie rules: top-k keeps every token whose
  logit is >= the k-th largest; top-p drops the tokens whose ascending cumulative probability is
  <= 1 - top_p, always keeping the most likely one), then one multinomial draw per row from a
  torch.Generator seeded with `seed`. The draw of a row depends on the batch it is in (the generator is
  shared), so reproducing a run needs the same seed, batch size and order.
- beam search: at each step the 2 * num_beams best (beam, token) continuations by cumulative log-prob;
  those that end (EOS, a stop string or the token budget) and rank among the first num_beams enter the
  finished set with score logprob / generated_length ** length_penalty (EOS counted in the length; the
  prompt is not, HF PR #27558); the best num_beams unfinished ones run on. With early_stopping=False a
  prompt is done once all num_beams finished slots are full and its best running beam, length-normalised
  at the current length, cannot beat the worst finished one. `Generation.score` is that HF
  `sequences_scores` value and `Generation.logprob` the raw cumulative log-prob of the generated tokens.

Beyond HF: a prompt whose beam search is done is dropped from the batch (its cache rows go), the prompt is
run once before its beams are spread (not once per beam), and an optional `constraint` (constrained.py)
restricts the tokens each beam may take next.

Memory: a call allocates one KV cache, once, of prompts x beams rows (beam search: the prompts run on its first rows
and are spread into their beams in place; no second cache) and longest prompt + max_new_tokens - 1 positions.
run_generation batches prompts by a prompt count, a token budget of those positions, or both (by_length), and logs
the largest batch's estimate before decoding (evaluation/memory.py; docs/evaluation_memory.md).
"""
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from data.formats.infilling import IntraTracker
from evaluation.memory import cache_positions, describe, generation_memory, prefill_bytes
from model.mpt import MPT, _triton_usable

log = logging.getLogger(__name__)


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0  # beam score = logprob / generated_length ** length_penalty (HF)
    early_stopping: Union[bool, str] = False  # HF's three modes: False, True, "never"
    eos_token_id: Optional[int] = 0  # <|endoftext|> in the GPT-NeoX tokenizer
    pad_token_id: int = 0
    stop_strings: Sequence[str] = ()  # needs a `decode` function (generate_text passes the tokenizer's)
    seed: Optional[int] = None  # sampling only
    use_cache: bool = True  # False recomputes the whole sequence every step (a reference for the cache)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_beams < 1 or not 1 <= self.num_return_sequences <= self.num_beams:
            raise ValueError(f"need 1 <= num_return_sequences ({self.num_return_sequences}) <= num_beams "
                             f"({self.num_beams})")
        if self.num_beams > 1 and self.do_sample:
            raise ValueError("beam search here is deterministic (do_sample=False); beam sampling is not implemented")
        if self.do_sample and not (self.temperature > 0 and 0 < self.top_p <= 1 and self.top_k >= 0):
            raise ValueError(f"bad sampling settings: temperature={self.temperature}, top_k={self.top_k}, "
                             f"top_p={self.top_p}")
        if self.early_stopping not in (False, True, "never"):
            raise ValueError(f"early_stopping must be False, True or 'never', got {self.early_stopping!r}")


@dataclass
class Generation:
    tokens: list  # generated token ids, EOS included when it was generated
    logprob: float  # sum of the model's log-probs of `tokens` (before any temperature / top-k / top-p)
    score: float  # beam search: logprob / len(tokens) ** length_penalty (HF sequences_scores); else logprob
    finish_reason: str  # "eos", "stop_string" or "length"
    text: Optional[str] = None  # filled by generate_text: EOS dropped, cut before a stop string
    extra: dict = field(default_factory=dict)  # e.g. the catalog items of a constrained output


# ---------------------------------------------------------------------------------------------
# batching and the model calls


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int, device=None):
    """Token lists -> ids (B, S) and attention mask (B, S), padded on the left to the longest prompt."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    S = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), S), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), S), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, S - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[b, S - len(p):] = 1
    return ids.to(device), mask.to(device)


class InfillState:
    """Blank-infilling decoding (RecSysLLM's dynamic position mechanism, docs/recsysllm.md): per row the ALiBi
    positions and intra ids of every token so far, Part A's end, and the entity-trie tracker that gives each new
    token its intra id by the rule the training collator used (data/formats/infilling.py IntraTracker). A generated
    token k of a span sits at the mask's position + k."""

    def __init__(self, prompts: Sequence, pads: Sequence[int], trie, device, intra_rows: int):
        for n, p in enumerate(prompts):
            if p.prefix_end < 1 or len(p.input_ids) != p.prefix_end + 1 or len(p.positions) != len(p.input_ids) or \
                    len(p.intra) != len(p.input_ids):
                raise ValueError(f"infilling prompt {n}: expected Part A (ending in its mask) + [START], with a "
                                 f"position and an intra id per token (data/formats/infilling.py gmask_prompt)")
        self.intra_rows = intra_rows
        S = max(len(p.input_ids) for p in prompts)
        self.positions = torch.zeros((len(prompts), S), dtype=torch.long)
        self.intra = torch.zeros((len(prompts), S), dtype=torch.long)
        for b, (p, pad) in enumerate(zip(prompts, pads)):  # left padded like the ids; pad keys are masked anyway
            self.positions[b, pad:] = torch.as_tensor(p.positions)
            self.intra[b, pad:] = torch.as_tensor(p.intra)
        self.positions, self.intra = self.positions.to(device), self.intra.to(device)
        self.prefix_end = torch.tensor([pad + p.prefix_end for p, pad in zip(prompts, pads)], device=device)
        self.next_position = self.positions[:, -1] + 1  # [START] is the last prompt token, at the mask's position
        self.trackers = [IntraTracker(trie) for _ in prompts]

    def prefill(self) -> dict:
        return {"positions": self.positions, "prefix_end": self.prefix_end, "intra_positions": self.intra}

    def step(self, rows: Optional[torch.Tensor], tokens: torch.Tensor, whole: bool) -> dict:
        """The model inputs of one new token per row (after keeping `rows`); whole: of the whole sequence."""
        if rows is not None:
            self.positions, self.intra = self.positions.index_select(0, rows), self.intra.index_select(0, rows)
            self.prefix_end, self.next_position = self.prefix_end[rows], self.next_position[rows]
            self.trackers = [self.trackers[r].copy() for r in rows.tolist()]
        intra = torch.tensor([tr.step(int(t)) for tr, t in zip(self.trackers, tokens.tolist())],
                             device=self.intra.device)
        if int(intra.max()) >= self.intra_rows:  # an entity of the trie longer than the model was trained for
            raise ValueError(f"a generated entity reached intra id {int(intra.max())}, past the model's "
                             f"{self.intra_rows}-row intra table: the entity pool holds longer entities than training")
        position, self.next_position = self.next_position, self.next_position + 1
        self.positions = torch.cat([self.positions, position[:, None]], 1)
        self.intra = torch.cat([self.intra, intra[:, None]], 1)
        if whole:
            return {"positions": self.positions, "prefix_end": self.prefix_end, "intra_positions": self.intra}
        return {"positions": position[:, None], "intra_positions": intra[:, None]}


class Decoder:
    """Next-token logits for a set of rows that grows one token per step.

    `step(rows, tokens)` keeps the current rows listed in `rows` (in that order: beam search reorders and
    duplicates them, finished prompts are dropped) and appends one token to each. With the cache, only the
    new tokens run through the model; without it, the whole sequence is recomputed (the reference). `infill`:
    an InfillState for blank-infilling prompts (positions, prefix and intra ids go with every model call). `rows`: the
    most rows the cache will hold (beam search: prompts x beams), allocated at the start so that growing to them
    needs no second cache.
    """

    def __init__(self, model: MPT, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, use_cache=True,
                 infill: Optional[InfillState] = None, rows: Optional[int] = None):
        self.model, self.ids, self.mask, self.infill = model, ids, mask, infill
        total = ids.shape[1] + max_new_tokens - 1  # the last generated token is never fed back
        if total > model.config.max_seq_len:
            raise ValueError(f"prompt of {ids.shape[1]} tokens + max_new_tokens={max_new_tokens} exceeds the model "
                             f"config key max_seq_len={model.config.max_seq_len}; shorten the prompt")
        # allocated once, at the most rows it will hold (beam search: prompts x beams; evaluation/memory.py): the
        # prompts fill its first rows, and spreading them into their beams gathers in place (KVCache.reorder)
        self.cache = model.new_kv_cache(ids.shape[0], max_len=total, capacity=rows) if use_cache else None

    def prefill(self) -> torch.Tensor:
        self.generated = 0
        extra = self.infill.prefill() if self.infill is not None else {}
        return _finite(self.model(self.ids, attention_mask=self.mask, kv_cache=self.cache, last_token_only=True,
                                  **extra)[:, -1], "the prompts")

    def step(self, rows: Optional[torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        """rows: (R,) indices into the current rows, or None for all in order; tokens: (R,) -> logits (R, V)."""
        if rows is not None:
            self.mask = self.mask.index_select(0, rows)
            if self.cache is not None:
                self.cache.reorder(rows)
            else:
                self.ids = self.ids.index_select(0, rows)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=1)
        extra = self.infill.step(rows, tokens, whole=self.cache is None) if self.infill is not None else {}
        if self.cache is not None:
            logits = self.model(tokens[:, None], attention_mask=self.mask, kv_cache=self.cache, last_token_only=True,
                                **extra)
        else:
            self.ids = torch.cat([self.ids, tokens[:, None]], dim=1)
            logits = self.model(self.ids, attention_mask=self.mask, last_token_only=True, **extra)
        self.generated += 1
        return _finite(logits[:, -1], f"generated token {self.generated}")


def _finite(logits: torch.Tensor, where: str) -> torch.Tensor:
    """A NaN or inf logit would surface later as an unreadable sampling or sorting error: name it here."""
    if not torch.isfinite(logits).all():
        rows = (~torch.isfinite(logits)).any(-1).nonzero()[:, 0].tolist()
        raise ValueError(f"the model's logits are not finite after {where} (batch rows {rows[:8]}): its weights hold "
                         f"NaN/inf, or the dtype overflows (try --dtype float32)")
    return logits


class StopStrings:
    """Whether a row's generated text now contains a stop string.

    A running row never contains one (it would have finished), so only text ending in the newest token
    can match: the last `window` tokens are decoded, enough when every token decodes to >= 1 character.
    """

    def __init__(self, stop_strings: Sequence[str], decode: Optional[Callable[[list], str]]):
        self.stop_strings = [s for s in stop_strings if s]
        if self.stop_strings and decode is None:
            raise ValueError("stop_strings need a decode function (use generate_text, or pass decode=)")
        self.decode = decode
        self.window = max((len(s) for s in self.stop_strings), default=0) + 1

    def __bool__(self):
        return bool(self.stop_strings)

    def hits(self, generated: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """generated (R, T) padded token rows with `lengths` (R,) real tokens each -> (R,) bool."""
        out = torch.zeros(len(generated), dtype=torch.bool)
        for r, (row, n) in enumerate(zip(generated.tolist(), lengths.tolist())):
            tail = self.decode(row[max(0, n - self.window):n])
            out[r] = any(s in tail for s in self.stop_strings)
        return out.to(generated.device)


# ---------------------------------------------------------------------------------------------
# greedy and sampling


def filter_logits(logits: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0) -> torch.Tensor:
    """HF's warpers in HF's order: temperature, then top-k, then top-p; removed tokens get -inf."""
    logits = logits / temperature if temperature != 1.0 else logits.clone()
    if top_k and top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))  # ties with the k-th are kept
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
        below = sorted_logits.softmax(-1).cumsum(-1) <= (1 - top_p)  # the unlikely tail holding <= 1 - top_p
        below[..., -1] = False  # the most likely token always stays
        logits = logits.masked_fill(below.scatter(-1, order, below), float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, cfg: GenerationConfig, generator=None) -> torch.Tensor:
    """One draw per row (R, V) -> (R,) from the filtered, renormalised distribution."""
    probs = filter_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _decoder(model: MPT, prompts, cfg: GenerationConfig, infill, rows: Optional[int] = None) -> Decoder:
    """Left-padded prompts on the model's device, and their decoder (infill: the entity trie of InfillPrompts; rows:
    the most cache rows the decoding holds, default one per prompt)."""
    device = model.wte.weight.device
    token_lists = [p.input_ids for p in prompts] if infill is not None else prompts
    ids, mask = left_pad(token_lists, cfg.pad_token_id, device)
    vocab = model.config.vocab_size
    unknown = [(n, t) for n, toks in enumerate(token_lists) for t in toks if not 0 <= t < vocab]
    if unknown:
        raise ValueError(f"prompt {unknown[0][0]} holds token id {unknown[0][1]}, not a row of the model's {vocab:,}-"
                         f"row embedding (a tokenizer or special token of another model?)")
    state = None
    if infill is not None:
        state = InfillState(prompts, [ids.shape[1] - len(t) for t in token_lists], infill, device,
                            model.config.intra_positions)
    return Decoder(model, ids, mask, cfg.max_new_tokens, cfg.use_cache, state, rows)


@torch.no_grad()
def greedy_or_sample(model: MPT, prompts, cfg: GenerationConfig, decode=None, infill=None) -> list:
    device = model.wte.weight.device
    decoder = _decoder(model, prompts, cfg, infill)
    B, T = decoder.ids.shape[0], cfg.max_new_tokens
    stops = StopStrings(cfg.stop_strings, decode)
    generator = None
    if cfg.do_sample:
        generator = torch.Generator(device=device)
        generator.manual_seed(cfg.seed if cfg.seed is not None else torch.initial_seed())

    tokens = torch.full((B, T), cfg.pad_token_id, dtype=torch.long, device=device)
    logprob = torch.zeros(B, dtype=torch.float64, device=device)
    n_generated = torch.zeros(B, dtype=torch.long, device=device)
    reason = [None] * B
    logits = decoder.prefill()  # (B, V)
    for t in range(T):
        log_probs = F.log_softmax(logits, dim=-1)
        if cfg.do_sample:
            nxt = sample_next(logits, cfg, generator)
        else:
            nxt = logits.argmax(-1)
        running = torch.tensor([r is None for r in reason], device=device)
        nxt = torch.where(running, nxt, cfg.pad_token_id)  # finished rows are fed pad, as HF does
        tokens[:, t] = nxt
        logprob += torch.where(running, log_probs.gather(1, nxt[:, None])[:, 0].double(), 0.0)
        n_generated += running.long()
        at_eos = (nxt == cfg.eos_token_id) if cfg.eos_token_id is not None else torch.zeros_like(running)
        at_stop = stops.hits(tokens, n_generated) if stops else torch.zeros_like(running)
        for b in range(B):
            if reason[b] is None:
                if at_eos[b]:
                    reason[b] = "eos"
                elif at_stop[b]:
                    reason[b] = "stop_string"
                elif t == T - 1:
                    reason[b] = "length"
        if all(r is not None for r in reason):
            break
        logits = decoder.step(None, nxt)
    out = []
    for b in range(B):
        n = int(n_generated[b])
        lp = float(logprob[b])
        out.append([Generation(tokens[b, :n].tolist(), lp, lp, reason[b])])
    return out


# ---------------------------------------------------------------------------------------------
# beam search


@torch.no_grad()
def beam_search(model: MPT, prompts, cfg: GenerationConfig, decode=None, constraint=None, infill=None) -> list:
    """Deterministic beam search over a batch of prompts; returns num_return_sequences `Generation`s per
    prompt, best score first (fewer when a constraint leaves fewer valid sequences).

    constraint: an object with `start(n_rows) -> state`, `allowed(state) -> (rows, V) bool`,
    `advance(state, rows, tokens) -> state` and `describe(tokens) -> dict` (constrained.CatalogTrie). Under
    a constraint the constraint alone says where an output ends (EOS after a complete item): stop strings do
    not end a beam (an item's text may hold one, and a beam stopped there would not be an item), and a beam
    cut by max_new_tokens is not a complete item and is never returned.
    """
    device = model.wte.weight.device
    K, T, lp_power = cfg.num_beams, cfg.max_new_tokens, cfg.length_penalty
    n_candidates = 2 * K  # HF keeps (1 + number of EOS ids) * num_beams, >= 2 * num_beams
    decoder = _decoder(model, prompts, cfg, infill, rows=len(prompts) * K)  # the cache, once, at its beams' size
    stops = StopStrings(cfg.stop_strings, decode)
    neg_inf = float("-inf")

    # A = prompts still searching; their rows in the decoder are item-major: (A * beams_per_item)
    active = torch.arange(len(prompts), device=device)
    beams_per_item = 1  # the prompt runs once; step 0 spreads it into K beams
    running_tokens = torch.full((len(prompts), 1, T), cfg.pad_token_id, dtype=torch.long, device=device)
    running_scores = torch.zeros(len(prompts), 1, device=device)  # cumulative log-probs (fp32, as HF)
    finished_tokens = torch.full((len(prompts), K, T), cfg.pad_token_id, dtype=torch.long, device=device)
    finished_scores = torch.full((len(prompts), K), neg_inf, device=device)  # length-normalised
    finished_logprob = torch.full((len(prompts), K), neg_inf, device=device)
    finished_length = torch.zeros(len(prompts), K, dtype=torch.long, device=device)
    finished_reason = torch.zeros(len(prompts), K, dtype=torch.long, device=device)  # REASONS index
    is_candidate_top = torch.arange(n_candidates, device=device) < K  # only the best K may finish (HF)
    state = constraint.start(len(prompts)) if constraint is not None else None
    results = [None] * len(prompts)

    logits = decoder.prefill()  # (A, V)
    V = logits.shape[-1]
    for t in range(T):
        A = len(active)
        log_probs = F.log_softmax(logits, dim=-1)  # (A * beams_per_item, V)
        if constraint is not None:
            log_probs = log_probs.masked_fill(~constraint.allowed(state).to(device), neg_inf)
        totals = (log_probs.view(A, beams_per_item, V) + running_scores[:, :, None]).view(A, -1)
        cand_scores, flat = torch.topk(totals, min(n_candidates, totals.shape[1]), dim=1)  # (A, C) descending
        if cand_scores.shape[1] < n_candidates:  # tiny vocabularies only: keep shapes fixed
            pad = n_candidates - cand_scores.shape[1]
            cand_scores = F.pad(cand_scores, (0, pad), value=neg_inf)
            flat = F.pad(flat, (0, pad), value=0)
        src_beam, token = flat // V, flat % V  # (A, C)
        cand_tokens = running_tokens.gather(1, src_beam[:, :, None].expand(-1, -1, T)).clone()
        cand_tokens[:, :, t] = token  # (A, C, T)
        src_row = (torch.arange(A, device=device)[:, None] * beams_per_item + src_beam)  # (A, C) decoder rows

        # which candidates end here, and why (0 eos, 1 stop string, 2 length)
        reason = torch.full((A, n_candidates), -1, dtype=torch.long, device=device)
        if t == T - 1:
            reason.fill_(2)
        if stops and constraint is None:
            lengths = torch.full((A * n_candidates,), t + 1, device=device)
            hit = stops.hits(cand_tokens.view(-1, T), lengths).view(A, n_candidates)
            reason = torch.where(hit, 1, reason)
        if cfg.eos_token_id is not None:
            reason = torch.where(token == cfg.eos_token_id, 0, reason)
        ends = reason >= 0

        # the best K unfinished candidates run on
        run_scores = cand_scores.masked_fill(ends, neg_inf)
        keep = torch.topk(run_scores, K, dim=1).indices  # (A, K)
        next_running_scores = run_scores.gather(1, keep)
        next_running_tokens = cand_tokens.gather(1, keep[:, :, None].expand(-1, -1, T))

        # finished candidates among the top K join the finished set if they beat its worst members
        eligible = ends & is_candidate_top[None, :]
        if constraint is not None:
            eligible &= reason != 2  # cut off mid-item: not a catalog item
        norm_scores = (cand_scores / ((t + 1) ** lp_power)).masked_fill(~eligible, neg_inf)
        items = active
        merged_scores = torch.cat([finished_scores[items], norm_scores], dim=1)
        best = torch.topk(merged_scores, K, dim=1).indices  # (A, K)
        finished_scores[items] = merged_scores.gather(1, best)
        finished_tokens[items] = torch.cat([finished_tokens[items], cand_tokens], 1).gather(
            1, best[:, :, None].expand(-1, -1, T))
        finished_logprob[items] = torch.cat([finished_logprob[items], cand_scores], 1).gather(1, best)
        cand_length = torch.full((A, n_candidates), t + 1, dtype=torch.long, device=device)
        finished_length[items] = torch.cat([finished_length[items], cand_length], 1).gather(1, best)
        finished_reason[items] = torch.cat([finished_reason[items], reason.clamp(min=0)], 1).gather(1, best)

        # is a prompt done? (HF _check_early_stop_heuristic; once done it never resumes)
        all_slots_full = torch.isfinite(finished_scores[items]).all(dim=1)
        if cfg.early_stopping is True:
            done = all_slots_full
        else:
            length = T if (cfg.early_stopping == "never" and lp_power > 0) else t + 1
            best_possible = next_running_scores[:, 0] / (length ** lp_power)
            done = all_slots_full & ~(best_possible > finished_scores[items].min(dim=1).values)
        done |= ~torch.isfinite(next_running_scores[:, 0])  # nothing left to run (a constraint ran dry)
        if t == T - 1:
            done[:] = True
        for i in done.nonzero()[:, 0].tolist():
            item = int(active[i])
            results[item] = _collect(item, finished_tokens, finished_scores, finished_logprob, finished_length,
                                     finished_reason, cfg.num_return_sequences, constraint)
        if bool(done.all()):
            break

        # drop the done prompts and reorder the cache so that row (a, k) holds beam k's history
        go_on = (~done).nonzero()[:, 0]
        active = active[go_on]
        running_tokens, running_scores = next_running_tokens[go_on], next_running_scores[go_on]
        rows = src_row.gather(1, keep)[go_on].reshape(-1)  # (A' * K,) old decoder rows
        next_tokens = running_tokens[:, :, t].reshape(-1)
        if constraint is not None:
            state = constraint.advance(state, rows, next_tokens)
        beams_per_item = K
        logits = decoder.step(rows, next_tokens)
    return results


REASONS = ("eos", "stop_string", "length")


def _collect(item, tokens, scores, logprob, length, reason, n_return, constraint) -> list:
    out = []
    for k in range(n_return):
        score = float(scores[item, k])
        if not math.isfinite(score):  # fewer valid sequences than asked (constraints only)
            break
        toks = tokens[item, k, : int(length[item, k])].tolist()
        extra = constraint.describe(toks) if constraint is not None else {}
        out.append(Generation(toks, float(logprob[item, k]), score, REASONS[int(reason[item, k])], extra=extra))
    return out


# ---------------------------------------------------------------------------------------------
# entry points


def generate(model: MPT, prompts: Sequence, cfg: GenerationConfig, decode=None, constraint=None, infill=None) -> list:
    """Token-id prompts -> one list of `Generation`s per prompt (beam search when num_beams > 1 or a
    constraint is given, else greedy or sampling). infill: the entity trie (data/formats/infilling.py EntityTrie),
    when `prompts` are blank-infilling InfillPrompts (gmask_prompt): a span is decoded with the dynamic position
    mechanism, and ends at [END] (set cfg.eos_token_id to its id)."""
    StopStrings(cfg.stop_strings, decode)  # fail before any model work if stop strings cannot be checked
    if infill is not None and getattr(model, "wte_intra", None) is None:
        raise ValueError("blank-infilling prompts need a model with an intra-position table (model config key "
                         "intra_positions): this checkpoint is a causal LM")
    if infill is not None:  # an entity the model cannot hold would be cut, or numbered past its table, silently
        c = model.config
        if infill.longest + 3 > c.max_seq_len:
            raise ValueError(f"the entity pool holds an entity of {infill.longest} tokens: with [gMASK], [START] and "
                             f"[END] it is longer than the model's context (model config key max_seq_len = "
                             f"{c.max_seq_len})")
        if infill.longest + 1 >= c.intra_positions:
            raise ValueError(f"the entity pool holds an entity of {infill.longest} tokens, which needs intra id "
                             f"{infill.longest + 1}: the model's intra table has {c.intra_positions} rows (model "
                             f"config key intra_positions)")
    if cfg.num_beams > 1 or constraint is not None:
        return beam_search(model, prompts, cfg, decode, constraint, infill)
    return greedy_or_sample(model, prompts, cfg, decode, infill)


def generate_text(model: MPT, tokenizer, prompts: Sequence[str], cfg: GenerationConfig, constraint=None) -> list:
    """Text prompts in, `Generation`s with `.text` out. tokenizer: a `tokenizers.Tokenizer`.

    The prompt is tokenised on its own (no EOS/BOS added), the way data/instructions.py builds training
    examples, so generation continues exactly where the response began during fine-tuning.
    """
    prompt_ids = [e.ids for e in tokenizer.encode_batch(list(prompts), add_special_tokens=False)]

    def decode(ids):
        return tokenizer.decode(ids, skip_special_tokens=False)

    outputs = generate(model, prompt_ids, cfg, decode, constraint)
    for per_prompt in outputs:
        for g in per_prompt:
            toks = g.tokens[:-1] if g.finish_reason == "eos" else g.tokens
            text = tokenizer.decode(toks, skip_special_tokens=True)
            if g.finish_reason == "stop_string":
                text = min((text.split(s, 1)[0] for s in cfg.stop_strings if s in text), key=len, default=text)
            g.text = text
    return outputs


def by_length(lengths: Sequence[int], batch_size: Optional[int] = None, token_budget: Optional[int] = None,
              rows_per_prompt: int = 1, extra_positions: int = 0, sizes: Optional[Sequence[int]] = None) -> list:
    """Index batches of prompts of similar length (less padding), shortest first; results go back by index.

    batch_size: at most this many prompts a batch. token_budget: at most this many KV-cache positions a batch, where a
    batch of n prompts whose longest has L tokens costs n x rows_per_prompt x (L + extra_positions) (generation:
    rows_per_prompt = beams, extra_positions = max_new_tokens - 1: evaluation/memory.py cache_positions). A prompt
    that costs more than the budget alone is a batch of its own (logged), never dropped. Either limit may be None, not
    both; with both, a batch ends at whichever comes first. sizes: the prompts' token counts when `lengths`, the sort
    key, are not (blank-infilling prompts are ordered by their text's length)."""
    if batch_size is None and token_budget is None:
        raise ValueError("by_length needs a batch_size, a token_budget or both")
    for key, value in (("batch_size", batch_size), ("token_budget", token_budget)):
        if value is not None and value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if token_budget is None:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    sizes = lengths if sizes is None else sizes

    def cost(n, longest):
        return cache_positions(n, longest, rows_per_prompt, extra_positions + 1)

    batches, alone, longest = [], [], 0
    for i in order:
        if batches and (batch_size is None or len(batches[-1]) < batch_size) and \
                cost(len(batches[-1]) + 1, max(longest, sizes[i])) <= token_budget:
            batches[-1].append(i)
            longest = max(longest, sizes[i])
            continue
        batches.append([i])
        longest = sizes[i]
        if cost(1, longest) > token_budget:
            alone.append(i)
    if alone:
        worst = max(sizes[i] for i in alone)
        log.info("%d prompt(s) cost more than the token budget of %s KV-cache positions alone (the longest: %d rows x "
                 "%d positions = %s): each runs in a batch of its own", len(alone), f"{token_budget:,}",
                 rows_per_prompt, worst + extra_positions, f"{cost(1, worst):,}")
    return batches


def log_memory_estimate(model: MPT, batches: Sequence[Sequence[int]], sizes: Sequence[int], beams: int,
                        max_new_tokens: int, what: str = "generation") -> dict:
    """Log the estimate of the batch that needs the most memory (evaluation/memory.py: KV cache, weights, logits, and
    the prefill beside) before decoding, with a warning when it exceeds the GPU's memory; returns it, with "rows",
    "length" and "prefill"."""
    c, w = model.config, model.wte.weight
    b = w.element_size()
    # model/mpt.py: the "torch" path (and "triton" where the kernel cannot run) builds the attention bias
    materialised = not (c.attn_impl == "flex" or (c.attn_impl == "triton" and _triton_usable(w)))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    est = None
    for batch in batches:
        n, longest = len(batch), max(sizes[i] for i in batch)
        rows, length = n * beams, longest + max_new_tokens - 1
        e = generation_memory(c.n_layers, c.d_model, c.vocab_size, rows, length, b, weights)
        e.update(rows=rows, length=length, prompts=n,
                 prefill=prefill_bytes(n, longest, c.d_model, c.n_heads, b, materialised))
        if est is None or e["total"] + e["prefill"] > est["total"] + est["prefill"]:
            est = e
    log.info("%s: %d batches; the largest holds %d prompt(s) x %d beam(s) = %d rows x %d positions (%s): %s", what,
             len(batches), est["prompts"], beams, est["rows"], est["length"], f"{est['rows'] * est['length']:,}",
             describe(est, str(w.dtype).replace("torch.", "")))
    if w.is_cuda:
        total = torch.cuda.get_device_properties(w.device).total_memory
        if est["total"] + est["prefill"] > total:
            log.warning("%s: the largest batch needs up to %.1f GiB, more than the GPU's %.1f GiB: it will likely run "
                        "out of memory; set evaluate.py's --token-budget (docs/evaluation_memory.md)", what,
                        (est["total"] + est["prefill"]) / 2 ** 30, total / 2 ** 30)
    return est


def run_generation(model: MPT, tokenizer, examples: Sequence[dict], gen: GenerationConfig,
                   batch_size: Optional[int], desc: str = "generation", constraint=None, seed=None, infill=None,
                   token_budget: Optional[int] = None) -> list:
    """Each example's "prompt" continued (generate_text), in batches of prompts of similar length, with a progress
    bar; outputs in the examples' order. batch_size: at most this many prompts a batch; token_budget: at most this
    many KV-cache positions a batch, beams included (by_length; either may be None, not both). The largest batch's
    memory estimate is logged first. seed: sampling's, one stream per batch so that batches do not replay the same
    draws (a sampled output depends on its batch, so a seeded run reproduces with the same batching). infill:
    (InfillPrompts, entity trie) for a blank-infilling model (evaluation/infill_prompts.py): the prompts are
    token-level, one per example, and each output's text is its span without the closing [END]."""
    from tqdm import tqdm

    lengths = [len(e.ids) for e in tokenizer.encode_batch([x["prompt"] for x in examples], add_special_tokens=False)]
    sizes = lengths if infill is None else [len(p.input_ids) for p in infill[0]]
    beams = gen.num_beams if gen.num_beams > 1 or constraint is not None else 1
    batches = by_length(lengths, batch_size, token_budget, beams, gen.max_new_tokens - 1, sizes)
    if token_budget is not None and batch_size is not None:
        capped = sum(len(b) == batch_size and cache_positions(len(b) + 1, max(sizes[i] for i in b), beams,
                                                              gen.max_new_tokens) <= token_budget for b in batches)
        if capped:
            log.info("%s: %d of %d batches stopped at batch_size=%d prompts with room left in the token budget: unset "
                     "batch_size (or raise it) to fill them", desc, capped, len(batches), batch_size)
    if batches:
        log_memory_estimate(model, batches, sizes, beams, gen.max_new_tokens, desc)
    outputs = [None] * len(examples)
    for b, idx in enumerate(tqdm(batches, desc=desc, unit="batch")):
        if seed is not None:
            gen.seed = seed * 1_000_003 + b
        if infill is None:
            results = generate_text(model, tokenizer, [examples[i]["prompt"] for i in idx], gen, constraint)
        else:
            prompts, pool = infill
            results = generate(model, [prompts[i] for i in idx], gen, None, constraint, infill=pool)
            for per_prompt in results:
                for g in per_prompt:
                    g.text = tokenizer.decode(g.tokens[:-1] if g.finish_reason == "eos" else g.tokens,
                                              skip_special_tokens=True)
        for i, r in zip(idx, results):
            outputs[i] = r
    return outputs
