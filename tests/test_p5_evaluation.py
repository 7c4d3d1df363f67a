"""evaluate.py --task p5 (evaluation/p5_tasks.py) end to end on a tiny random MPT, a BPE trained here, and a small
fixture in the P5 builder's file schema (BENCH/p5/<template>_<split>.jsonl, written below): every family, seen and
unseen templates; each template's metrics recomputed from predictions.jsonl, and the scores behind them checked
against full forwards of the model."""
import dataclasses
import json
import math
import random

import pytest
import torch

import evaluate
from data.prepare.bpe import train_bpe
from evaluation.metrics import candidate_ranking_metrics, ranking_metrics
from evaluation.p5_tasks import _as_id, ranked_item_ids, read_template_file, template_files
from evaluation.text_metrics import text_generation_metrics
from model.checkpoint import load_model, save_model
from model.config import MPTConfig
from model.mpt import build_model

TITLES = ["Rose Lip Balm", "Argan Hair Oil", "Gel Nail Polish", "Matte Lipstick", "Clay Face Mask", "Shea Butter",
          "Tea Tree Shampoo", "Volume Mascara", "Mint Lip Balm", "Aloe Gel", "Rose Water", "Night Cream"]
USERS = 4
N_CANDIDATES = 12


def p5_fixture(bench):
    """One file per template, in the builder's record schema (evaluation/p5_tasks.py docstring); P5's wording."""
    rng = random.Random(0)
    files = {}

    def add(tid, record):
        files.setdefault(tid, []).append({"template": tid, **record})

    for u in range(1, USERS + 1):
        history = [str(10 + (u + k) % 12) for k in range(3)]
        target = str(10 + (u + 3) % 12)
        name = f"user_{u}"
        rating = 1 + u % 5
        base = {"user": str(u)}
        add("1-6", {**base, "family": "rating", "seen": True, "target_text": str(rating), "target_rating": rating,
                    "prompt": f"What star rating do you think {name} will give item_{target} ? ( 1 being lowest and "
                              f"5 being highest )"})
        add("1-10", {**base, "family": "rating", "seen": False, "target_text": str(rating), "target_rating": rating,
                     "prompt": f"Predict {name} 's preference towards {TITLES[u]} ( 1 being lowest and 5 being "
                               f"highest )"})
        add("2-3", {**base, "family": "sequential", "seen": True, "target_text": target, "target_item_id": target,
                    "history_item_ids": history, "prompt": f"Here is the purchase history list of user_{u} : \n "
                                                           f"{' , '.join(history)} \n try to recommend next item to "
                                                           f"the user"})
        add("2-13", {**base, "family": "sequential", "seen": False, "target_text": target, "target_item_id": target,
                     "history_item_ids": history, "prompt": f"According to the purchase history of {name} : \n "
                                                            f"{' -> '.join(history)} \n Can you recommend the next "
                                                            f"possible item to the user ?"})
        add("3-3", {**base, "family": "explanation", "seen": True,
                    "prompt": f"Help user_{u} generate a {rating}-star explanation about this product : \n {TITLES[u]}",
                    "target_text": f"the {TITLES[u].split()[-1].lower()} is very good for the price"})
        add("3-12", {**base, "family": "explanation", "seen": False, "target_text": "great price and it works",
                     "prompt": f"According to the feature word price , generate a {rating}-star explanation for "
                               f"{name} about item_{target}"})
        add("4-1", {**base, "family": "review", "seen": True, "target_text": "Works great",
                    "prompt": f"Write a short sentence to summarize the following product review from user_{u} : \n "
                              f"I love this {TITLES[u]} , it works great"})
        add("4-4", {**base, "family": "review", "seen": False, "target_text": str(rating), "target_rating": rating,
                    "prompt": f"According to the following review written by {name} : \n It is fine \n Predict the "
                              f"associated star rating ( 1 being lowest and 5 being highest )"})
        candidates = [target] + rng.sample([str(i) for i in range(30, 90)], N_CANDIDATES - 1)
        rng.shuffle(candidates)
        add("5-1", {**base, "family": "direct", "seen": True, "target_text": "yes", "target_item_id": target,
                    "prompt": f"Will user_{u} likely to interact with item_{target} ?", "candidates": candidates,
                    "candidate_prompts": [f"Will user_{u} likely to interact with item_{c} ?" for c in candidates],
                    "yes": "yes", "no": "no"})
        for tid, seen, text in (("5-5", True, f"Which item of the following to recommend for {name} ? \n "),
                                ("5-8", False, f"We want to make recommendation for user_{u} .  Select the best item "
                                 f"from these candidates : \n ")):
            add(tid, {**base, "family": "direct", "seen": seen, "prompt": text + " , ".join(candidates),
                      "target_text": target, "target_item_id": target, "candidates": candidates,
                      "candidate_texts": [f"item_{c}" for c in candidates]})
    (bench / "p5").mkdir(parents=True)
    for tid, records in files.items():
        with open(bench / "p5" / f"{tid}_test.jsonl", "w") as f:
            for x in records:
                f.write(json.dumps(x) + "\n")
    return files


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("p5_eval")
    files = p5_fixture(tmp / "bench")
    texts = [x["prompt"] + " " + x["target_text"] for records in files.values() for x in records]
    texts += [p for x in files["5-1"] for p in x["candidate_prompts"]] + ["yes no 1.0 2.5 4.9 5.0"]
    tok = train_bpe(texts, 400, tmp / "ckpt" / "tokenizer.json")
    cfg = dataclasses.replace(MPTConfig.from_name("tiny"), max_seq_len=256)
    save_model(build_model(cfg, seed=2).state_dict(), cfg, tmp / "ckpt")
    out = tmp / "out"
    metrics = evaluate.main(["--checkpoint", str(tmp / "ckpt"), "--benchmark", str(tmp / "bench"), "--task", "p5",
                             "--out", str(out), "--device", "cpu", "--batch-size", "4", "--fallback-rating", "3.0",
                             "--rating.decoding=expected", "--num-beams", "4", "--num-return-sequences", "4",
                             "--max-new-tokens", "4", "--p5.max_new_tokens_text=6", "--score_token_budget=600"])
    predictions = {}
    for line in open(out / "predictions.jsonl"):
        p = json.loads(line)
        predictions.setdefault(p["template"], []).append(p)
    return tmp, tok, load_model(tmp / "ckpt").eval(), files, metrics, predictions


