"""The randomised parts of the RecGPT recipe (paper §2.1, App. A; ../shared/spec/recgpt.md §3-5, evaluation.md
§1-3), on arrays of numbers, so that the plan (data/prepare/plan.py) can run them on a source of any size:

- the seeded permutation of a source's users (it orders the output and gives the 99.5/0.5 user split);
- P5's random 80/10/10 rating split of a benchmark;
- the held-out examples of one benchmark user (P5's leave-one-out and the rating split), for its prompts;
- P5's negative items (`Negatives`), for the P5 builder's candidate lists and the benchmark's `eval.negatives`.

Both random draws make exactly the calls the in-memory recipe made on Python lists (`random.shuffle` of
the sorted users; `random.choice` per user, then per item, then a shuffle), so a build gives the same
users, order and splits as before the engine (tests/reference_recipe.py is that recipe, kept as the test
oracle).
"""
import array
import hashlib
import random
from dataclasses import dataclass
from typing import Optional

import numpy as np

from data.prepare.records import DataError, Interaction

History = list[Interaction]


def _seed_of(seed: int, parts) -> int:
    return int.from_bytes(hashlib.sha256(":".join([str(seed), *parts]).encode()).digest()[:8], "little")


def seeded_rng(seed: int, *parts: str) -> random.Random:
    return random.Random(_seed_of(seed, parts))


def seeded_generator(seed: int, *parts: str) -> np.random.Generator:
    """seeded_rng's numpy counterpart: a generator of its own per (seed, parts), e.g. per user."""
    return np.random.default_rng(_seed_of(seed, parts))


class Negatives:
    """P5's rule: items drawn uniformly from every item of the data (`sequential_data.txt`), none of the user's whole
    sequence (validation and test items included), in rounds of numpy `choice(replace=False)` until enough. `key`: the
    config key that asks for them, named when a user has too few items left."""

    def __init__(self, pool: list, rng: Optional[np.random.Generator] = None, key: str = "negatives"):
        self.pool, self.rng, self.members, self.key = list(pool), rng, set(pool), key

    def sample(self, exclude: set, n: int, rng: Optional[np.random.Generator] = None) -> list:
        """n items, from `rng` (a generator per user) or else the one given at construction (one stream in order)."""
        rng = rng or self.rng
        if len(self.pool) - len(exclude & self.members) < n:
            raise DataError(f"only {len(self.pool) - len(exclude & self.members)} items outside a user's sequence, "
                            f"{n} negatives asked for (config key {self.key})")
        out, taken = [], set()
        while len(out) < n:
            for k in rng.choice(len(self.pool), min(n, len(self.pool)), replace=False).tolist():
                item = self.pool[k]
                if item not in exclude and item not in taken:  # P5's check compared ints with strs; ours dedups
                    out.append(item)
                    taken.add(item)
        return out[:n]


def user_positions(n: int, seed: int, source: str) -> np.ndarray:
    """(n,) int64: the place, in the seeded user order, of the r-th user in sorted order.

    The order is `sorted(users)` shuffled by `random.shuffle` with the source's seeded generator; shuffling
    the ranks 0..n-1 makes the same swaps, 8 bytes per user (2M users, the largest source of the paper, is
    16 MB), and the users themselves stay in the engine."""
    ranks = array.array("q", range(n))
    seeded_rng(seed, "users", source).shuffle(ranks)  # ranks[p]: the sorted rank of the user at place p
    positions = np.empty(n, dtype=np.int64)
    positions[np.frombuffer(ranks, dtype=np.int64)] = np.arange(n, dtype=np.int64)
    return positions


RATING_TRAIN, RATING_VALIDATION, RATING_TEST = 0, 1, 2
RATING_SPLITS = ("train", "validation", "test")


