"""Rating by the expected value over the rating strings (evaluation/scoring.py rating_over_set, evaluate.py
--rating.decoding=expected), greedy rating decoding, and P5's 1.0-4.9 filter: on a tiny random MPT and a BPE
trained here, against hand computations from per-string log-likelihoods of full forwards."""
import dataclasses
import json
import math

import pytest
import torch

import evaluate
from data.prepare.bpe import train_bpe
from evaluation.generate import GenerationConfig, generate_text
from evaluation.metrics import numeric_rating_metrics, p5_filter_keeps, rating_metrics
from evaluation.scoring import answer_set_ids, rating_over_set, rating_strings
from model.checkpoint import load_model, save_model
from model.config import MPTConfig
from model.mpt import build_model

PROMPTS = [f"### Instruction:\nPredict rating for the last item.\nTitle: {t}; Rating:\n\n### Response:"
           for t in ("Rose Lip Balm", "Argan Hair Oil", "Gel Nail Polish", "Matte Lipstick")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rating_decoding")
    tok = train_bpe(PROMPTS + ["1.0/5.0 2.0/5.0 3.0/5.0 4.0/5.0 5.0/5.0 4.5"], 300, tmp / "ckpt" / "tokenizer.json")
    cfg = dataclasses.replace(MPTConfig.from_name("tiny"), max_seq_len=256)
    save_model(build_model(cfg, seed=1).state_dict(), cfg, tmp / "ckpt")
    bench = tmp / "bench"
    bench.mkdir()
    with open(bench / "rating_test.jsonl", "w") as f:
        for k, p in enumerate(PROMPTS):
            f.write(json.dumps({"user": f"u{k}", "prompt": p, "target_rating": 1 + k}) + "\n")
    return tmp, tok, load_model(tmp / "ckpt").eval()


def string_logprob(model, tok, prompt, answer) -> float:
    """log P(answer + EOS | prompt) from one full forward: prompt and answer tokenised alone, as fine-tuning does."""
    p = tok.encode(prompt, add_special_tokens=False).ids
    a = tok.encode(answer, add_special_tokens=False).ids + [tok.token_to_id("<|endoftext|>")]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([p + a]))[0], -1)
    return sum(float(logp[len(p) - 1 + k, t]) for k, t in enumerate(a))


def test_expected_rating_equals_a_hand_computation(setup):
    _, tok, model = setup
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    strings = rating_strings(values, "{value:.1f}/{high:.1f}", 5)
    assert strings == ["1.0/5.0", "2.0/5.0", "3.0/5.0", "4.0/5.0", "5.0/5.0"]
    eos = tok.token_to_id("<|endoftext|>")
    prompts = [tok.encode(p, add_special_tokens=False).ids for p in PROMPTS]
    out = rating_over_set(model, prompts, answer_set_ids(tok, strings, eos), values, eos, token_budget=64)  # chunks
    for prompt, got in zip(PROMPTS, out):
        logps = [string_logprob(model, tok, prompt, s) for s in strings]
        z = sum(math.exp(lp) for lp in logps)
        probs = [math.exp(lp) / z for lp in logps]
        assert got["probabilities"] == pytest.approx(probs, abs=1e-6)
        assert got["expected"] == pytest.approx(sum(p * v for p, v in zip(probs, values)), abs=1e-5)
        assert got["argmax"] == values[max(range(5), key=lambda k: logps[k])]
    # the random model does not put all its mass on one string: the expected value is not the argmax
    assert all(abs(o["expected"] - o["argmax"]) > 0.01 for o in out)
    with pytest.raises(ValueError, match="encode to the same tokens"):
        answer_set_ids(tok, ["1.0", "1.0"], eos)


