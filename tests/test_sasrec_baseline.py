"""scripts/sasrec_baseline.py (RecBole's SASRec as a baseline row on a P5 build) on a small MovieLens-100K P5 build
made here: the training sequences are exactly what the build's corpus sees (no held-out interaction, every trained
interaction of the instruction pairs); and, where RecBole is importable (requirements-baselines.txt, e.g.
PYTHONPATH=/tmp/rbpkgs), one epoch end to end: the metrics file's structure, its metrics recomputed by hand from
predictions.jsonl, the sampled users those of evaluate.py --sample, and RecBole's own full-sort test metrics equal to
ours. Skipped without ../shared/data (the source data and the tokenizer)."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from data.formats.evalfiles import sample_examples
from data.prepare import p5_tasks as P
from tests.conftest import REPO_ROOT, SHARED_DATA

SCRIPT = REPO_ROOT / "scripts" / "sasrec_baseline.py"
TEMPLATES = ["2-3", "2-13", "5-5", "5-8"]
N_USERS, SAMPLE = 30, 20
pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data folder {SHARED_DATA} not found (set "
                                                                     f"RECGPT_SHARED_DATA)")
needs_recbole = pytest.mark.skipif(importlib.util.find_spec("recbole") is None,
                                   reason="recbole is not importable: pip install --target DIR --no-deps -r "
                                          "requirements-baselines.txt and run with PYTHONPATH=DIR")


def _script():
    spec = importlib.util.spec_from_file_location("sasrec_baseline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # recbole itself is imported only by import_recbole()
    return module


def _lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """scripts/papers.sh's MovieLens P5 build (titles, 20 history items), its first N_USERS users."""
    out = tmp_path_factory.mktemp("p5-ml")
    cfg = P.config_lib.load(P.P5TasksConfig, REPO_ROOT / "configs/data/p5-movielens.yaml", [
        f"--out_dir={out}", f"--tokenizer.path={SHARED_DATA / 'tokenizer' / 'gpt-neox-20b.json'}",
        f"--source.path={SHARED_DATA / 'movielens-100k'}", "--render.items=title", "--render.max_history=20",
        f"--max_users={N_USERS}"])
    P.build(cfg, log=lambda *a: None)
    return out


def test_training_sequences_are_what_the_corpus_trains_on(build, tmp_path):
    S = _script()
    b = S.load_build(build)
    assert len(b["users"]) == N_USERS and b["max_history"] == 20
    held = {(h["user"], h["item"]) for h in _lines(build / "heldout.jsonl")}
    trained = {(u, i) for u in b["users"] for i in b["train"][u]}
    assert trained and not trained & held
    # every interaction a training pair shows (sequential, direct and rating pairs) is in the training sequences
    shown = {(p["user"], item) for p in _lines(build / "instructions" / "instructions.jsonl")
             for item, _ in p["interactions"]}
    assert shown <= trained
    # and each user's training sequence is the whole sequence less the held-out interactions, in order
    for u in b["users"]:
        assert b["train"][u] == [i for i in b["seqs"][u] if (u, i) not in held]
    counts = S.write_atomic_files(b, tmp_path / "p5", max_len=50)
    rows = [line.split("\t") for line in (tmp_path / "p5" / "p5.train.inter").read_text().splitlines()[1:]]
    assert counts["train"] == len(rows) == sum(len(v) - 1 for v in b["train"].values() if v)
    assert all((u, target) not in held and len(hist.split()) <= 50 for u, hist, target in rows)
    test = [line.split("\t") for line in (tmp_path / "p5" / "p5.test.inter").read_text().splitlines()[1:]]
    records = {x["user"]: x for x in _lines(build / "eval/p5-movielens/p5/2-3_test.jsonl")}
    assert len(test) == len(records)
    for u, hist, target in test:  # the test file's histories are the sequential records' own
        assert hist.split() == records[u]["history_item_ids"] and target == records[u]["target_item_id"]


@needs_recbole
def test_one_epoch_end_to_end(build, tmp_path):
    out = tmp_path / "sasrec"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run([sys.executable, str(SCRIPT), "--p5-build", str(build), "--templates", ",".join(TEMPLATES),
                    "--sample", str(SAMPLE), "--epochs", "1", "--out", str(out)], check=True, env=env, cwd=REPO_ROOT,
                   capture_output=True, text=True, timeout=3600)
    metrics = json.loads((out / "metrics.json").read_text())
    preds = _lines(out / "predictions.jsonl")
    assert list(metrics["p5"]) == TEMPLATES
    assert metrics["sasrec"]["model"]["hidden_size"] == 64 and metrics["sasrec"]["epochs_run"] == 1
    assert metrics["sasrec"]["model"]["loss_type"] == "CE" and metrics["sasrec"]["model"]["MAX_ITEM_LIST_LENGTH"] == 50
    for tid in TEMPLATES:
        row = metrics["p5"][tid]
        assert row["seen"] == (tid in ("2-3", "5-5")) and row["n"] == SAMPLE and row["n_in_file"] == N_USERS
        # the same metrics as evaluate.py --task p5 lays them out (what scripts/papers.py report reads)
        assert metrics["templates"][tid]["metrics"] == row["sasrec"] and metrics["templates"][tid]["n"] == SAMPLE
        records = _lines(build / f"eval/p5-movielens/p5/{tid}_test.jsonl")
        mine = [p for p in preds if p["template"] == tid]
        assert [p["user"] for p in mine] == [x["user"] for x in sample_examples(records, SAMPLE, 0)]
        ranks = []
        for p in mine:
            if row["kind"] == "sequential":
                assert len(p["ranked_item_ids"]) == 20
                assert (p["target_item_id"] in p["ranked_item_ids"]) == (p["target_rank"] <= 20)
                if p["target_rank"] <= 20:
                    assert p["ranked_item_ids"][p["target_rank"] - 1] == p["target_item_id"]
                ranks.append(p["target_rank"])
            else:
                assert row["kind"] == "direct_candidates" and len(p["candidates"]) == 100
                t = p["candidates"].index(p["target_item_id"])
                s = p["logprob"]
                assert all(v <= 0 for v in s)  # log-probabilities of the next item over the catalog
                ranks.append(1 + sum(v > s[t] for v in s) + sum(v == s[t] for v in s[:t]))
        m = row["sasrec"]
        for k in ((1, 5, 10) if row["kind"] != "sequential" else (5, 10)):
            assert m[f"HR@{k}"] == pytest.approx(sum(r <= k for r in ranks) / len(ranks))
            if k > 1:
                assert m[f"NDCG@{k}"] == pytest.approx(sum(1 / math.log2(r + 1) for r in ranks if r <= k) / len(ranks))
    # SASRec scores 2-3 and 2-13 (and 5-5 and 5-8) alike: the same histories and candidates
    for a, b in (("2-3", "2-13"), ("5-5", "5-8")):
        assert metrics["p5"][a]["sasrec"]["HR@10"] == metrics["p5"][b]["sasrec"]["HR@10"]
    check = metrics["cross_check"]
    assert check["ours"]["n_users"] == N_USERS
    for k in (5, 10):
        assert check["recbole"][f"hit@{k}"] == pytest.approx(check["ours"][f"HR@{k}"], abs=1e-6)
        assert check["recbole"][f"ndcg@{k}"] == pytest.approx(check["ours"][f"NDCG@{k}"], abs=1e-6)
