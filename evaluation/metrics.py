"""The paper's metrics (../shared/spec/evaluation.md §7, §8).

Sequential recommendation, one target per user, full ranking (every catalog item is a candidate; a
generative model ranks at most its 10 grounded outputs, everything else has rank infinity):
    rank_u    = 1-based position of u's target in u's de-duplicated list (first occurrence kept), or inf
    HR@k      = (1/|U|) * sum_u 1[rank_u <= k]
    NDCG@k    = (1/|U|) * sum_u 1[rank_u <= k] / log2(rank_u + 1)          (one relevant item: IDCG = 1)
|U| is every test user passed in: a user with an empty or short list counts as a miss, lists are never padded.

Within candidates (P5's direct recommendation, spec p5.md §1.6, §3.4): the same HR@k / NDCG@k, rank_u being the
target's position in u's candidate list sorted by the model's score (ties keep the list's order); k = 1, 5, 10.

Rating prediction, with p the prediction clipped to the scale and r the ground truth:
    RMSE = sqrt((1/n) * sum (p - r)^2)        MAE = (1/n) * sum |p - r|
Unparsable outputs (primary policy): the prediction is the `fallback` rating (the global mean rating of the
training split) and the interaction stays in n. The P5-style numbers that drop them from n are reported
beside, with the count, under "*_parsed_only".
"""
import math
import re
from typing import Hashable, Optional, Sequence

from data.formats.evalfiles import DEFAULT_RATING_SCALE

FIRST_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")


def dedupe_keep_first(items: Sequence[Hashable]) -> list:
    """[a, b, a, c] -> [a, b, c]: a repeated item keeps its first (best) position."""
    seen, out = set(), []
    for x in items:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


def rank_of(target: Hashable, ranked: Sequence[Hashable]) -> Optional[int]:
    """1-based rank of target in the de-duplicated list; None when absent (rank infinity)."""
    for i, x in enumerate(dedupe_keep_first(ranked), start=1):
        if x == target:
            return i
    return None


def user_gains(rank: Optional[int], ks=(5, 10)) -> dict:
    """One user's contributions: HR@k = 1[rank <= k], NDCG@k = 1[rank <= k] / log2(rank + 1); rank None = miss."""
    out = {}
    for k in ks:
        hit = rank is not None and rank <= k
        out[f"HR@{k}"] = 1.0 if hit else 0.0
        out[f"NDCG@{k}"] = 1.0 / math.log2(rank + 1) if hit else 0.0
    return out


def ranking_metrics(ranked_lists: Sequence[Sequence[Hashable]], targets: Sequence[Hashable], ks=(5, 10)) -> dict:
    """HR@k and NDCG@k over all users; lists are de-duplicated here too, so callers cannot forget it."""
    if len(ranked_lists) != len(targets):
        raise ValueError(f"{len(ranked_lists)} ranked lists but {len(targets)} targets")
    if not targets:
        raise ValueError("no test users")
    gains = [user_gains(rank_of(t, lst), ks) for lst, t in zip(ranked_lists, targets)]
    n = len(targets)
    out = {key: sum(g[key] for g in gains) / n for key in gains[0]}
    out["n_users"] = n
    out["mean_unique_items"] = sum(len(dedupe_keep_first(lst)) for lst in ranked_lists) / n
    return out


def rank_candidates(candidates: Sequence[Hashable], scores: Sequence[float]) -> list:
    """Candidates sorted by score, best first. Ties keep the list's order: the candidate lists are shuffled (seeded)
    when the data is built, so this is P5's random tie-break (spec p5.md §3.4), made reproducible."""
    if len(candidates) != len(scores):
        raise ValueError(f"{len(candidates)} candidates but {len(scores)} scores")
    if any(math.isnan(s) for s in scores):
        raise ValueError("a candidate score is NaN")
    order = sorted(range(len(candidates)), key=lambda i: -scores[i])  # stable
    return [candidates[i] for i in order]


CANDIDATE_KEYS = ("HR@1", "HR@5", "NDCG@5", "HR@10", "NDCG@10")  # the metrics a candidate ranking is reported by


def candidate_ranking_metrics(candidate_lists: Sequence[Sequence[Hashable]], score_lists: Sequence[Sequence[float]],
                              targets: Sequence[Hashable], ks=(1, 5, 10)) -> dict:
    """HR@k and NDCG@k within each user's candidate list (P5's direct recommendation: 1 positive + 99 negatives),
    ranked by `score_lists` (higher is better); HR@1 = NDCG@1. Also the number of users whose target ties with another
    candidate's score (broken by list order, rank_candidates)."""
    if not len(candidate_lists) == len(score_lists) == len(targets):
        raise ValueError(f"{len(candidate_lists)} candidate lists, {len(score_lists)} score lists, {len(targets)} "
                         f"targets")
    ranked, ties = [], 0
    for n, (candidates, scores, target) in enumerate(zip(candidate_lists, score_lists, targets)):
        if target not in candidates:
            raise ValueError(f"user {n}: the target {target!r} is not among its {len(candidates)} candidates")
        ranked.append(rank_candidates(candidates, scores))
        target_score = scores[list(candidates).index(target)]
        ties += sum(s == target_score for s in scores) > 1
    out = ranking_metrics(ranked, targets, ks)
    out["users_with_target_ties"] = ties
    return out


def parse_rating(text: str) -> Optional[float]:
    """The first number in the output ("4.0/5.0" -> 4.0, "Rating: 3" -> 3.0); None if there is none.
    Not rounded and not clipped here."""
    m = FIRST_NUMBER.search(text or "")
    return float(m.group()) if m else None


