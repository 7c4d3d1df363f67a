"""Baselines and example sampling against hand-worked cases."""
import json
import math

import pytest

from evaluation import baselines
from data.formats.evalfiles import sample_examples

STATS = {"interactions": 11, "rated_interactions": 3, "mean_rating": 11 / 3,
         "items": {"1": [3, 2, 9.0], "2": [5, 0, 0.0], "3": [3, 1, 2.0], "10": [3, 0, 0.0]}}


def write_benchmark(root):
    root.mkdir()
    (root / "train_stats.json").write_text(json.dumps(STATS))
    rows = {"next_item_test.jsonl": [{"user": "a", "prompt": "p", "target_item_id": "1"},
                                     {"user": "b", "prompt": "p", "target_item_id": "4"}],
            "rating_test.jsonl": [{"user": "a", "prompt": "p", "target_item_id": "1", "target_rating": 5.0},
                                  {"user": "b", "prompt": "p", "target_item_id": "2", "target_rating": 3.0}]}
    for name, records in rows.items():
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def test_most_popular_ties_by_item_id():
    assert baselines.most_popular(STATS, k=3) == ["2", "1", "3"]  # 1, 3 and 10 tie at 3: numeric id order


def test_baselines_hand_worked(tmp_path):
    r = baselines.run(write_benchmark(tmp_path / "b"))
    pop = r["next_item"]["most_popular"]  # list [2, 1, 3, 10]: user a's target at rank 2, user b's absent
    assert pop["HR@5"] == 0.5 and pop["NDCG@5"] == pytest.approx(0.5 / math.log2(3))
    glob, item = r["rating"]["global_mean"], r["rating"]["per_item_mean"]
    # global mean 11/3 for both: errors 4/3 and 2/3
    assert glob["RMSE"] == pytest.approx(math.sqrt((16 / 9 + 4 / 9) / 2)) and glob["MAE"] == pytest.approx(1.0)
    # item 1: 9/2 = 4.5 (error 0.5); item 2 was never rated in training: global mean (error 2/3)
    assert item["RMSE"] == pytest.approx(math.sqrt((0.25 + 4 / 9) / 2)) and item["MAE"] == pytest.approx(7 / 12)


def test_missing_train_stats_names_the_file(tmp_path):
    (tmp_path / "next_item_test.jsonl").write_text(json.dumps({"user": "a", "prompt": "p", "target_item_id": "1"}))
    with pytest.raises(FileNotFoundError, match="train_stats.json"):
        baselines.run(tmp_path)


def test_sample_is_seeded_ordered_and_a_subset():
    xs = list(range(100))
    a, b = sample_examples(xs, 10, seed=3), sample_examples(xs, 10, seed=3)
    assert a == b == sorted(a) and len(set(a)) == 10 and a != sample_examples(xs, 10, seed=4)
    assert sample_examples(xs, None) == xs and sample_examples(xs, 500) == xs
    with pytest.raises(ValueError, match="--sample"):
        sample_examples(xs, 0)


