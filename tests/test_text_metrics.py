"""BLEU and ROUGE as P5 computes them (../shared/spec/p5.md §3.2, §3.3, §3.6).

What is pinned to what:
- The spec's BLEU claim (§3.6): sacrebleu with tokenize='none', smooth_method='none', effective_order=False equals
  P5's `bleu.py` (TF-NMT compute_bleu) exactly for n = 2 and 4, empty and short hypotheses included. P5's own
  script is not in this repository (and its stored outputs are not available here), so `p5_compute_bleu` below
  re-implements it from its definition (corpus counts, clipped n-gram matches, no smoothing, BP = exp(1 - r/c)),
  written independently of evaluation/text_metrics.py, and our `bleu` must equal it on 400 seeded synthetic pairs.
- The spec's ROUGE definitions (§3.3): `p5_rouge` below re-implements P5's `rouge.py` (google/seq2seq's) the way
  that script is written (split(" "), n-gram sets, a dict-table LCS, beta = P/R), and our `rouge` must equal it on
  the same pairs; plus the spec's own worked example (reference "a b" inside an 8-token hypothesis: ROUGE-L F =
  0.2615 against 0.40 for F1) and small cases worked by hand here.
- Not reproducible here: the spec's numbers measured on P5's stored Beauty test outputs (ROUGE-1/2 41.9137 /
  12.4279, ROUGE-L 26.13) and on its unpublished synthetic pairs (NLTK 31.2031 vs 31.2436): the inputs are absent.
"""
import collections
import math
import random

import pytest

from evaluation.text_metrics import bleu, lcs_length, rouge, rouge_l, rouge_n, text_generation_metrics


# ---------------------------------------------------------------------------------------------------------------
# independent references, written from the definitions of P5's two scripts


def p5_compute_bleu(references: list, hypotheses: list, max_order: int) -> float:
    """TF-NMT compute_bleu as P5 calls it: token lists from str.split(), one reference each, smooth=False, x 100."""
    matches, possible = [0] * max_order, [0] * max_order
    ref_len = hyp_len = 0
    for ref, hyp in zip(references, hypotheses):
        ref_len += len(ref)
        hyp_len += len(hyp)
        ref_counts = collections.Counter(tuple(ref[i:i + n]) for n in range(1, max_order + 1)
                                         for i in range(len(ref) - n + 1))
        hyp_counts = collections.Counter(tuple(hyp[i:i + n]) for n in range(1, max_order + 1)
                                         for i in range(len(hyp) - n + 1))
        for gram, count in (hyp_counts & ref_counts).items():
            matches[len(gram) - 1] += count
        for n in range(1, max_order + 1):
            if len(hyp) - n + 1 > 0:
                possible[n - 1] += len(hyp) - n + 1
    precisions = [m / p if p > 0 else 0.0 for m, p in zip(matches, possible)]
    geo_mean = math.exp(sum(math.log(p) for p in precisions) / max_order) if min(precisions) > 0 else 0.0
    ratio = hyp_len / ref_len
    bp = 1.0 if ratio > 1.0 else math.exp(1 - 1 / ratio)
    return 100 * geo_mean * bp


