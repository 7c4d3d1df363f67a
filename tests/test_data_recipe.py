"""The recipe: the plan (data/prepare/plan.py, in the engine) against the in-memory recipe it replaced
(tests/reference_recipe.py), user by user, on fixtures with ties, repeats, missing times and untitled items and on
the real data; the random draws on arrays (data/prepare/recipe.py) against the same draws on Python lists."""
import collections
import json

import pyarrow.parquet as pq
import pytest

import reference_recipe as ref
from data.prepare import pipeline, recipe
from data.prepare.records import BadLines
from data.prepare.sources import movielens, p5
from data_fixtures import p5_fixture, write_config


def test_user_positions_are_the_seeded_shuffle_of_the_sorted_users():
    for n in (0, 1, 2, 7, 1000):
        users = [f"u{i:04d}" for i in range(n)]
        order = ref.user_order(users, 3, "src")
        positions = recipe.user_positions(n, 3, "src")
        assert [users[r] for r in sorted(range(n), key=lambda r: positions[r])] == order


def rating_split_arrays(histories):
    """The arrays recipe.p5_rating_split takes, from histories (users sorted, histories in order)."""
    users = sorted(histories)
    rank = {i: r for r, i in enumerate(sorted({x.item.id for h in histories.values() for x in h}))}
    sizes = [len(histories[u]) for u in users]
    items = [rank[x.item.id] for u in users for x in histories[u]]
    import numpy as np
    return np.array(sizes), np.array(items), [k for u in users for k in ref.interaction_keys(histories[u])]


def make(user_items, titled=lambda i: True):
    from data.prepare.records import Interaction, Item
    items, xs = {}, []
    for seq, (u, i, t) in enumerate(user_items):
        item = items.setdefault(i, Item(i, title=f"T{i}" if titled(i) else None))
        xs.append(Interaction(u, item, time=t, rating=float(seq % 5 + 1), seq=seq))
    return xs


def test_p5_rating_split_on_arrays_equals_the_split_on_lists():
    data = [(f"u{u}", f"i{(u * 7 + k) % 40}", k) for u in range(60) for k in range(6)]
    hist = ref.group_histories(make(data))
    want = ref.p5_rating_split(hist, 1, "s")
    sizes, items, keys = rating_split_arrays(hist)
    got = recipe.p5_rating_split(sizes, items, 1, "s")
    assert {k: recipe.RATING_SPLITS[s] for k, s in zip(keys, got)} == want
    c = collections.Counter(want.values())
    n = len(data)
    assert c["train"] == round(0.8 * n) and c["validation"] == round(0.1 * n) and sum(c.values()) == n


def test_heldout_examples_equal_the_benchmark_split():
    data = [(f"u{u}", f"i{(u + k) % 9}", k) for u in range(30) for k in range(7)]
    hist = ref.group_histories(make(data))
    _, want, _ = ref.benchmark_split(hist, 3, "b", rating_split=True)
    split = ref.p5_rating_split(hist, 3, "b")
    got = []
    for user in sorted(hist):
        labels = [recipe.RATING_SPLITS.index(split[k]) for k in ref.interaction_keys(hist[user])]
        got += recipe.heldout_examples(user, hist[user], labels)
    assert [(h.task, h.split, h.user, h.history, h.target) for h in got] == \
           [(h.task, h.split, h.user, h.history, h.target) for h in want]


def plan_of(tmp_path, source: dict, **extra) -> tuple[dict, dict, dict]:
    """-> (plan counts, {position: (user, pretrain, finetune, [(item, time, occurrence)])}, {user: [(item, time,
    next_split, rating_split)]}) of one source, from `--stage prepare`."""
    tmp_path.mkdir(exist_ok=True)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "plan.yaml", out, [source], **extra)
    assert pipeline.main([str(cfg), "--stage", "prepare"]) == 0
    plan = out / "work" / "plan" / source["name"]
    done = json.loads((plan / "done.json").read_text())["result"]
    users = {}
    for r in sorted(pq.read_table(plan / "train").to_pylist(), key=lambda r: (r["position"], r["ord"])):
        u = users.setdefault(r["position"], (r["user"], r["pretrain"], r["finetune"], []))
        u[3].append((r["item"], r["time"], r["occurrence"]))
    heldout = collections.defaultdict(list)
    if (plan / "heldout").is_dir():
        for r in sorted(pq.read_table(plan / "heldout").to_pylist(), key=lambda r: (r["rank"], r["ord"])):
            heldout[r["user"]].append((r["item"], r["time"], r["next_split"], r["rating_split"]))
    return done, users, heldout


def occurrences(histories) -> dict:
    """id(interaction) -> its occurrence number, counted in its user's whole history (as the keys are)."""
    return {id(x): int(k.rsplit("\t", 1)[1]) for h in histories.values() for x, k in zip(h, ref.interaction_keys(h))}


def identity(history, occurrence):
    return [(x.item.id, x.time, occurrence[id(x)]) for x in history]


def check_corpus_source(tmp_path, source, interactions, seed=5, min_n=5, fraction=0.2):
    done, users, _ = plan_of(tmp_path, source, seed=seed, min_interactions=min_n, finetune_fraction=fraction)
    ledger = ref.Ledger(read=len(interactions))
    hist = ref.group_histories(interactions)
    occurrence = occurrences(hist)
    cleaned = ref.clean(hist, ledger, min_n)
    pre, ft = ref.split_users(cleaned, seed, source["name"], fraction)
    assert [u for u, *_ in users.values()] == ft + pre and list(users) == list(range(len(users)))
    for user, is_pre, is_ft, history in users.values():
        assert (is_pre, is_ft) == (user in pre, user in ft)
        assert history == identity(cleaned[user], occurrence)
    ledger.kept.update(pretrain=sum(len(cleaned[u]) for u in pre), finetune=sum(len(cleaned[u]) for u in ft))
    assert done["interactions_dropped"] == dict(ledger.dropped) and done["users_dropped"] == dict(ledger.users_dropped)
    assert done["interactions_kept"] == dict(ledger.kept)


