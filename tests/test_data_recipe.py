"""The recipe: stable chronological order, cleaning counts, seeded user split, P5 splits and leakage."""
import collections

from data import recipe
from data.records import BadLines, Interaction, Item
from data.sources import p5


def make(user_items, titled=lambda i: True):
    items = {}
    xs = []
    for seq, (u, i, t) in enumerate(user_items):
        item = items.setdefault(i, Item(i, title=f"T{i}" if titled(i) else None))
        xs.append(Interaction(u, item, time=t, rating=float(seq % 5 + 1), seq=seq))
    return xs


def test_stable_chronological_sort_keeps_file_order_on_ties():
    h = recipe.group_histories(make([("u", "a", 5), ("u", "b", 1), ("u", "c", 5), ("u", "d", 1)]))["u"]
    assert [x.item.id for x in h] == ["b", "d", "a", "c"]
    h = recipe.group_histories(make([("u", "z", None), ("u", "a", None)]))["u"]  # no times: file order
    assert [x.item.id for x in h] == ["z", "a"]


def test_keys_distinguish_repeated_items():
    h = recipe.group_histories(make([("u", "a", 1), ("u", "a", 1), ("u", "a", 2)]))["u"]
    assert [x.key for x in h] == ["u\ta\t1\t0", "u\ta\t1\t1", "u\ta\t2\t0"]
    h = recipe.group_histories(make([("u", "a", None), ("u", "b", None), ("u", "a", None)]))["u"]
    assert [x.key for x in h] == ["u\ta\t\t0", "u\tb\t\t0", "u\ta\t\t1"]


def test_clean_counts_add_up():
    data = [("u1", i, t) for t, i in enumerate("abcdef")] + [("u2", i, t) for t, i in enumerate("abcd")]
    ledger = recipe.Ledger(read=10)
    out = recipe.clean(recipe.group_histories(make(data, titled=lambda i: i != "a")), ledger, 5)
    assert list(out) == ["u1"] and [x.item.id for x in out["u1"]] == list("bcdef")
    assert ledger.dropped == {"item_without_title": 2, "user_under_5_interactions": 3}
    ledger.kept["pretrain"] = 5
    ledger.check()


def test_user_split_is_seeded_disjoint_and_sized():
    users = [f"u{i}" for i in range(1000)]
    pre, ft = recipe.split_users(users, 7, "src", 0.005)
    assert len(ft) == 5 and len(pre) == 995 and not set(pre) & set(ft)
    assert recipe.split_users(list(reversed(users)), 7, "src", 0.005) == (pre, ft)  # order-independent
    assert recipe.split_users(users, 8, "src", 0.005)[1] != ft


def test_p5_rating_split_counts_and_coverage():
    data = [(f"u{u}", f"i{(u * 7 + k) % 40}", k) for u in range(60) for k in range(6)]
    hist = recipe.group_histories(make(data))
    split = recipe.p5_rating_split(hist, 1, "s")
    c = collections.Counter(split.values())
    n = len(data)
    assert c["train"] == round(0.8 * n) and c["validation"] == round(0.1 * n) and sum(c.values()) == n
    train_keys = {k for k, v in split.items() if v == "train"}
    for h in hist.values():  # every user and every item has a training interaction
        assert any(x.key in train_keys for x in h)
    assert split == recipe.p5_rating_split(hist, 1, "s")


def test_benchmark_split_removes_all_heldout_from_training():
    data = [(f"u{u}", f"i{(u + k) % 9}", k) for u in range(30) for k in range(7)]
    hist = recipe.group_histories(make(data))
    train, heldout, keys = recipe.benchmark_split(hist, 3, "b", rating_split=True)
    seq = [h for h in heldout if h.task == "next_item"]
    assert len(seq) == 60
    for h in seq:
        full = hist[h.user]
        if h.split == "test":
            assert h.target is full[-1] and h.history == full[:-1]
        else:
            assert h.target is full[-2] and h.history == full[:-2]
    train_keys = {x.key for h in train.values() for x in h}
    assert not train_keys & keys
    assert len(train_keys) + len(keys) == len(data)
    for h in heldout:
        if h.task == "rating":  # rating history: only the user's earlier rating-train interactions
            assert all(x.time < h.target.time or x.time == h.target.time for x in h.history)


def test_real_beauty_p5_split_counts(shared_data):
    bad = BadLines()
    hist = recipe.group_histories(p5.read(shared_data / "amazon-beauty-p5", bad))
    assert len(hist) == 22_363 and sum(map(len, hist.values())) == 198_502
    lengths = sorted(map(len, hist.values()))
    assert min(lengths) >= 5 and lengths[len(lengths) // 2] == 6 and lengths[-1] == 204  # evaluation.md §1
    train, heldout, keys = recipe.benchmark_split(hist, 2022, "beauty", rating_split=True)
    c = collections.Counter((h.task, h.split) for h in heldout)
    assert c[("next_item", "test")] == c[("next_item", "validation")] == 22_363
    assert c[("rating", "test")] == 19_850 and c[("rating", "validation")] == 19_850  # P5 test_beauty_small
    assert sum(map(len, train.values())) + len(keys) == 198_502
    assert not {x.key for h in train.values() for x in h} & keys