def test_evaluate_rating_expected_and_greedy(setup):
    tmp, tok, model = setup
    base = ["--checkpoint", str(tmp / "ckpt"), "--benchmark", str(tmp / "bench"), "--task", "rating",
            "--device", "cpu", "--fallback-rating", "3.0", "--batch-size", "2"]
    m = evaluate.main(base + ["--out", str(tmp / "expected"), "--rating.decoding=expected",
                              "--rating.p5_filter=true", "--score_token_budget=100"])
    predictions = [json.loads(line) for line in open(tmp / "expected" / "predictions.jsonl")]
    targets = [1.0, 2.0, 3.0, 4.0]
    values = [1.0, 2.0, 3.0, 4.0, 5.0]  # default: the integers of the scale
    for p, prompt in zip(predictions, PROMPTS):
        logps = [string_logprob(model, tok, prompt, f"{v:.1f}/5.0") for v in values]
        z = sum(math.exp(lp) for lp in logps)
        assert p["expected"] == pytest.approx(sum(math.exp(lp) / z * v for lp, v in zip(logps, values)), abs=1e-5)
    hand = [p["expected"] for p in predictions]
    rmse = math.sqrt(sum((h - t) ** 2 for h, t in zip(hand, targets)) / 4)
    assert m["summary"]["RMSE"]["mean"] == pytest.approx(rmse) and m["expected"]["n"] == 4
    kept = [(h, t) for h, t in zip(hand, targets) if 1.0 <= round(h, 1) <= 4.9]
    assert m["expected"]["n_p5_kept"] == len(kept)
    assert m["argmax_over_set"]["MAE"] == pytest.approx(sum(abs(p["argmax"] - t) for p, t in zip(predictions, targets))
                                                        / 4)
    table = (tmp / "expected" / "metrics.md").read_text()
    assert "RMSE_argmax" in table and "5.0/5.0" in table

    # greedy: one deterministic run, the texts of greedy decoding
    g = evaluate.main(base + ["--out", str(tmp / "greedy"), "--rating.decoding=greedy", "--max-new-tokens", "5"])
    assert set(g["per_seed"]) == {"greedy"}
    saved = [json.loads(line)["outputs"]["greedy"]["text"] for line in open(tmp / "greedy" / "predictions.jsonl")]
    eos = tok.token_to_id("<|endoftext|>")
    ref = generate_text(model, tok, PROMPTS, GenerationConfig(max_new_tokens=5, eos_token_id=eos, pad_token_id=eos))
    assert saved == [r[0].text for r in ref]
    assert json.dumps(g["per_seed"]["greedy"]) == json.dumps(rating_metrics(saved, targets, 3.0))


def test_p5_filter_hand_worked():
    # kept: the first number written "1.0" .. "4.9"; dropped: "5.0", integers, two decimals, no number
    assert [p5_filter_keeps(t) for t in ("4.0", "1.0/5.0", "4.9", "5.0", "4", "4.25", "great", "0.9")] == \
        [True, True, True, False, False, False, False, False]
    m = rating_metrics(["4.0", "5.0", "2.0/5.0", "x"], [5, 5, 1, 3], fallback=3.0, p5_filter=True)
    # kept: "4.0" (error -1) and "2.0/5.0" (error +1): RMSE = MAE = 1 over 2 kept; unfiltered: errors -1, 0, 1, 0
    assert (m["n_p5_kept"], m["RMSE_p5_filter"], m["MAE_p5_filter"]) == (2, 1.0, 1.0)
    assert m["RMSE"] == pytest.approx(math.sqrt(2 / 4))
    n = numeric_rating_metrics([4.96, 4.94, 0.2], [5, 4, 1], p5_filter=True)
    # 4.96 -> "5.0" dropped, 4.94 -> "4.9" kept (error 0.94), 0.2 -> clipped to 1 (error 0) but written "0.2": dropped
    assert n["n_p5_kept"] == 1 and n["MAE_p5_filter"] == pytest.approx(0.94) and n["n_clipped"] == 1
    assert n["MAE"] == pytest.approx((0.04 + 0.94 + 0.0) / 3)


def test_rating_settings_are_checked_naming_the_key():
    from config import ConfigError

    base = ["--checkpoint", "c", "--benchmark", "b", "--task", "rating", "--out", "o"]
    assert evaluate.parse_args(base).rating.decoding == "sample"  # the paper's numbers stay the default
    for extra, pattern in ((["--rating.decoding=mean"], r"key 'rating.decoding' = 'mean': must be one of"),
                           (["--rating.value_format=r{rating}"], r"key 'rating.value_format' = 'r\{rating\}': is not "
                                                                 r"a format of \{value\} and \{high\}"),
                           (["--rating.values=[]"], r"key 'rating.values'"),
                           (["--score_token_budget=0"], r"key 'score_token_budget' = 0: must be >= 1")):
        with pytest.raises(ConfigError, match=pattern):
            evaluate.parse_args(base + extra)
    assert evaluate.parse_args(base[:5] + ["p5", "--out", "o", "--templates", "2-3, 2-13"]).p5.templates == \
        ["2-3", "2-13"]