def test_every_template_is_evaluated_and_tabled_seen_before_unseen(setup):
    tmp, _, _, files, metrics, predictions = setup
    templates = metrics["templates"]
    assert set(templates) == set(files) == set(predictions)
    for tid, records in files.items():
        assert templates[tid]["seen"] == records[0]["seen"] and templates[tid]["n"] == USERS
    assert templates["4-4"]["kind"] == "rating" and templates["4-1"]["kind"] == "review"
    table = (tmp / "out" / "metrics.md").read_text()
    for seen, unseen in (("1-6", "1-10"), ("2-3", "2-13"), ("3-3", "3-12"), ("5-5", "5-8")):
        a, b = table.index(f"| {seen} | seen |"), table.index(f"| {unseen} | unseen |")
        assert a < b and table[a:b].count("**") == 0  # one family's table: seen row, then unseen row
    assert "**review summarization**" in table and "| 4-4 | unseen |" in table and "BLEU-2" in table
    saved = json.loads((tmp / "out" / "metrics.json").read_text())
    assert saved["templates"]["2-3"]["metrics"]["HR@10"] == metrics["templates"]["2-3"]["metrics"]["HR@10"]


def full_logprob(model, tok, prompt, continuation_ids) -> float:
    p = tok.encode(prompt, add_special_tokens=False).ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([p + continuation_ids]))[0], -1)
    return sum(float(logp[len(p) - 1 + k, t]) for k, t in enumerate(continuation_ids))


def test_direct_candidates_by_likelihood(setup):
    _, tok, model, files, metrics, predictions = setup
    eos = tok.token_to_id("<|endoftext|>")
    for tid in ("5-5", "5-8"):
        preds = predictions[tid]
        m = metrics["templates"][tid]["metrics"]
        recomputed = candidate_ranking_metrics([p["candidates"] for p in preds], [p["logprob"] for p in preds],
                                               [p["target_item_id"] for p in preds])
        assert {k: m[k] for k in recomputed} == pytest.approx(recomputed)
        # the score of a candidate: log P(its text + EOS | prompt) of one full forward
        x, p = files[tid][1], preds[1]
        for j in (0, 5, N_CANDIDATES - 1):
            ids = tok.encode(x["candidate_texts"][j], add_special_tokens=False).ids + [eos]
            assert p["logprob"][j] == pytest.approx(full_logprob(model, tok, x["prompt"], ids), abs=1e-4)
    assert "length_normalised" in metrics["templates"]["5-5"]["metrics"]