def p5_rating_split(user_sizes: np.ndarray, item_ranks: np.ndarray, seed: int, source: str) -> np.ndarray:
    """P5's rating split (evaluation.md §2.2) -> (n,) int8 of RATING_TRAIN / _VALIDATION / _TEST.

    The n interactions are numbered user by user (users in sorted order, each history in chronological
    order): `user_sizes[u]` is the u-th user's count, `item_ranks[g]` the sorted rank of interaction g's item.
    1. one random interaction of every user into train, then one of every item;
    2. top train up uniformly at random to round(0.8 N);
    3. round(0.1 N) of the rest become validation, the remainder test.
    Same algorithm and counts as P5; the membership differs from P5's pickles (different RNG stream).
    Memory: a few arrays of n numbers (benchmarks have at most a few million interactions)."""
    rng = seeded_rng(seed, "p5-rating", source)
    n = len(item_ranks)
    train = np.zeros(n, dtype=bool)
    start = 0
    for size in user_sizes.tolist():
        train[start + rng.choice(range(size))] = True  # choice(seq) = seq[randbelow(len(seq))]
        start += size
    by_item = np.argsort(item_ranks, kind="stable")  # each item's interactions, in numbering order
    start = 0
    for size in np.bincount(item_ranks).tolist():
        if size:
            train[by_item[start + rng.choice(range(size))]] = True
            start += size
    rest = array.array("q", np.flatnonzero(~train).tobytes())
    rng.shuffle(rest)
    n_top_up = max(0, round(0.8 * n) - int(train.sum()))
    n_val = round(0.1 * n)
    split = np.full(n, RATING_TEST, dtype=np.int8)
    split[train] = RATING_TRAIN
    rest = np.frombuffer(rest, dtype=np.int64)
    split[rest[:n_top_up]] = RATING_TRAIN
    split[rest[n_top_up: n_top_up + n_val]] = RATING_VALIDATION
    return split


@dataclass
class HeldOut:
    """One validation/test example of a benchmark: the user's history before the target."""
    task: str  # "next_item" | "rating"
    split: str  # "validation" | "test"
    user: str
    history: History
    target: Interaction
    # older items left out because they could never fit in the prompt (max_titled): all of them, the titled ones
    cut_oldest: int = 0
    cut_titled: int = 0


def _tail(history: History, end: int, max_titled: Optional[int], titled_upto_end: int) -> tuple[History, int, int]:
    """history[:end], or only its newest part holding max_titled titled items (what a prompt can show) -> (the
    items, how many older ones were left out, how many of those had a title). Walks back from `end`: the cost is the
    tail's, not the history's (`titled_upto_end`: titled items in history[:end], kept by the caller as it goes)."""
    if max_titled is None:
        return history[:end], 0, 0
    start, titled = end, 0
    while start > 0 and titled < max_titled:
        start -= 1
        titled += bool(history[start].item.title)
    return history[start:end], start, titled_upto_end - titled


def heldout_examples(user: str, history: History, rating_split: Optional[list[int]],
                     max_titled: Optional[int] = None) -> list[HeldOut]:
    """The held-out examples of one benchmark user, in the order the evaluation files list them.

    next item: leave-one-out, last item = test, second-to-last = validation (P5); rating (when
    `rating_split`, the RATING_* of each interaction): every validation/test interaction, whose history is
    the user's earlier rating-train interactions (evaluation.md §4). max_titled: keep only the newest items up to
    that many titled ones (a prompt of B tokens shows at most B item lines), so that a user with a huge history
    costs linear, not quadratic, memory: every rating example would otherwise copy its whole earlier history."""
    out = []
    titled = [0]  # titled items in history[:i] (only the tail walk needs them)
    if max_titled is not None:
        for x in history:
            titled.append(titled[-1] + bool(x.item.title))
    for split, end in (("validation", len(history) - 2), ("test", len(history) - 1)):
        if end >= 0:
            kept, cut, cut_titled = _tail(history, end, max_titled, titled[end] if max_titled is not None else 0)
            out.append(HeldOut("next_item", split, user, kept, history[end], cut, cut_titled))
    if rating_split is not None:
        earlier_train: History = []
        n_titled = 0
        for x, s in zip(history, rating_split):
            if s == RATING_TRAIN:
                earlier_train.append(x)
                n_titled += bool(x.item.title)
            else:
                kept, cut, cut_titled = _tail(earlier_train, len(earlier_train), max_titled, n_titled)
                out.append(HeldOut("rating", RATING_SPLITS[s], user, list(kept), x, cut, cut_titled))
    return out


def near_equal_groups(n: int, k: int) -> list[tuple[int, int]]:
    """[start, end) of k contiguous groups of n items whose sizes differ by at most one."""
    base, extra = divmod(n, k)
    bounds, start = [], 0
    for g in range(k):
        end = start + base + (1 if g < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds
