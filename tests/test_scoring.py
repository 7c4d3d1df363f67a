"""Candidate scoring by likelihood (evaluation/scoring.py) against a per-candidate loop of full forwards, on a tiny
random MPT in fp32; and the ranking within candidates it feeds (evaluation/metrics.py), on hand-worked cases."""
import dataclasses
import math
import random

import pytest
import torch

from evaluation.metrics import candidate_ranking_metrics, rank_candidates
from evaluation.scoring import ScoringPrompt, score_continuations
from model.config import MPTConfig
from model.mpt import build_model


@pytest.fixture(scope="module")
def model():
    cfg = dataclasses.replace(MPTConfig.from_name("tiny"), max_seq_len=256)
    return build_model(cfg, seed=0).eval()


def full_forward_logprob(model, prompt, continuation, positions=None, prefix_end=None) -> float:
    """The reference: prompt + continuation in one uncached forward of batch 1; the sum of the continuation's
    token log-probs read off the logits at the positions before each of its tokens."""
    ids = torch.tensor([list(prompt) + list(continuation)])
    extra = {}
    if positions is not None:
        extra["positions"] = torch.tensor([list(positions)])
    if prefix_end is not None:
        extra["prefix_end"] = torch.tensor([prefix_end])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids, **extra)[0], dim=-1)  # (S, V)
    P = len(prompt)
    return sum(float(logp[P - 1 + k, t]) for k, t in enumerate(continuation))


def random_case(seed, n_prompts, n_candidates, prompt_lengths, candidate_lengths):
    rng = random.Random(seed)
    prompts = [[rng.randrange(2, 512) for _ in range(rng.choice(prompt_lengths))] for _ in range(n_prompts)]
    conts = [[[rng.randrange(2, 512) for _ in range(rng.choice(candidate_lengths))] for _ in range(n_candidates)]
             for _ in range(n_prompts)]
    return prompts, conts


@pytest.mark.parametrize("token_budget", [100_000, 60])  # everything in one chunk; many small chunks and prefills
def test_equals_a_per_candidate_loop_of_full_forwards(model, token_budget):
    # prompts of different lengths (left padding in the prefill), candidates of 1-5 tokens (1: prefill logits only)
    prompts, conts = random_case(0, 4, 7, (3, 9, 17), (1, 2, 3, 5))
    scores = score_continuations(model, prompts, conts, token_budget=token_budget)
    for i, (p, cs) in enumerate(zip(prompts, conts)):
        for j, c in enumerate(cs):
            ref = full_forward_logprob(model, p, c)
            assert scores[i][j].n_tokens == len(c)
            assert scores[i][j].logprob == pytest.approx(ref, abs=1e-5), (i, j)
            assert scores[i][j].mean_logprob == pytest.approx(ref / len(c), abs=1e-5)


def test_hundred_candidates_run_the_prompt_once(model):
    """P5's direct recommendation shape: 1 prompt, 100 candidates of 3 tokens: one prefill of the prompt and one
    call for all candidates (each feeding its 2 tokens after the first), not 100 forwards of prompt + candidate."""
    prompts, conts = random_case(1, 1, 100, (20,), (3,))
    calls = []
    handle = model.register_forward_hook(lambda mod, args, kwargs, out: calls.append(tuple(args[0].shape)),
                                         with_kwargs=True)
    try:
        scores = score_continuations(model, prompts, conts, token_budget=100 * 22)
    finally:
        handle.remove()
    assert calls == [(1, 20), (100, 2)]
    for j in (0, 37, 99):
        assert scores[0][j].logprob == pytest.approx(full_forward_logprob(model, prompts[0], conts[0][j]), abs=1e-5)
    # a budget of 10 rows splits the candidates into 10 calls; the scores do not move
    calls.clear()
    handle = model.register_forward_hook(lambda mod, args, kwargs, out: calls.append(tuple(args[0].shape)),
                                         with_kwargs=True)
    try:
        again = score_continuations(model, prompts, conts, token_budget=10 * 22)
    finally:
        handle.remove()
    assert calls == [(1, 20)] + [(10, 2)] * 10
    assert [s.logprob for s in again[0]] == pytest.approx([s.logprob for s in scores[0]], abs=1e-6)