# P5's rating filter (spec p5.md §3.1): only outputs written "1.0", "1.1", ..., "4.9" are scored; "5.0", bare integers
# and anything else leave the denominator. Here the rating as written is the output's first number (so RecGPT's
# "4.0/5.0" is "4.0"); a numeric prediction (an expected rating) is written with one decimal.
P5_KEPT_RATINGS = frozenset(f"{k / 10:.1f}" for k in range(10, 50))


def p5_filter_keeps(text: str) -> bool:
    m = FIRST_NUMBER.search(text or "")
    return m is not None and m.group() in P5_KEPT_RATINGS


def rating_metrics(outputs: Sequence[str], targets: Sequence[float], fallback: float,
                   scale: tuple = DEFAULT_RATING_SCALE, p5_filter: bool = False) -> dict:
    """RMSE and MAE of parsed, clipped predictions; unparsable outputs predict `fallback` (see module doc).
    p5_filter: also the RMSE and MAE over the outputs P5's filter keeps (P5_KEPT_RATINGS), with the kept count."""
    if len(outputs) != len(targets):
        raise ValueError(f"{len(outputs)} outputs but {len(targets)} targets")
    if not targets:
        raise ValueError("no rating test interactions")
    low, high = scale
    parsed = [parse_rating(o) for o in outputs]
    preds = [min(max(p if p is not None else fallback, low), high) for p in parsed]
    errors = [p - r for p, r in zip(preds, targets)]
    parsed_errors = [e for e, p in zip(errors, parsed) if p is not None]
    out = {"RMSE": _rmse(errors), "MAE": _mae(errors), "n": len(errors),
           "n_unparsable": len(errors) - len(parsed_errors), "fallback_rating": fallback,
           "RMSE_parsed_only": _rmse(parsed_errors), "MAE_parsed_only": _mae(parsed_errors),
           "n_parsed": len(parsed_errors),
           "n_clipped": sum(p is not None and not low <= p <= high for p in parsed)}
    if p5_filter:
        kept = [e for e, o in zip(errors, outputs) if p5_filter_keeps(o)]
        out.update({"RMSE_p5_filter": _rmse(kept), "MAE_p5_filter": _mae(kept), "n_p5_kept": len(kept)})
    return out


def numeric_rating_metrics(predictions: Sequence[float], targets: Sequence[float],
                           scale: tuple = DEFAULT_RATING_SCALE, p5_filter: bool = False) -> dict:
    """RMSE and MAE of numeric predictions (an expected rating, the most likely rating of a set), clipped to the
    scale; p5_filter as rating_metrics, each prediction written with one decimal."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
    if not targets:
        raise ValueError("no rating test interactions")
    low, high = scale
    errors = [min(max(p, low), high) - r for p, r in zip(predictions, targets)]
    out = {"RMSE": _rmse(errors), "MAE": _mae(errors), "n": len(errors),
           "n_clipped": sum(not low <= p <= high for p in predictions)}
    if p5_filter:
        kept = [e for e, p in zip(errors, predictions) if f"{p:.1f}" in P5_KEPT_RATINGS]
        out.update({"RMSE_p5_filter": _rmse(kept), "MAE_p5_filter": _mae(kept), "n_p5_kept": len(kept)})
    return out


def _rmse(errors):
    return math.sqrt(sum(e * e for e in errors) / len(errors)) if errors else float("nan")


def _mae(errors):
    return sum(abs(e) for e in errors) / len(errors) if errors else float("nan")


def mean_std(values: Sequence[float]) -> tuple:
    """Mean and sample standard deviation (n - 1) over seeds; std is 0.0 for a single value."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


# ---------------------------------------------------------------------------------------------------------------
# your own pairs (evaluation/text_tasks.py): yes/no scores and generated text


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """ROC AUC: the probability that a random positive (label 1) scores above a random negative (label 0), a tie
    counting 1/2 (the Mann-Whitney U statistic / (positives * negatives)). Computed from average ranks:
        AUC = (sum of the positives' ranks - P (P + 1) / 2) / (P N),  tied scores sharing their average rank.
    An error when either class is absent (AUC is undefined) or a score is NaN."""
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    if any(label not in (0, 1) for label in labels):
        raise ValueError("labels must be 0 or 1")
    if any(math.isnan(s) for s in scores):
        raise ValueError("a score is NaN")
    positives = sum(1 for label in labels if label == 1)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        raise ValueError(f"AUC needs both classes: {positives} positives, {negatives} negatives")
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    rank_sum = 0.0  # of the positives, ranks from 1, ties at their average rank
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        average_rank = (start + end) / 2 + 1
        rank_sum += average_rank * sum(1 for i in order[start:end + 1] if labels[i] == 1)
        start = end + 1
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def normalise_text(text: str) -> str:
    """Case-folded, runs of whitespace made one space, stripped, one trailing "." dropped."""
    text = " ".join(text.split()).casefold()
    return text[:-1].rstrip() if text.endswith(".") else text


def text_match_metrics(predictions: Sequence[str], targets: Sequence[str]) -> dict:
    """exact_match: prediction == target after stripping surrounding whitespace; normalised_match: equal after
    `normalise_text` (case, inner whitespace, a trailing period). Fractions of n, with the counts."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
    if not targets:
        raise ValueError("no examples")
    exact = sum(p.strip() == t.strip() for p, t in zip(predictions, targets))
    normalised = sum(normalise_text(p) == normalise_text(t) for p, t in zip(predictions, targets))
    n = len(targets)
    return {"exact_match": exact / n, "normalised_match": normalised / n, "n": n, "n_exact": exact,
            "n_normalised": normalised}