def test_a_longer_context_at_evaluation_scores_as_the_trained_one(setup, tmp_path):
    """max_seq_len at evaluation: ALiBi has no position table, so the same weights under a shorter config fail the
    length check by name, and with the context lifted score exactly as the 256-token checkpoint does."""
    tmp, _, _, _, _, predictions = setup
    short = dataclasses.replace(MPTConfig.from_name("tiny"), max_seq_len=16)
    save_model(build_model(dataclasses.replace(short, max_seq_len=256), seed=2).state_dict(), short, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "tokenizer.json").write_bytes((tmp / "ckpt" / "tokenizer.json").read_bytes())
    args = ["--checkpoint", str(tmp_path / "ckpt"), "--benchmark", str(tmp / "bench"), "--task", "p5", "--device",
            "cpu", "--p5.templates=[5-5]", "--score_token_budget=600"]
    with pytest.raises(ValueError, match="max_seq_len=16"):
        evaluate.main(args + ["--out", str(tmp_path / "fails")])
    evaluate.main(args + ["--out", str(tmp_path / "out"), "--max_seq_len=256"])
    lifted = [json.loads(line) for line in open(tmp_path / "out" / "predictions.jsonl")]
    assert [p["candidates"] for p in lifted] == [p["candidates"] for p in predictions["5-5"]]
    assert (sum((p["logprob"] for p in lifted), [])
            == pytest.approx(sum((p["logprob"] for p in predictions["5-5"]), []), abs=1e-6))


def test_direct_yes_no_ranks_by_p_yes(setup):
    _, tok, model, files, metrics, predictions = setup
    preds, m = predictions["5-1"], metrics["templates"]["5-1"]["metrics"]
    recomputed = candidate_ranking_metrics([p["candidates"] for p in preds], [p["p_yes"] for p in preds],
                                           [p["target_item_id"] for p in preds])
    assert {k: m[k] for k in recomputed} == pytest.approx(recomputed)
    # P(yes) = softmax over the yes and no logits at the answer's first token, from a full forward
    yes, no = (tok.encode(a, add_special_tokens=False).ids[0] for a in ("yes", "no"))
    prompt = files["5-1"][2]["candidate_prompts"][3]
    with torch.no_grad():
        logits = model(torch.tensor([tok.encode(prompt, add_special_tokens=False).ids]))[0, -1]
    assert preds[2]["p_yes"][3] == pytest.approx(float(torch.softmax(logits[[yes, no]], 0)[0]), abs=1e-5)


def test_text_families_and_rating_and_sequential_agree_with_predictions(setup):
    _, _, _, files, metrics, predictions = setup
    for tid, order in (("3-3", 4), ("3-12", 4), ("4-1", 2)):
        preds = predictions[tid]
        m = metrics["templates"][tid]["metrics"]
        assert m == pytest.approx(text_generation_metrics([p["text"] for p in preds],
                                                          [p["target_text"] for p in preds], (order,)))
        assert f"BLEU-{order}" in m
    for tid in ("1-6", "1-10", "4-4"):  # expected rating over P5's 41 strings "1.0" .. "5.0"
        preds = predictions[tid]
        assert len(preds[0]["probabilities"]) == 41 and "4.9" in preds[0]["probabilities"]
        rmse = math.sqrt(sum((p["expected"] - p["target_rating"]) ** 2 for p in preds) / len(preds))
        assert metrics["templates"][tid]["metrics"]["RMSE"] == pytest.approx(rmse)
    for tid in ("2-3", "2-13"):  # the targets are written as ids: exact-id matching
        preds, m = predictions[tid], metrics["templates"][tid]["metrics"]
        assert m["item_match"] == "exact_id"
        recomputed = ranking_metrics([p["ranked_item_ids"] for p in preds], [p["target_item_id"] for p in preds])
        assert {k: m[k] for k in recomputed} == pytest.approx(recomputed)
        for p in preds:  # the ranked list is the outputs read as ids, in log-prob order
            assert p["ranked_item_ids"] == ranked_item_ids([o["text"] for o in p["outputs"]], True, set())
    assert _as_id(" item_12 ") == "12" and _as_id("12") == "12"


def test_exact_id_parsing_hand_worked():
    # outputs in rank order: "item_12" and "12" are one item (the repeat keeps rank 1); "great" and "1 2" are not ids
    # and leave the list (P5 drops what int() cannot parse), so "7" is rank 2 and "30" rank 3
    texts = ["item_12", "great", "12", " 7", "1 2", "30"]
    assert ranked_item_ids(texts, numeric=True, known=set()) == ["12", "7", "30"]
    assert ranking_metrics([ranked_item_ids(texts, True, set())], ["30"], ks=(2, 5))["NDCG@5"] == \
        pytest.approx(1 / math.log2(4))
    # non-numeric ids (e.g. ASINs): an output counts only when it is a known id
    assert ranked_item_ids(["B00X", "B00Y ", "nope"], numeric=False, known={"B00X", "B00Y"}) == ["B00X", "B00Y"]


