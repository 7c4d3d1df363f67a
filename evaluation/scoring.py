"""The model's log-likelihood of given continuations of a prompt: candidate ranking (P5's direct recommendation,
1 positive + 99 negatives ranked by likelihood) and distributions over a closed set of answers (the rating
strings, evaluate.py's `rating.decoding=expected`).

    scores = score_continuations(model, prompts, continuations, pad_token_id=0, token_budget=16384)
    scores[i][j].logprob      # sum over the tokens of continuation j of prompt i of log P(token | prompt, before)
    scores[i][j].n_tokens     # so that the length-normalised score logprob / n_tokens is at hand (.mean_logprob)

How (the KV cache of model/mpt.py): a group of prompts is left padded and run once (prefill); the logits at each
prompt's last token give every continuation's first token. The cache is then gathered over the continuation rows,
(prompt i, continuation j) -> a copy of prompt i's keys and values, and the continuations, right padded, run in one
call per chunk: each row's tokens 0..T-2 go in, the logits score tokens 1..T-1. Right padding needs no mask (a pad
comes after every real token of its row, and attention is causal); the prompts' left pads stay masked. A prompt
is never run twice, however many candidates it has.

Chunks: one chunk holds rows x (longest prompt + longest continuation of the chunk) positions of every layer's
keys and values, which is what bounds memory (2 x n_layers x d_model x dtype bytes per position: 0.5 MiB at 7B in
bf16, so the default budget of 16,384 positions is 8 GiB, and 1 MiB at 7B in fp32; evaluation/memory.py).
`token_budget` caps that product; a chunk always holds at least one row. The prefill's batch is capped the same way
(`prompt_budget`), and its cache lives while its chunks run: the peak is about the two budgets together.

Prompts are token lists, or `ScoringPrompt`s (an InfillPrompt is taken as one), which can carry what a blank-infilling model needs besides the ids
(explicit ALiBi positions, Part A's end, intra ids): the prefill passes them to the model as generate.py's
InfillState does. A causal prompt needs none of them. For an infilling prompt (data/formats/infilling.py
gmask_prompt: Part A + [START]) the continuation tokens take the positions after the prompt's last one (a span's
token k at the mask's position + k, as InfillState decodes) and their intra ids follow the entity trie's rule
(`intra_trie`, IntraTracker), so a scored span sees exactly the inputs the decoder would give it.
"""
import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from data.formats.infilling import InfillPrompt, span_intra
from evaluation.generate import left_pad
from evaluation.metrics import candidate_ranking_metrics


@dataclass
class ScoringPrompt:
    """A prompt with its optional blank-infilling inputs, one value per token (None: the plain causal LM)."""
    input_ids: Sequence[int]
    positions: Optional[Sequence[int]] = None  # ALiBi positions; None = the token indices
    intra: Optional[Sequence[int]] = None  # intra-position ids (model config key intra_positions)
    prefix_end: Optional[int] = None  # tokens before it see each other both ways (GLM's Part A); None = causal

    def __post_init__(self):
        n = len(self.input_ids)
        for key in ("positions", "intra"):
            value = getattr(self, key)
            if value is not None and len(value) != n:
                raise ValueError(f"ScoringPrompt.{key} has {len(value)} entries for {n} tokens")
        if self.prefix_end is not None and not 0 < self.prefix_end <= n:
            raise ValueError(f"ScoringPrompt.prefix_end = {self.prefix_end} is outside the prompt's {n} tokens")


class ContinuationScore(NamedTuple):
    logprob: float  # sum of the continuation's token log-probs (fp64 sum of the model's fp32 log-softmax)
    n_tokens: int

    @property
    def mean_logprob(self) -> float:
        return self.logprob / self.n_tokens


def _as_prompt(p) -> ScoringPrompt:
    if isinstance(p, ScoringPrompt):
        return p
    if isinstance(p, InfillPrompt):  # data/formats/infilling.py gmask_prompt: Part A + [START]
        return ScoringPrompt(p.input_ids, p.positions, p.intra, p.prefix_end)
    return ScoringPrompt(list(p))