def p5_rouge(hypotheses: list, references: list) -> dict:
    """google/seq2seq rouge.py (P5's): per pair ROUGE-1/2 on n-gram sets and sentence-level ROUGE-L, then means."""
    def words(s):
        return s.split(" ")

    def grams(n, toks):
        return set(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))

    def r_n(h, r, n):
        hg, rg = grams(n, words(h)), grams(n, words(r))
        ov = len(hg.intersection(rg))
        p = 0.0 if len(hg) == 0 else ov / len(hg)
        rc = 0.0 if len(rg) == 0 else ov / len(rg)
        return 2.0 * ((p * rc) / (p + rc + 1e-8))

    def r_l(h, r):
        x, y = words(h), words(r)
        table = {}
        for i in range(len(x) + 1):
            for j in range(len(y) + 1):
                if i == 0 or j == 0:
                    table[i, j] = 0
                elif x[i - 1] == y[j - 1]:
                    table[i, j] = table[i - 1, j - 1] + 1
                else:
                    table[i, j] = max(table[i - 1, j], table[i, j - 1])
        llcs, m, n = table[len(x), len(y)], len(y), len(x)
        r_lcs, p_lcs = llcs / m, llcs / n
        beta = p_lcs / (r_lcs + 1e-12)
        return (1 + beta ** 2) * r_lcs * p_lcs / ((r_lcs + beta ** 2 * p_lcs) + 1e-12)

    pairs = list(zip(hypotheses, references))
    return {"ROUGE-1": 100 * sum(r_n(h, r, 1) for h, r in pairs) / len(pairs),
            "ROUGE-2": 100 * sum(r_n(h, r, 2) for h, r in pairs) / len(pairs),
            "ROUGE-L": 100 * sum(r_l(h, r) for h, r in pairs) / len(pairs)}


@pytest.fixture(scope="module")
def pairs():
    """400 seeded pairs over a 12-word vocabulary (so n-grams overlap), with the edge cases of §3.6: empty and
    1-3 token hypotheses, repeated words (clipping, sets), capitals and punctuation kept as they are."""
    rng = random.Random(2022)
    vocab = ["the", "product", "works", "great", "is", "a", "very", "good", "Great", "price", ",", "."]
    hyps, refs = [], []
    for i in range(400):
        ref = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 14)))
        n_hyp = 0 if i % 25 == 0 else rng.choice([1, 2, 3] + list(range(4, 16)))
        words = ref.split() if rng.random() < 0.3 else []
        hyp = " ".join((words + [rng.choice(vocab) for _ in range(n_hyp)])[:n_hyp])
        hyps.append(hyp)
        refs.append(ref)
    assert sum(h == "" for h in hyps) >= 16 and sum(0 < len(h.split()) < 4 for h in hyps) >= 40
    return hyps, refs


# ---------------------------------------------------------------------------------------------------------------
# BLEU


@pytest.mark.parametrize("order", [2, 4])
def test_bleu_equals_p5s_script_with_empty_and_short_hypotheses(pairs, order):
    hyps, refs = pairs
    ours = bleu(hyps, refs, order)
    reference = p5_compute_bleu([r.split() for r in refs], [h.split() for h in hyps], order)
    assert reference > 1.0  # a score the pairs really exercise, not a 0 = 0
    assert ours == pytest.approx(reference, rel=1e-9)
    # a subset of pairs, so that the brevity penalty bites (hypotheses shorter than references in total)
    short = [(h, r) for h, r in zip(hyps, refs) if len(h.split()) < len(r.split())][:120]
    h_short, r_short = [h for h, _ in short], [r for _, r in short]
    ref_short = p5_compute_bleu([r.split() for r in r_short], [h.split() for h in h_short], order)
    assert ref_short > 0 and bleu(h_short, r_short, order) == pytest.approx(ref_short, rel=1e-9)


def test_bleu_hand_worked():
    # one pair, hypothesis "the cat sat" (c = 3) inside the reference "the cat sat on mat" (r = 5):
    # p1 = 3/3, p2 = 2/2, BP = exp(1 - 5/3), BLEU-2 = 100 * exp(-2/3) = 51.342...
    assert bleu(["the cat sat"], ["the cat sat on mat"], 2) == pytest.approx(100 * math.exp(-2 / 3), rel=1e-12)
    # BLEU-4: a 3-token hypothesis has no 4-gram, the 4-gram precision is 0, and with no smoothing the score is 0
    assert bleu(["the cat sat"], ["the cat sat on mat"], 4) == 0.0
    # clipping: "the the the the" against "the cat": p1 = 1/4 (one "the" counted), p2 = 0/3 -> 0; BLEU-1 = 25 * BP 1
    assert bleu(["the the the the"], ["the cat"], 1) == pytest.approx(25.0)
    # no lowercasing or punctuation splitting: "Great!" is not "great"
    assert bleu(["Great!"], ["great"], 1) == 0.0 and bleu(["great"], ["great"], 1) == pytest.approx(100.0)
    # corpus level, not a mean of sentence scores: matches and lengths are summed over the pairs first
    # pair 1 "a b c d" = ref (4/4, 3/3), pair 2 "a x" vs "a y" (1/2, 0/1): p1 = 5/6, p2 = 3/4, c = r = 6
    assert bleu(["a b c d", "a x"], ["a b c d", "a y"], 2) == pytest.approx(100 * math.sqrt(5 / 6 * 3 / 4))


