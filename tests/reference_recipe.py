"""The test oracle of the build's plan: the RecGPT recipe as plain Python over in-memory histories, the way the
build ran it before the engine (data/prepare/plan.py now runs it in DuckDB, data/prepare/recipe.py its random draws on
arrays). Tests compare the plan with this, on fixtures and on the real data.

Paper §2.1, App. A; ../shared/spec/recgpt.md §3-5, evaluation.md §1-3: chronological histories, cleaning, the
seeded 99.5/0.5 user split, P5's benchmark splits and the leakage removal. Interaction keys are
"user\titem\ttime\toccurrence".
"""
import collections
from dataclasses import dataclass, field
from typing import Iterable

from data.prepare.records import Interaction
from data.prepare.recipe import HeldOut, seeded_rng

History = list[Interaction]


def time_key(x: Interaction) -> float:
    # Sources without timestamps keep the file order (time None sorts first, ties stay in order).
    return float("-inf") if x.time is None else x.time


def group_histories(interactions: Iterable[Interaction]) -> dict[str, History]:
    """user -> history in chronological order; a *stable* sort, so same-time items keep file order
    (Amazon times have day granularity; re-sorting ties by id would invent patterns, evaluation.md §9.3)."""
    by_user: dict[str, History] = collections.defaultdict(list)
    for x in interactions:
        by_user[x.user].append(x)
    histories = {}
    for user, history in by_user.items():
        history.sort(key=time_key)
        histories[user] = history
    return histories


def interaction_keys(history: History) -> list[str]:
    """A source-independent identity per interaction: user, item, time and the occurrence number of
    that (item, time) in the history (users may repeat an item, e.g. on Yelp)."""
    heads = [f"{x.user}\t{x.item.id}\t{'' if x.time is None else repr(x.time)}\t" for x in history]
    if len(set(heads)) == len(heads):  # the usual case: no (item, time) repeats
        return [k + "0" for k in heads]
    seen: dict[str, int] = {}
    keys = []
    for k in heads:
        n = seen[k] = seen.get(k, -1) + 1
        keys.append(f"{k}{n}")
    return keys


@dataclass
class Ledger:
    """Interaction and user counts of one source, by reason."""
    read: int = 0
    dropped: collections.Counter = field(default_factory=collections.Counter)  # interactions, by reason
    users_dropped: collections.Counter = field(default_factory=collections.Counter)
    kept: collections.Counter = field(default_factory=collections.Counter)  # interactions, by destination

    def check(self) -> None:
        total = sum(self.dropped.values()) + sum(self.kept.values())
        if total != self.read:
            raise AssertionError(f"ledger does not add up: read {self.read} != dropped {dict(self.dropped)} "
                                 f"+ kept {dict(self.kept)} = {total}")


def drop_untitled(history: History, ledger: Ledger, reason: str = "item_without_title") -> History:
    kept = [x for x in history if x.item.title]
    ledger.dropped[reason] += len(history) - len(kept)
    return kept


def clean(histories: dict[str, History], ledger: Ledger, min_interactions: int = 5,
          exclude_users: frozenset = frozenset()) -> dict[str, History]:
    """Paper §2.1: drop items without a title, then users with fewer than `min_interactions`.
    `exclude_users`: users of the benchmark versions, removed from newer versions (App. A)."""
    out = {}
    for user, history in histories.items():
        if user in exclude_users:
            ledger.dropped["user_in_benchmark_version"] += len(history)
            ledger.users_dropped["user_in_benchmark_version"] += 1
            continue
        history = drop_untitled(history, ledger)
        if len(history) < min_interactions:
            ledger.dropped[f"user_under_{min_interactions}_interactions"] += len(history)
            ledger.users_dropped[f"user_under_{min_interactions}_interactions"] += 1
            continue
        out[user] = history
    return out


def user_order(users: Iterable[str], seed: int, source: str) -> list[str]:
    """A seeded permutation of the users (sorted first, so it is independent of reading order)."""
    order = sorted(users)
    seeded_rng(seed, "users", source).shuffle(order)
    return order


def split_users(users: Iterable[str], seed: int, source: str, finetune_fraction: float) -> tuple[list[str], list[str]]:
    """Paper §2.1: users -> (pre-training, fine-tuning), round(fraction * n) fine-tuning users,
    drawn by a seeded permutation; both lists in that permuted order."""
    order = user_order(users, seed, source)
    n_ft = round(finetune_fraction * len(order))
    return order[n_ft:], order[:n_ft]


# -- benchmark datasets (P5 splits) --------------------------------------------------------------

def p5_rating_split(histories: dict[str, History], seed: int, source: str) -> dict[str, str]:
    """P5's rating split (evaluation.md §2.2) -> {interaction key: "train"|"validation"|"test"}.

    1. one random interaction of every user into train, then one of every item;
    2. top train up uniformly at random to round(0.8 N);
    3. round(0.1 N) of the rest become validation, the remainder test.
    Same algorithm and counts as P5; the membership differs from P5's pickles (different RNG stream).
    """
    rng = seeded_rng(seed, "p5-rating", source)
    keys, by_user, by_item = [], collections.defaultdict(list), collections.defaultdict(list)
    for user in sorted(histories):
        for x, k in zip(histories[user], interaction_keys(histories[user])):
            by_user[user].append(len(keys))
            by_item[x.item.id].append(len(keys))
            keys.append(k)
    n = len(keys)
    train = set()
    for user in sorted(by_user):
        train.add(rng.choice(by_user[user]))
    for item in sorted(by_item):
        train.add(rng.choice(by_item[item]))
    rest = [i for i in range(n) if i not in train]
    rng.shuffle(rest)
    n_top_up = max(0, round(0.8 * n) - len(train))
    train.update(rest[:n_top_up])
    rest = rest[n_top_up:]
    n_val = round(0.1 * n)
    split = {keys[i]: "train" for i in train}
    split.update({keys[i]: "validation" for i in rest[:n_val]})
    split.update({keys[i]: "test" for i in rest[n_val:]})
    return split


def benchmark_split(histories: dict[str, History], seed: int, source: str, rating_split: bool
                    ) -> tuple[dict[str, History], list[HeldOut], set[str]]:
    """P5 splits + RecGPT's leakage removal (evaluation.md §2-3).

    next item: leave-one-out, last item = test, second-to-last = validation (every user);
    rating (if `rating_split`): P5's random 80/10/10. The training corpus keeps only interactions
    that are in no validation/test split of either task (the stricter rule of evaluation.md §3).
    Returns (user -> training history, held-out examples, held-out interaction keys).
    """
    heldout: list[HeldOut] = []
    heldout_keys: set[str] = set()
    rating_of = p5_rating_split(histories, seed, source) if rating_split else {}
    train = {}
    for user in sorted(histories):
        history = histories[user]
        keys = interaction_keys(history)
        if len(history) >= 2:
            heldout.append(HeldOut("next_item", "validation", user, history[:-2], history[-2]))
            heldout_keys.add(keys[-2])
        if len(history) >= 1:
            heldout.append(HeldOut("next_item", "test", user, history[:-1], history[-1]))
            heldout_keys.add(keys[-1])
        if rating_split:
            # recommended history (evaluation.md §4): the user's earlier rating-train interactions
            earlier_train: History = []  # the rating-train interactions before x, built up as we go
            for x, k in zip(history, keys):
                if rating_of[k] == "train":
                    earlier_train.append(x)
                else:
                    heldout.append(HeldOut("rating", rating_of[k], user, list(earlier_train), x))
                    heldout_keys.add(k)
        train[user] = [x for x, k in zip(history, keys) if k not in heldout_keys]
    return train, heldout, heldout_keys