def _chunks(items: Sequence, width_of, budget: int) -> list:
    """Consecutive index runs [a, b) of items whose (b - a) * width_of(a, b) stays within budget (>= 1 index each)."""
    runs, start = [], 0
    while start < len(items):
        end = start + 1
        while end < len(items) and (end + 1 - start) * width_of(start, end + 1) <= budget:
            end += 1
        runs.append(list(range(start, end)))
        start = end
    return runs


@torch.no_grad()
def score_continuations(model, prompts: Sequence[Union[Sequence[int], ScoringPrompt, InfillPrompt]],
                        continuations: Sequence[Sequence[Sequence[int]]], pad_token_id: int = 0,
                        token_budget: int = 16384, prompt_budget: Optional[int] = None, intra_trie=None) -> list:
    """prompts[i]: token ids (or a ScoringPrompt); continuations[i]: the candidate token lists of prompt i, each
    non-empty -> scores[i][j] = ContinuationScore(log P(continuations[i][j] | prompts[i]), its token count).

    token_budget: positions (rows x width) of one continuation chunk's KV cache; prompt_budget: the same for a
    prefill batch (default token_budget); intra_trie: the entity pool (EntityTrie) that numbers the continuations'
    intra ids, required when prompts carry intra ids. Module doc: how and why."""
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuation lists")
    if token_budget < 1:
        raise ValueError(f"token_budget must be >= 1, got {token_budget}")
    prompts = [_as_prompt(p) for p in prompts]
    vocab, max_len = model.config.vocab_size, model.config.max_seq_len
    for i, (p, conts) in enumerate(zip(prompts, continuations)):
        if not p.input_ids:
            raise ValueError(f"prompt {i} has no tokens")
        if p.intra is not None and intra_trie is None:
            raise ValueError(f"prompt {i} has intra ids (a blank-infilling prompt): pass the entity trie "
                             f"(intra_trie) that numbers its continuations")
        for j, c in enumerate(conts):
            if len(c) == 0:
                raise ValueError(f"prompt {i}: continuation {j} has no tokens")
            if len(p.input_ids) + len(c) - 1 > max_len:
                raise ValueError(f"prompt {i} ({len(p.input_ids)} tokens) + continuation {j} ({len(c)} tokens) "
                                 f"exceed the model config key max_seq_len={max_len}")
        bad = [t for t in list(p.input_ids) + [t for c in conts for t in c] if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt {i} or its continuations hold token id {bad[0]}, not a row of the model's "
                             f"{vocab:,}-row embedding")
    device = model.wte.weight.device
    scores = [[None] * len(c) for c in continuations]
    order = sorted((i for i in range(len(prompts)) if continuations[i]), key=lambda i: len(prompts[i].input_ids))
    longest_cont = [max((len(c) for c in conts), default=1) for conts in continuations]

    def prefill_width(a, b):  # a prefill's cache must also hold its prompts' continuations
        group = order[a:b]
        return max(len(prompts[i].input_ids) for i in group) + max(longest_cont[i] for i in group) - 1

    for run in _chunks(order, prefill_width, prompt_budget or token_budget):
        group = [order[k] for k in run]
        _score_group(model, [prompts[i] for i in group], [continuations[i] for i in group], pad_token_id,
                     token_budget, device, [scores[i] for i in group], intra_trie)
    return scores


def _score_group(model, prompts, continuations, pad_token_id, token_budget, device, out, intra_trie=None):
    """One prefill over `prompts` (left padded), then the continuation rows in chunks; fills out[i][j]."""
    ids, mask = left_pad([p.input_ids for p in prompts], pad_token_id, device)  # (B, P) each
    B, P = ids.shape
    pads = [P - len(p.input_ids) for p in prompts]
    T = max(len(c) for conts in continuations for c in conts)
    extra, last_position = _prefill_inputs(prompts, pads, P, device)
    cache = model.new_kv_cache(B, max_len=P + T - 1)
    first = F.log_softmax(model(ids, attention_mask=mask, kv_cache=cache, last_token_only=True, **extra)[:, -1],
                          dim=-1)  # (B, V): every continuation's first token
    rows = [(b, j) for b in range(B) for j in range(len(continuations[b]))]
    heads = first[torch.tensor([b for b, _ in rows], device=device),
                  torch.tensor([continuations[b][j][0] for b, j in rows], device=device)].tolist()  # one sync
    for (b, j), head in zip(rows, heads):
        out[b][j] = ContinuationScore(head, len(continuations[b][j]))
    rest = [(b, j) for b, j in rows if len(continuations[b][j]) > 1]  # rows with tokens after the first
    rest.sort(key=lambda r: len(continuations[r[0]][r[1]]))  # similar lengths share a chunk: less padding

    def width(a, b):
        return P + max(len(continuations[r[0]][r[1]]) for r in rest[a:b]) - 1

    for run in _chunks(rest, width, token_budget):
        chunk = [rest[k] for k in run]
        conts = [continuations[b][j] for b, j in chunk]
        Tc = max(len(c) for c in conts)
        tokens = torch.full((len(chunk), Tc), pad_token_id, dtype=torch.long)  # right padded
        for r, c in enumerate(conts):
            tokens[r, :len(c)] = torch.as_tensor(list(c))
        tokens = tokens.to(device)
        source = torch.tensor([b for b, _ in chunk], device=device)  # (R,) the prompt row of each chunk row
        chunk_cache = _gather_cache(model, cache, source, P + Tc - 1)
        chunk_mask = torch.cat([mask.index_select(0, source), mask.new_ones(len(chunk), Tc - 1)], dim=1)
        step = {}
        if last_position is not None:  # blank infilling: token k of a continuation at the last position + 1 + k
            step["positions"] = last_position.index_select(0, source)[:, None] + torch.arange(1, Tc, device=device)
        if "intra_positions" in extra:  # ... and the intra id the decoder's rule gives it after [START]
            intra = torch.zeros((len(chunk), Tc - 1), dtype=torch.long)
            for r, c in enumerate(conts):
                intra[r, :len(c) - 1] = torch.as_tensor(span_intra(list(c[:-1]), intra_trie)[1:])
            step["intra_positions"] = intra.to(device)
        logits = model(tokens[:, :-1], attention_mask=chunk_mask, kv_cache=chunk_cache, **step)  # (R, Tc-1, V)
        logp = F.log_softmax(logits, dim=-1).gather(2, tokens[:, 1:, None])[:, :, 0]  # (R, Tc-1)
        real = torch.arange(Tc - 1, device=device)[None, :] < torch.tensor([len(c) - 1 for c in conts],
                                                                          device=device)[:, None]  # (R, Tc-1)
        tails = logp.double().masked_fill(~real, 0.0).sum(1).tolist()  # one sync per chunk, not per row
        for (b, j), tail in zip(chunk, tails):
            out[b][j] = ContinuationScore(out[b][j].logprob + tail, out[b][j].n_tokens)


def _prefill_inputs(prompts, pads, P, device):
    """The model's optional inputs for the prefill (positions, prefix_end) and each row's last position (B,), or
    ({}, None) for plain causal prompts. Mixed batches are filled in: a causal prompt's positions are its indices."""
    if all(p.positions is None and p.prefix_end is None and p.intra is None for p in prompts):
        return {}, None
    positions = torch.zeros((len(prompts), P), dtype=torch.long)  # pad keys are masked: their positions do not count
    for b, (p, pad) in enumerate(zip(prompts, pads)):
        given = p.positions if p.positions is not None else range(len(p.input_ids))
        positions[b, pad:] = torch.as_tensor(list(given))
    prefix_end = torch.tensor([pad + (p.prefix_end if p.prefix_end is not None else 0) for p, pad in zip(prompts, pads)])
    extra = {"positions": positions.to(device)}
    if any(p.prefix_end is not None for p in prompts):
        extra["prefix_end"] = prefix_end.to(device)
    if any(p.intra is not None for p in prompts):
        intra = torch.zeros((len(prompts), P), dtype=torch.long)
        for b, (p, pad) in enumerate(zip(prompts, pads)):
            if p.intra is not None:
                intra[b, pad:] = torch.as_tensor(list(p.intra))
        extra["intra_positions"] = intra.to(device)
    return extra, positions[:, -1].to(device)


def _gather_cache(model, cache, source: torch.Tensor, max_len: int):
    """A new cache whose row r holds the filled part of `cache` row source[r] (the prompt a continuation follows)."""
    n = cache.length
    out = model.new_kv_cache(len(source), max_len=max_len)
    for layer in range(cache.keys.shape[0]):  # one layer at a time: no full-size temporary
        out.keys[layer, :, :, :n] = cache.keys[layer, :, :, :n].index_select(0, source)  # (R, H, n, D)
        out.values[layer, :, :, :n] = cache.values[layer, :, :, :n].index_select(0, source)
    if cache.explicit_positions:
        out.positions[:, :n] = cache.positions[:, :n].index_select(0, source)
        out.explicit_positions = True
    out.length = n
    return out


# ---------------------------------------------------------------------------------------------
# candidate lists: P5's direct recommendation


def rank_candidates_by_likelihood(model, tokenizer, prompts: Sequence, candidates: Sequence[Sequence[str]],
                                  texts: Sequence[Sequence[str]], targets: Sequence[str], end_id: Optional[int],
                                  pad_token_id: int, token_budget: int = 16384, intra_trie=None) -> tuple:
    """Direct recommendation ranked by likelihood: each prompt's candidate texts, each followed by `end_id` (as
    fine-tuning ends a response; None: nothing, as a document line goes on with its rating), scored after the prompt,
    all of a prompt's candidates together ->
    (predictions, metrics): HR@1/5/10 and NDCG@5/10 within each list by summed log-probability, and the same by the
    mean per token ("length_normalised")."""
    end = [] if end_id is None else [end_id]
    continuations = [[e.ids + end for e in tokenizer.encode_batch(list(t), add_special_tokens=False)] for t in texts]
    scores = score_continuations(model, prompts, continuations, pad_token_id=pad_token_id, token_budget=token_budget,
                                 intra_trie=intra_trie)
    sums = [[s.logprob for s in per] for per in scores]
    means = [[s.mean_logprob for s in per] for per in scores]
    metrics = candidate_ranking_metrics(candidates, sums, targets)
    metrics["length_normalised"] = candidate_ranking_metrics(candidates, means, targets)
    predictions = [{"target_item_id": t, "candidates": list(c), "logprob": s, "n_tokens": [v.n_tokens for v in per]}
                   for t, c, s, per in zip(targets, candidates, sums, scores)]
    return predictions, metrics


# a closed set of answers: the rating strings


def answer_set_probabilities(scores: Sequence[ContinuationScore]) -> list:
    """P(answer k) normalised over the set: softmax of the answers' summed log-probs (fp64). Each answer ends with
    EOS (answer_set_ids), so the answers are whole responses and their probabilities comparable ("4" cannot gain
    from being a prefix of "4.5")."""
    logprobs = torch.tensor([s.logprob for s in scores], dtype=torch.float64)
    return torch.softmax(logprobs, dim=0).tolist()


def answer_set_ids(tokenizer, answers: Sequence[str], end_id: int) -> list:
    """Each answer encoded alone, then the response's terminator: the tokens fine-tuning put after a prompt
    (data/formats/instructions.py: tokens(prompt) + tokens(response) + EOS; a blank-infilling span: + [END])."""
    ids = [e.ids + [end_id] for e in tokenizer.encode_batch(list(answers), add_special_tokens=False)]
    seen = {}
    for answer, toks in zip(answers, ids):
        if tuple(toks) in seen:
            raise ValueError(f"the answers {seen[tuple(toks)]!r} and {answer!r} encode to the same tokens")
        seen[tuple(toks)] = answer
    return ids


def rating_over_set(model, prompts: Sequence, answers: Sequence[Sequence[int]], values: Sequence[float],
                    pad_token_id: int, token_budget: int = 16384, intra_trie=None) -> list:
    """The model's distribution over the rating strings it was trained to write (answers[k], token ids ending in
    the response's terminator, writes values[k]), per prompt (token ids or ScoringPrompt) -> [{"expected":
    sum_k p_k values[k], "argmax": the value of the most likely string (greedy over the set), "probabilities":
    [p_k]}]. One prefill per prompt group, all strings scored together (module doc)."""
    if len(values) != len(answers) or not values:
        raise ValueError(f"{len(values)} rating values but {len(answers)} rating strings")
    scores = score_continuations(model, prompts, [answers] * len(prompts), pad_token_id=pad_token_id,
                                 token_budget=token_budget, intra_trie=intra_trie)
    out = []
    for per_prompt in scores:
        probs = answer_set_probabilities(per_prompt)
        best = max(range(len(probs)), key=lambda k: probs[k])  # the first of equal maxima
        out.append({"expected": sum(p * v for p, v in zip(probs, values)), "argmax": float(values[best]),
                    "probabilities": probs})
    return out


def rating_strings(values: Sequence[float], value_format: str, high: float) -> list:
    """The responses that write each rating: value_format.format(value=v, high=high) ("4.0/5.0", P5's "4.0")."""
    return [value_format.format(value=float(v), high=float(high)) for v in values]


def evaluate_rating_over_set(cfg, model, tokenizer, examples) -> tuple:
    """evaluate.py's rating task with rating.decoding=expected: per example the distribution over the rating
    strings (rating.values written by rating.value_format), the expected rating and the most likely string's rating
    ("greedy over the set"), each clipped to rating.scale -> (predictions, metrics). Deterministic: no seeds."""
    from data.formats.tokenizer import EOS
    from evaluation.config import RATING_FORMAT
    from evaluation.metrics import numeric_rating_metrics

    r = cfg.rating
    low, high = r.scale
    values = r.values if r.values is not None else [float(v) for v in range(math.ceil(low), math.floor(high) + 1)]
    strings = rating_strings(values, r.value_format or RATING_FORMAT, high)
    eos = tokenizer.token_to_id(EOS)
    if cfg.objective == "infill":  # the instruction prompt + [gMASK] + [START]; each answer is a span closed by [END]
        from evaluation.infill_prompts import catalog_lines, infill_prompts

        infill, pool, ids = infill_prompts(cfg, model, tokenizer, examples, catalog_lines(cfg.benchmark))
        prompts = infill
        answers = answer_set_ids(tokenizer, strings, ids["end"])
    else:
        prompts, pool = [e.ids for e in tokenizer.encode_batch([x["prompt"] for x in examples],
                                                                add_special_tokens=False)], None
        answers = answer_set_ids(tokenizer, strings, eos)
    per_example = rating_over_set(model, prompts, answers, values, eos, cfg.score_token_budget, intra_trie=pool)
    targets = [float(x["target_rating"]) for x in examples]
    expected = numeric_rating_metrics([d["expected"] for d in per_example], targets, tuple(r.scale), r.p5_filter)
    argmax = numeric_rating_metrics([d["argmax"] for d in per_example], targets, tuple(r.scale), r.p5_filter)
    summary = {key: {"mean": expected[key], "std": None} for key in expected if key not in ("n", "n_clipped")}
    summary.update({f"{key}_argmax": {"mean": argmax[key], "std": None} for key in argmax
                    if key.startswith(("RMSE", "MAE", "n_p5"))})
    predictions = [{"user": x["user"], "target_item_id": x.get("target_item_id"), "target_rating": t,
                    "expected": d["expected"], "argmax": d["argmax"],
                    "probabilities": dict(zip(strings, d["probabilities"]))}
                   for x, t, d in zip(examples, targets, per_example)]
    return predictions, {"decoding": "expected", "summary": summary, "expected": expected, "argmax_over_set": argmax,
                         "rating_values": list(values), "rating_strings": strings}