def test_bad_files_and_templates_are_named(setup, tmp_path):
    tmp, *_ = setup
    bench = tmp / "bench"
    with pytest.raises(ValueError, match=r"p5.templates: \['9-x'\] are not P5 template ids"):
        template_files(bench, "test", ["2-3", "9-x"])
    with pytest.raises(FileNotFoundError, match=r"no file for \['2-7'\].*present: \['1-6', '1-10'"):
        template_files(bench, "test", ["2-7"])
    assert list(template_files(bench, "test", ["2-13", "1-6"])) == ["1-6", "2-13"]  # P5's order
    assert list(template_files(bench, "test"))[:3] == ["1-6", "1-10", "2-3"]  # 1-10 after 1-6, not before 1-2
    with pytest.raises(FileNotFoundError, match="no P5 template files"):
        template_files(tmp_path / "nowhere", "test")
    (tmp_path / "p5").mkdir()
    good = json.loads(open(bench / "p5" / "5-5_test.jsonl").readline())
    cases = [({k: v for k, v in good.items() if k != "candidate_texts"}, r"5-5_test.jsonl:2: missing key\(s\) "
              r"\['candidate_texts'\]"),
             ({**good, "candidate_texts": good["candidate_texts"][:-1]}, r"5-5_test.jsonl:2: 11 candidate_texts for 12"),
             ({**good, "target_item_id": "999"}, r"5-5_test.jsonl: record 2 \(user 1\): target_item_id '999' is not "
              r"among the candidates"),
             ({**good, "template": "5-6"}, r"5-5_test.jsonl: record 2 \(user 1\): template '5-6' in the file of "
              r"template 5-5")]
    for bad, pattern in cases:
        path = tmp_path / "p5" / "5-5_test.jsonl"
        path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(ValueError, match=pattern):
            read_template_file(path)


def test_a_blank_infilling_model_on_every_family(setup):
    """--objective infill: every template file evaluated with [gMASK] spans (generation and scoring with the dynamic
    position mechanism); a direct candidate's score is one forward over the fine-tuning collator's example of that
    prompt and candidate (data/formats/infilling.py pair_infilled), and P(yes) compares the spans' first tokens."""
    from data.formats.infilling import EntityTrie, pair_infilled
    from data.formats.tokenizer import add_infill_tokens

    tmp, tok, _, files, _, _ = setup
    cfg = dataclasses.replace(MPTConfig.from_name("tiny"), max_seq_len=256, intra_positions=32)
    model = build_model(cfg, seed=3).eval()
    with torch.no_grad():
        model.wte_intra.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(4))  # as if trained
    save_model(model.state_dict(), cfg, tmp / "infill-ckpt")
    (tmp / "infill-ckpt" / "tokenizer.json").write_bytes((tmp / "ckpt" / "tokenizer.json").read_bytes())
    out = tmp / "infill-out"
    metrics = evaluate.main(["--checkpoint", str(tmp / "infill-ckpt"), "--benchmark", str(tmp / "bench"),
                             "--task", "p5", "--objective", "infill", "--out", str(out), "--device", "cpu",
                             "--batch-size", "4", "--fallback-rating", "3.0", "--rating.decoding=expected",
                             "--num-beams", "3", "--num-return-sequences", "3", "--max-new-tokens", "4",
                             "--p5.max_new_tokens_text=6", "--score_token_budget=600"])
    assert set(metrics["templates"]) == set(files)
    preds = [json.loads(line) for line in open(out / "predictions.jsonl")]
    ids = add_infill_tokens(tok, cfg.vocab_size)
    x, p = files["5-5"][2], next(q for q in preds if q["template"] == "5-5" and q["user"] == "3")
    prompt = tok.encode(x["prompt"], add_special_tokens=False).ids
    for j in (0, 7):
        answer = tok.encode(x["candidate_texts"][j], add_special_tokens=False).ids
        ex = pair_infilled(prompt, answer, [], ids, EntityTrie())  # no entities listed, no catalog: empty pool
        with torch.no_grad():
            logits = model(torch.tensor([ex.input_ids]), positions=torch.tensor([ex.positions]),
                           prefix_end=torch.tensor([ex.prefix_end]), intra_positions=torch.tensor([ex.intra]))[0]
        log_probs = torch.log_softmax(logits, -1)
        n = ex.prefix_end
        want = sum(float(log_probs[n + k, t]) for k, t in enumerate(ex.targets[n:]))
        assert p["logprob"][j] == pytest.approx(want, abs=1e-4)
    yes_no = next(q for q in preds if q["template"] == "5-1")
    assert all(0 < v < 1 for v in yes_no["p_yes"]) and len(set(yes_no["p_yes"])) > 1
