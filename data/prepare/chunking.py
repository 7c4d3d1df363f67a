"""Long-history chunking (App. A/B; ../shared/spec/recgpt.md §6).

A history whose rendered text has `limit` tokens or more is cut into the smallest number k of
contiguous chunks of near-equal item counts (sizes differ by at most one) such that every fully
rendered chunk (header, wrapper and response included) has fewer than `limit` tokens; each chunk
is then treated as a separate user's history. k is first estimated from per-line token counts, then
verified with the real tokenizer: raised until every chunk fits, then lowered while k - 1 still fits.

An item too long to fit even alone has its review cut (the paper does not say what it did; this
is the recommended policy of §6) and is counted; an item that does not fit without any review is
dropped and counted.
"""
import collections
import dataclasses
from typing import Callable, Optional, Sequence

from data.prepare.recipe import History, near_equal_groups
from data.prepare.records import Interaction

# measure(groups) -> the token length of each group's longest rendering
Measure = Callable[[list[History]], list[int]]


def smallest_k(line_tokens: Sequence[int], overhead: int, limit: int) -> int:
    """The smallest k for which near-equal groups fit under `limit` by the per-line estimate."""
    n = len(line_tokens)
    prefix = [0]
    for t in line_tokens:
        prefix.append(prefix[-1] + t)
    # no k below total / (limit - overhead - 1) can fit (its largest group holds at least the mean): start there,
    # so that a huge history costs a few passes, not one per k
    first = max(1, -(-prefix[-1] // max(1, limit - overhead - 1)))
    for k in range(min(first, n), n + 1):
        if all(prefix[b] - prefix[a] + overhead < limit for a, b in near_equal_groups(n, k)):
            return k
    return n


class Chunker:
    def __init__(self, encode_lengths: Callable[[list[str]], list[int]], limit: int):
        self.encode_lengths = encode_lengths  # texts -> token counts (a batch encoder)
        self.limit = limit
        self.counts: collections.Counter = collections.Counter()

    def _fit_alone(self, x: Interaction, line_tokens: int, budget: int, line_text) -> tuple[Interaction, int]:
        """Cut x's review until its line fits `budget` tokens; (x, tokens) or (x, -1) if impossible."""
        if line_tokens < budget:
            return x, line_tokens
        self.counts["items_over_limit"] += 1
        while x.review:
            keep = int(len(x.review) * min(0.9, budget / max(line_tokens, 1)))
            x = dataclasses.replace(x, review=x.review[:keep].rstrip() or None)
            line_tokens = self.encode_lengths([line_text(x)])[0] + 1
            if line_tokens < budget:
                self.counts["reviews_truncated"] += 1
                return x, line_tokens
        return x, -1

    @staticmethod
    def _estimate(tokens, overhead, k):
        return max(sum(tokens[a:b]) for a, b in near_equal_groups(len(tokens), k)) + overhead

    def split(self, history: History, line_text: Callable[[Interaction], str], overhead: int,
              measure: Measure, line_tokens: Optional[list[int]] = None) -> list[History]:
        """Chunks of `history` whose measured lengths are all < limit (a single chunk if it fits).
        `line_tokens`: per-item token counts if the caller has them (e.g. from the full document's offsets)."""
        if line_tokens is None:
            line_tokens = [t + 1 for t in self.encode_lengths([line_text(x) for x in history])]  # +1: "\n"
        budget = self.limit - overhead
        items, tokens = [], []
        for x, t in zip(history, line_tokens):
            x, t = self._fit_alone(x, t, budget, line_text)
            if t < 0:
                self.counts["items_dropped_over_limit"] += 1
                continue
            items.append(x)
            tokens.append(t)
        if not items:
            return []
        k = smallest_k(tokens, overhead, self.limit)
        tried: dict[int, Optional[list[History]]] = {}

        def attempt(k):
            if k not in tried:
                groups = [items[a:b] for a, b in near_equal_groups(len(items), k)]
                tried[k] = groups if all(n < self.limit for n in measure(groups)) else None
            return tried[k]
        while attempt(k) is None and k < len(items):
            k += 1
        if attempt(k) is None:  # single items the estimate let through: drop what still fails
            groups = [[x] for x in items]
            kept = [g for g, n in zip(groups, measure(groups)) if n < self.limit]
            self.counts["items_dropped_over_limit"] += len(groups) - len(kept)
            return kept
        # the estimate is not a lower bound: walk down while k - 1 could fit (within the estimate's slack)
        while k > 1 and self._estimate(tokens, overhead, k - 1) < self.limit * 1.02 + 8 and attempt(k - 1) is not None:
            k -= 1
        if k > 1:
            self.counts["histories_chunked"] += 1
            self.counts["chunks_from_long_histories"] += k
        return tried[k]