def test_bleu_bad_input_is_named():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        bleu(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no examples"):
        bleu([], [])
    with pytest.raises(ValueError, match="hypothesis 1 is NoneType"):
        bleu(["a", None], ["a", "b"])


# ---------------------------------------------------------------------------------------------------------------
# ROUGE


def test_rouge_equals_p5s_script(pairs):
    hyps, refs = pairs
    ours = rouge(hyps, refs)
    reference = p5_rouge(hyps, refs)
    for key in ("ROUGE-1", "ROUGE-2", "ROUGE-L"):
        assert reference[key] > 1.0
        assert ours[key] == pytest.approx(reference[key], rel=1e-12, abs=1e-12), key


def test_rouge_l_spec_example_beta_is_p_over_r():
    # p5.md §3.3: reference "a b" inside an 8-token hypothesis: LCS 2, R = 1, P = 1/4, beta = 1/4,
    # F = (1 + 1/16) * 1 * 1/4 / (1 + 1/16 * 1/4) = 0.26154; standard F1 = 2PR / (P + R) = 0.40
    f, p, r = rouge_l("x a y b z w v u", "a b")
    assert (p, r) == (0.25, 1.0)
    assert f == pytest.approx(0.2615, abs=5e-5) and f == pytest.approx((17 / 16) * 0.25 / (1 + 1 / 64), rel=1e-9)
    assert f != pytest.approx(2 * p * r / (p + r), abs=0.1)


def test_rouge_hand_worked():
    # sets, not multisets: "a a b" vs "a b b": unigram sets {a, b} both -> P = R = 1, F = 1 (minus the epsilon)
    assert rouge_n("a a b", "a b b", 1)[0] == pytest.approx(1.0, abs=1e-7)
    # bigrams {aa, ab} vs {ab, bb}: overlap 1 -> P = R = 1/2
    assert rouge_n("a a b", "a b b", 2)[1:] == (0.5, 0.5)
    # case and punctuation count (p5.md §3.6: rouge-score gives 1.0 here, P5 1/3): "product," != "product"
    f, p, r = rouge_n("Great product, works", "great product works", 1)
    assert (p, r) == (1 / 3, 1 / 3) and f == pytest.approx(1 / 3, abs=1e-7)
    # split(" "): a one-token hypothesis has no bigram (P = 0, F = 0); the empty string is one empty token
    assert rouge_n("great", "great price", 2) == (0.0, 0.0, 0.0)
    assert rouge_l("", "great price") == (0.0, 0.0, 0.0)
    assert lcs_length("a b c d e".split(), "x b d y e".split()) == 3
    # the mean over examples, x 100
    m = rouge(["a b", "x"], ["a b", "y"])
    assert m["ROUGE-1"] == pytest.approx(50.0, abs=1e-5) and m["ROUGE-1_P"] == pytest.approx(50.0)


def test_text_generation_metrics_keys():
    m = text_generation_metrics(["the cat sat"], ["the cat sat on mat"], bleu_orders=(2,))
    assert set(m) == {"BLEU-2", "ROUGE-1", "ROUGE-1_P", "ROUGE-1_R", "ROUGE-2", "ROUGE-2_P", "ROUGE-2_R", "ROUGE-L",
                      "ROUGE-L_P", "ROUGE-L_R", "n"}
    assert m["BLEU-2"] == pytest.approx(100 * math.exp(-2 / 3)) and m["n"] == 1
