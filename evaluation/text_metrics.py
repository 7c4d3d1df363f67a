"""BLEU and ROUGE as P5 computes them for its explanation (BLEU-4) and review-summarization (BLEU-2) families
(../shared/spec/p5.md §3.2, §3.3, §3.6). Both take one generated string and one reference string per example and
return percentages (x 100), as P5's tables print them.

BLEU (p5.md §3.2): P5's `notebooks/evaluate/bleu.py` is TF-NMT's `compute_bleu`: corpus-level, one reference per
hypothesis, uniform weights 1/n up to order n, no smoothing (0 when any n-gram order has no match), brevity penalty
exp(1 - r/c) over corpus totals, tokens = Python whitespace `str.split()` (no lowercasing, punctuation untouched).
sacrebleu with tokenize='none', smooth_method='none', max_ngram_order=n, effective_order=False, force=True gives
exactly that (p5.md §3.6, re-checked in tests/test_text_metrics.py against an independent re-implementation of
P5's script), so BLEU is sacrebleu's here; its defaults (13a tokenizer, exp smoothing) would not match.

ROUGE (p5.md §3.3): P5's `notebooks/evaluate/rouge.py` (google/seq2seq's, from sumy), per example then the mean:
    tokens      = text.split(" ")   (single spaces: "" is one empty token, a double space makes one too)
    ROUGE-N     n-gram *sets*: P = |H & R| / |H|, Rc = |H & R| / |R|  (0 when the set is empty),
                F = 2 P Rc / (P + Rc + 1e-8)
    ROUGE-L     LCS of the token lists: Rc = LCS / |ref|, P = LCS / |hyp|, beta = P / (Rc + 1e-12),
                F = (1 + beta^2) Rc P / (Rc + beta^2 P + 1e-12)   -- beta = P/R, not the usual fixed beta,
                so a long hypothesis holding the reference is punished harder than by F1 (p5.md's example:
                reference "a b" inside an 8-token hypothesis gives F = 0.2615, F1 would be 0.40)
No package on PyPI computes this ROUGE-L (p5.md §3.6: `rouge` matches ROUGE-1/2 only, rouge-score none), so it is
written here. The scores are F (P5's tables); P and R are returned too.
"""
from typing import Sequence

import sacrebleu


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]):
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not references:
        raise ValueError("no examples to score")
    for name, texts in (("hypothesis", hypotheses), ("reference", references)):
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"{name} {i} is {type(t).__name__}, not a string: {t!r}")


def bleu(hypotheses: Sequence[str], references: Sequence[str], max_order: int = 4) -> float:
    """Corpus BLEU-`max_order` x 100 exactly as P5 computes it (module doc)."""
    _check_pairs(hypotheses, references)
    if max_order < 1:
        raise ValueError(f"max_order must be >= 1, got {max_order}")
    metric = sacrebleu.metrics.BLEU(tokenize="none", smooth_method="none", max_ngram_order=max_order,
                                    effective_order=False, force=True)
    return metric.corpus_score(list(hypotheses), [list(references)]).score


def _ngrams(tokens: list, n: int) -> set:
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def rouge_n(hypothesis: str, reference: str, n: int) -> tuple:
    """One example's set-based ROUGE-N -> (F, P, R) in [0, 1]."""
    hyp, ref = _ngrams(hypothesis.split(" "), n), _ngrams(reference.split(" "), n)
    overlap = len(hyp & ref)
    precision = overlap / len(hyp) if hyp else 0.0
    recall = overlap / len(ref) if ref else 0.0
    return 2.0 * precision * recall / (precision + recall + 1e-8), precision, recall


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence, by the usual DP, one row at a time."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(hypothesis: str, reference: str) -> tuple:
    """One example's ROUGE-L with P5's beta = P / R weighting (module doc) -> (F, P, R) in [0, 1]."""
    hyp, ref = hypothesis.split(" "), reference.split(" ")  # never empty: "".split(" ") == [""]
    lcs = lcs_length(hyp, ref)
    recall, precision = lcs / len(ref), lcs / len(hyp)
    beta = precision / (recall + 1e-12)
    f = (1 + beta ** 2) * recall * precision / (recall + beta ** 2 * precision + 1e-12)
    return f, precision, recall


def rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """Mean over examples of ROUGE-1, ROUGE-2 and ROUGE-L, x 100: {"ROUGE-1": F, "ROUGE-1_P": ..., "ROUGE-1_R":
    ..., the same for ROUGE-2 and ROUGE-L}."""
    _check_pairs(hypotheses, references)
    out = {}
    for name, score in (("ROUGE-1", lambda h, r: rouge_n(h, r, 1)), ("ROUGE-2", lambda h, r: rouge_n(h, r, 2)),
                        ("ROUGE-L", rouge_l)):
        per_example = [score(h, r) for h, r in zip(hypotheses, references)]
        for k, suffix in enumerate(("", "_P", "_R")):
            out[name + suffix] = 100.0 * sum(s[k] for s in per_example) / len(per_example)
    return out


def text_generation_metrics(hypotheses: Sequence[str], references: Sequence[str], bleu_orders=(4,)) -> dict:
    """P5's explanation (bleu_orders=(4,)) and review-summarization ((2,)) metrics: BLEU-n and ROUGE, x 100."""
    out = {f"BLEU-{n}": bleu(hypotheses, references, n) for n in bleu_orders}
    out.update(rouge(hypotheses, references))
    out["n"] = len(references)
    return out