def test_explicit_positions_and_prefix_for_an_infilling_prompt(model):
    """A ScoringPrompt with ALiBi positions that are not its indices and a bidirectional prefix (the inputs a
    blank-infilling prompt carries): equal to one full forward given the same positions, the continuation's token k
    at the prompt's last position + 1 + k."""
    rng = random.Random(3)
    prompt = [rng.randrange(2, 512) for _ in range(10)]
    positions = [0, 1, 2, 3, 4, 5, 6, 7, 3, 3]  # e.g. Part A, then tokens placed at the mask's position
    conts = [[rng.randrange(2, 512) for _ in range(n)] for n in (1, 2, 4)]
    plain = [rng.randrange(2, 512) for _ in range(6)]  # a causal prompt in the same prefill batch
    scores = score_continuations(model, [ScoringPrompt(prompt, positions=positions, prefix_end=8), plain],
                                 [conts, conts])
    for j, c in enumerate(conts):
        cont_positions = positions + [positions[-1] + 1 + k for k in range(len(c))]
        ref = full_forward_logprob(model, prompt, c, positions=cont_positions, prefix_end=8)
        assert scores[0][j].logprob == pytest.approx(ref, abs=1e-5)
        assert scores[1][j].logprob == pytest.approx(full_forward_logprob(model, plain, c), abs=1e-5)
    # and the positions matter: the same prompt scored as a causal one gives other numbers
    causal = score_continuations(model, [prompt], [conts])[0]
    assert any(abs(a.logprob - b.logprob) > 1e-3 for a, b in zip(causal, scores[0]))


def test_bad_inputs_are_named(model):
    with pytest.raises(ValueError, match="prompt 1: continuation 0 has no tokens"):
        score_continuations(model, [[5], [6]], [[[1]], [[]]])
    with pytest.raises(ValueError, match="2 prompts but 1 continuation lists"):
        score_continuations(model, [[5], [6]], [[[1]]])
    with pytest.raises(ValueError, match="token id 900"):
        score_continuations(model, [[5]], [[[900]]])
    with pytest.raises(ValueError, match="max_seq_len=256"):
        score_continuations(model, [[5] * 250], [[[1] * 10]])
    with pytest.raises(ValueError, match="has intra ids .* pass the entity trie"):
        score_continuations(model, [ScoringPrompt([5, 6], intra=[0, 1])], [[[1]]])
    with pytest.raises(ValueError, match="positions has 1 entries for 2 tokens"):
        ScoringPrompt([5, 6], positions=[0])
    assert score_continuations(model, [[5], [6]], [[], [[7]]])[0] == []  # a prompt with no candidates: nothing


# ---------------------------------------------------------------------------------------------------------------
# ranking within candidates


def test_rank_candidates_ties_keep_list_order():
    assert rank_candidates(["a", "b", "c", "d"], [0.1, 0.9, 0.5, 0.9]) == ["b", "d", "c", "a"]
    with pytest.raises(ValueError, match="NaN"):
        rank_candidates(["a"], [float("nan")])


def test_candidate_ranking_metrics_hand_worked():
    # user 1: target "t" has the best score -> rank 1; user 2: two candidates above it -> rank 3;
    # user 3: rank 7 (above @5, within @10); user 4: last of 12 -> rank 12, a miss at every k;
    # user 5: target ties with "x" listed before it -> rank 2 (list order breaks the tie), one user with a tie
    cands = [["a", "t", "b"], ["t", "a", "b", "c"], [f"n{k}" for k in range(6)] + ["t", "z"],
             [f"n{k}" for k in range(11)] + ["t"], ["x", "t", "y"]]
    scores = [[0.1, 0.8, 0.3], [0.2, 0.5, 0.4, 0.1], [9, 8, 7, 6, 5, 4, 3, 2], list(range(12, 0, -1)),
              [0.5, 0.5, 0.1]]
    m = candidate_ranking_metrics(cands, scores, ["t"] * 5)
    assert m["HR@1"] == pytest.approx(1 / 5) and m["NDCG@1"] == m["HR@1"]
    assert m["HR@5"] == pytest.approx(3 / 5)  # ranks 1, 3, 2
    assert m["HR@10"] == pytest.approx(4 / 5)  # + rank 7
    assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(3)) / 5)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(3) + 1 / math.log2(8)) / 5)
    assert m["users_with_target_ties"] == 1 and m["n_users"] == 5
    with pytest.raises(ValueError, match="user 0: the target 'q' is not among its 3 candidates"):
        candidate_ranking_metrics([["a", "b", "c"]], [[1, 2, 3]], ["q"])
