"""Metric functions against examples worked out by hand."""
import math

import pytest

from evaluation.metrics import dedupe_keep_first, mean_std, parse_rating, rank_of, ranking_metrics, rating_metrics


def test_dedupe_and_rank_keep_the_first_occurrence():
    assert dedupe_keep_first(["a", "b", "a", "c", "b"]) == ["a", "b", "c"]
    assert rank_of("c", ["a", "b", "a", "c"]) == 3  # the repeated "a" does not push "c" to 4
    assert rank_of("a", ["b", "a", "a"]) == 2
    assert rank_of("z", ["a", "b"]) is None
    assert rank_of("a", []) is None


def test_ranking_metrics_hand_worked():
    # user 1: target at rank 1; user 2: rank 3 after removing a duplicate (raw position 4);
    # user 3: target at raw position 7, rank 6 after the duplicate "x" -> outside @5, inside @10;
    # user 4: target absent; user 5: an empty list (no valid output), a miss that still counts in |U|.
    lists = [
        ["t1", "a", "b"],
        ["a", "b", "a", "t2"],
        ["x", "a", "x", "b", "c", "d", "t3", "e"],
        ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"],
        [],
    ]
    targets = ["t1", "t2", "t3", "t4", "t5"]
    m = ranking_metrics(lists, targets)
    assert m["HR@5"] == pytest.approx(2 / 5)
    assert m["HR@10"] == pytest.approx(3 / 5)
    assert m["NDCG@5"] == pytest.approx((1 / math.log2(2) + 1 / math.log2(4)) / 5)  # (1 + 0.5) / 5 = 0.3
    assert m["NDCG@5"] == pytest.approx(0.3)
    assert m["NDCG@10"] == pytest.approx((1 + 0.5 + 1 / math.log2(7)) / 5)
    assert m["n_users"] == 5
    assert m["mean_unique_items"] == pytest.approx((3 + 3 + 7 + 10 + 0) / 5)


def test_target_beyond_k_in_a_long_list_and_fewer_than_k_outputs():
    # 12 outputs: target at 11 counts for neither k; a 2-item list with the target at 2 counts for both
    m = ranking_metrics([[f"i{j}" for j in range(10)] + ["t", "z"], ["q", "t"]], ["t", "t"])
    assert m["HR@10"] == pytest.approx(0.5) and m["HR@5"] == pytest.approx(0.5)
    assert m["NDCG@10"] == pytest.approx((1 / math.log2(3)) / 2)


def test_ranking_metrics_errors():
    with pytest.raises(ValueError, match="2 ranked lists but 1 targets"):
        ranking_metrics([[], []], ["a"])
    with pytest.raises(ValueError, match="no test users"):
        ranking_metrics([], [])


@pytest.mark.parametrize("text,value", [("4.0/5.0", 4.0), ("Rating: 3", 3.0), ("  5.0/5.0", 5.0),
                                        ("rated 2.5 of 5", 2.5), ("7.5/5.0", 7.5), (".5", 0.5),
                                        ("no idea", None), ("", None)])
def test_parse_rating_takes_the_first_number(text, value):
    assert parse_rating(text) == value


def test_rating_metrics_hand_worked():
    outputs = ["4.0/5.0", "6.0/5.0", "oops", "2.5/5.0", "0.0/5.0"]
    targets = [5, 5, 3, 2, 1]
    m = rating_metrics(outputs, targets, fallback=4.2)
    # predictions after parsing and clipping to [1, 5]: 4.0, 5.0 (clipped), 4.2 (fallback), 2.5, 1.0 (clipped)
    errors = [-1.0, 0.0, 1.2, 0.5, 0.0]
    assert m["RMSE"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / 5))  # sqrt(2.69 / 5)
    assert m["RMSE"] == pytest.approx(math.sqrt(0.538))
    assert m["MAE"] == pytest.approx(2.7 / 5)
    assert m["n"] == 5 and m["n_unparsable"] == 1 and m["n_parsed"] == 4 and m["n_clipped"] == 2
    assert m["RMSE_parsed_only"] == pytest.approx(math.sqrt(1.25 / 4))
    assert m["MAE_parsed_only"] == pytest.approx(1.5 / 4)


def test_rating_metrics_all_unparsable():
    m = rating_metrics(["?", "?"], [1, 5], fallback=3.0)
    assert m["RMSE"] == pytest.approx(2.0) and m["MAE"] == pytest.approx(2.0)
    assert m["n_parsed"] == 0 and math.isnan(m["RMSE_parsed_only"])


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_std([0.5]) == (0.5, 0.0)