def check_benchmark_source(tmp_path, source, interactions, seed=5):
    done, users, heldout = plan_of(tmp_path, source, seed=seed)
    hist = ref.group_histories(interactions)
    occurrence = occurrences(hist)
    train, examples, keys = ref.benchmark_split(hist, seed, source["name"], source.get("rating_split", True))
    train = {u: [x for x in h if x.item.title] for u, h in train.items()}
    order = ref.user_order([u for u, h in train.items() if h], seed, source["name"])
    assert [u for u, *_ in users.values()] == order
    for user, is_pre, is_ft, history in users.values():
        assert is_pre and history == identity(train[user], occurrence)
    split = ref.p5_rating_split(hist, seed, source["name"]) if source.get("rating_split", True) else {}
    for user, h in hist.items():
        k = ref.interaction_keys(h)
        assert [(x.item.id, x.time) for x in h] == [(i, t) for i, t, _, _ in heldout[user]]
        assert [recipe.RATING_SPLITS[r] if r is not None else None for *_, r in heldout[user]] == \
               [split.get(key) for key in k]
    assert done["interactions_kept"]["heldout_validation_test"] == len(keys)
    assert done["interactions_kept"]["pretrain"] == sum(map(len, train.values()))
    return done


def test_plan_equals_the_in_memory_recipe_on_ties_repeats_and_untitled_items(tmp_path):
    """MovieLens layout: same-time interactions (file order kept), a user repeating an item at the same time, an
    untitled item, users under 5 interactions; as a corpus source and as a benchmark."""
    root = tmp_path / "ml"
    root.mkdir()
    flags = "|".join(["0"] * 19)
    (root / "u.item").write_text("".join(f"{i}|{'' if i == 4 else f'Film {i}'}|d||u|{flags}\n" for i in range(1, 9)),
                                 encoding="latin-1")
    rows = []
    for u in range(1, 41):
        for k in range(3 + u % 9):
            rows.append(f"{u}\t{1 + (u * k) % 8}\t{1 + k % 5}\t{100 + (k // 2) * 10}")  # pairs of equal times
    rows += ["7\t3\t5\t100", "7\t3\t5\t100"]  # a repeat of one item at one time
    (root / "u.data").write_text("\n".join(rows) + "\n")
    xs = list(movielens.read(root, BadLines()))
    source = {"name": "ml", "reader": "movielens", "domain": "movielens", "options": {"path": str(root)}}
    check_corpus_source(tmp_path / "corpus", source, xs)
    xs = list(movielens.read(root, BadLines()))
    check_benchmark_source(tmp_path / "bench", {**source, "benchmark": True, "rating_split": True}, xs)


def test_plan_equals_the_in_memory_recipe_without_times(tmp_path):
    beauty = p5_fixture(tmp_path / "beauty", n_users=50)
    xs = list(p5.read(beauty, BadLines()))
    source = {"name": "b", "reader": "p5", "domain": "amazon", "options": {"path": str(beauty)}}
    check_corpus_source(tmp_path / "corpus", source, xs, min_n=7)
    xs = list(p5.read(beauty, BadLines()))
    check_benchmark_source(tmp_path / "bench", {**source, "benchmark": True, "rating_split": False}, xs)


def test_real_beauty_plan(shared_data, tmp_path):
    bad = BadLines()
    xs = list(p5.read(shared_data / "amazon-beauty-p5", bad))
    hist = ref.group_histories(xs)
    assert len(hist) == 22_363 and sum(map(len, hist.values())) == 198_502
    lengths = sorted(map(len, hist.values()))
    assert min(lengths) >= 5 and lengths[len(lengths) // 2] == 6 and lengths[-1] == 204  # evaluation.md §1
    source = {"name": "beauty", "reader": "p5", "domain": "amazon", "benchmark": True, "rating_split": True,
              "options": {"path": str(shared_data / "amazon-beauty-p5")}}
    done = check_benchmark_source(tmp_path, source, xs, seed=2022)
    _, heldout, _ = ref.benchmark_split(hist, 2022, "beauty", rating_split=True)
    c = collections.Counter((h.task, h.split) for h in heldout)
    assert c[("next_item", "test")] == c[("next_item", "validation")] == 22_363
    assert c[("rating", "test")] == 19_850 and c[("rating", "validation")] == 19_850  # P5 test_beauty_small
    assert done["table4"] == {"users": 22_363, "items": 12_101, "interactions": 198_502}


def test_real_movielens_plan(shared_data, tmp_path):
    source = {"name": "movielens-100k", "reader": "movielens", "domain": "movielens",
              "options": {"path": str(shared_data / "movielens-100k")}}
    check_corpus_source(tmp_path, source, list(movielens.read(shared_data / "movielens-100k", BadLines())),
                        seed=1234, fraction=0.1)


@pytest.mark.parametrize("n", [1, 3])
def test_near_equal_groups(n):
    groups = recipe.near_equal_groups(10, n)
    assert groups[0][0] == 0 and groups[-1][1] == 10 and max(b - a for a, b in groups) - min(b - a for a, b in groups) <= 1