def test_report_tables_and_paired_difference(tmp_path):
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location("report", pathlib.Path(__file__).parents[1] / "scripts" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    for name, ranks in (("a", [1, 3, None, None]), ("b", [None, 3, 2, None])):
        d = tmp_path / name
        d.mkdir()
        (d / "predictions.jsonl").write_text("".join(json.dumps({"user": str(u), "rank": r}) + "\n"
                                                     for u, r in enumerate(ranks)))
        (d / "metrics.json").write_text(json.dumps({"settings": {"task": "next_item", "n_examples": 4},
                                                    "grounded": {"HR@5": 0.5, "NDCG@5": 0.1, "HR@10": 0.5, "NDCG@10": 0.1}}))
    # per user, a - b: HR@5 (1, 0, -1, 0) -> mean 0; NDCG@5 (1, 0, -1/log2(3), 0) -> 0.25 * (1 - 0.6309)
    text = "\n".join(report.comparisons([("A", tmp_path / "a"), ("B", tmp_path / "b")], None))
    assert "| +0.0000 [" in text and f"| {0.25 * (1 - 1 / math.log2(3)):+.4f} [" in text
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    metrics["constrained"] = {"HR@5": 0.25, "NDCG@5": 0.2, "HR@10": 0.75, "NDCG@10": 0.3}
    (tmp_path / "a" / "metrics.json").write_text(json.dumps(metrics))
    table = report.tables([("A", tmp_path / "a")], None, [("paper", ".1,.2,.3,.4")], "T")
    assert "| A | 0.5000 | 0.1000 | 0.5000 | 0.1000 | 4 |" in table and "| paper | 0.1000 | 0.2000 |" in table
    assert "| A, trie-constrained beams | 0.2500 | 0.2000 | 0.7500 | 0.3000 | 4 |" in table


def test_p5_template_baselines_hand_worked(tmp_path):
    """BENCHMARK/p5/: direct templates ranked by training popularity within each user's candidates (ties by item id,
    whatever the list's order), sequential by most popular, rating templates by the global and per-item means."""
    bench = write_benchmark(tmp_path / "b")
    (bench / "p5").mkdir()
    files = {
        "5-5": [{"user": "a", "family": "direct", "template": "5-5", "seen": True, "prompt": "p", "target_text": "3",
                 "target_item_id": "3", "candidates": ["10", "3", "2", "1"], "candidate_texts": ["10", "3", "2", "1"]},
                {"user": "b", "family": "direct", "template": "5-5", "seen": True, "prompt": "p", "target_text": "2",
                 "target_item_id": "2", "candidates": ["1", "2"], "candidate_texts": ["1", "2"]}],
        "2-13": [{"user": "a", "family": "sequential", "template": "2-13", "seen": False, "prompt": "p",
                  "target_text": "1", "target_item_id": "1", "history_item_ids": ["2"]}],
        "1-10": [{"user": "a", "family": "rating", "template": "1-10", "seen": False, "prompt": "p",
                  "target_text": "5", "target_rating": 5.0, "item_id": "1"}]}
    for tid, records in files.items():
        (bench / "p5" / f"{tid}_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    p5 = baselines.run(bench)["p5"]
    # user a: popularity 10:3, 3:3, 2:5, 1:3 -> 2, 1, 3, 10 (ties by item id): the target 3 is third;
    # user b: 2:5 before 1:3 -> the target is first
    direct = p5["5-5"]["most_popular"]
    assert direct["HR@1"] == 0.5 and direct["NDCG@5"] == pytest.approx((1 / math.log2(4) + 1) / 2)
    assert p5["2-13"]["most_popular"]["HR@5"] == 1.0 and p5["2-13"]["seen"] is False  # item 1 is second
    assert p5["1-10"]["per_item_mean"]["RMSE"] == pytest.approx(0.5)  # item 1: 9.0 / 2 = 4.5 vs 5
    assert p5["1-10"]["global_mean"]["RMSE"] == pytest.approx(5 - 11 / 3)
    assert "| 5-5 | seen | most popular | HR@1 0.5000" in baselines.markdown(baselines.run(bench))


def test_most_popular_within_candidates_and_the_paired_comparison(tmp_path):
    """Within each user's candidates, by training interactions (ties by item id, not list order); a model that
    ranked the same candidates is compared user by user with it."""
    import importlib.util
    import pathlib

    bench = write_benchmark(tmp_path / "b")
    rows = [{"user": "a", "prompt": "p", "target_item_id": "1", "candidates": ["3", "1", "9"]},
            {"user": "b", "prompt": "p", "target_item_id": "4", "candidates": ["4", "10", "3"]}]
    (bench / "next_item_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = baselines.run(bench)
    r = results["next_item"]["most_popular_candidates"]
    # a: counts 3 -> 3, 1 -> 3, 9 -> 0; 1 and 3 tie, item id 1 first: rank 1. b: 4 -> 0 (unseen), 10 -> 3, 3 -> 3:
    # rank 3
    assert r["ranks"] == {"a": 1, "b": 3} and r["HR@1"] == 0.5 and r["HR@5"] == 1.0
    assert r["NDCG@5"] == pytest.approx((1 + 1 / math.log2(4)) / 2)
    spec = importlib.util.spec_from_file_location("report", pathlib.Path(__file__).parents[1] / "scripts" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    base = tmp_path / "base"
    base.mkdir()
    (base / "metrics.json").write_text(json.dumps(results))
    model = tmp_path / "m"
    model.mkdir()  # the model ranks a's target second, b's first
    (model / "metrics.json").write_text(json.dumps({"settings": {"task": "next_item", "n_examples": 2},
                                                    "candidates": {k: 0.5 for k in report.CANDIDATE_KEYS}}))
    (model / "predictions.jsonl").write_text("".join(json.dumps(
        {"user": u, "target_item_id": t, "candidates": c, "logprob": s}) + "\n" for u, t, c, s in
        [("a", "1", ["3", "1", "9"], [-1.0, -2.0, -3.0]), ("b", "4", ["4", "10", "3"], [-1.0, -1.0, -5.0])]))
    assert report.candidate_ranks(model) == {"a": 2, "b": 1}  # b's tie goes to the list's first
    text = "\n".join(report.comparisons([("M", model)], base))
    # HR@1 per user: a 0 - 1, b 1 - 0 -> 0; NDCG@5: a 1/log2(3) - 1, b 1 - 1/log2(4) -> mean
    assert "M minus most popular within the candidates (2 users" in text and "| +0.0000 [" in text
    assert f"| {((1 / math.log2(3) - 1) + (1 - 0.5)) / 2:+.4f} [" in text
    table = report.tables([("M", model)], base, [], None)
    assert "| M | 0.5000 | 0.5000 |" in table and "| most popular within the candidates (baseline) | 0.5000 |" in table
