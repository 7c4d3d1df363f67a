"""Trie-constrained beam search: every output is a catalog item (beyond the paper; RecSysLLM's entity
trie, OpenP5's `generation_trie.py`).

The trie holds each item's tokenised text followed by EOS, tokenised the way fine-tuning saw responses
(on their own, no special tokens: data/instructions.py). At each step a beam may only take a token that
continues some item from where it stands, so it ends, at EOS, exactly on an item text. Disallowed tokens
get log-prob -inf after the log-softmax (no renormalisation, as HF's `prefix_allowed_tokens_fn`), so a
beam's score stays the model's true log-probability of the item text. Beams cut off by max_new_tokens
are dropped (generate.beam_search), so fewer than num_return_sequences may come back.

    trie = CatalogTrie.from_catalog(item_ids, texts, tokenizer.encode_batch-like fn, eos_id=0, vocab_size=V)
    outputs = generate(model, prompts, GenerationConfig(num_beams=10, ...), constraint=trie)
    outputs[0][0].extra["item_ids"]   # the catalog ids with that exact text (lowest first)
"""
from typing import Callable, Sequence

import torch


class CatalogTrie:
    """Prefix trie over token sequences; node 0 is the root. A beam's state is its current node id."""

    def __init__(self, sequences: Sequence[Sequence[int]], item_ids: Sequence[str], eos_id: int, vocab_size: int):
        self.eos_id, self.vocab_size = eos_id, vocab_size
        self.children = [{}]  # node -> {token: child node}
        self.items_at = {}  # leaf node (after EOS) -> item ids with that token sequence
        for tokens, item in zip(sequences, item_ids):
            node = 0
            for tok in list(tokens) + [eos_id]:
                if not 0 <= tok < vocab_size:
                    raise ValueError(f"item {item}: token {tok} is outside the model vocabulary ({vocab_size})")
                nxt = self.children[node].get(tok)
                if nxt is None:
                    nxt = self.children[node][tok] = len(self.children)
                    self.children.append({})
                node = nxt
            self.items_at.setdefault(node, []).append(item)
        self._child_tokens = [torch.tensor(sorted(c), dtype=torch.long) for c in self.children]

    @classmethod
    def from_catalog(cls, item_ids: Sequence[str], texts: Sequence[str], encode: Callable[[list], list],
                     eos_id: int, vocab_size: int):
        """encode: list of texts -> list of token-id lists (e.g. tokenizer.encode_batch without specials)."""
        return cls(encode(list(texts)), item_ids, eos_id, vocab_size)

    def __len__(self):
        return len(self.items_at)

    # the beam_search constraint protocol ---------------------------------------------------------
    def start(self, n_rows: int) -> torch.Tensor:
        return torch.zeros(n_rows, dtype=torch.long)

    def allowed(self, state: torch.Tensor) -> torch.Tensor:
        """(rows,) node ids -> (rows, vocab) bool mask of the tokens that continue an item."""
        none = self._child_tokens[0][:0]
        kids = [self._child_tokens[n] if n >= 0 else none for n in state.tolist()]  # -1: a dead beam
        rows = torch.repeat_interleave(torch.arange(len(kids)), torch.tensor([len(k) for k in kids]))
        mask = torch.zeros(len(kids), self.vocab_size, dtype=torch.bool)
        mask[rows, torch.cat(kids)] = True
        return mask

    def advance(self, state: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The new rows continue old rows `rows` with `tokens` (a token outside the trie: -1, dead)."""
        out = []
        for node, tok in zip(state[rows.cpu()].tolist(), tokens.tolist()):
            out.append(self.children[node].get(tok, -1) if node >= 0 else -1)
        return torch.tensor(out, dtype=torch.long)

    def describe(self, tokens: Sequence[int]) -> dict:
        """The catalog items a finished output spells (empty if it is not a complete item)."""
        node = 0
        for tok in tokens:
            node = self.children[node].get(tok)
            if node is None:
                return {"item_ids": []}
        return {"item_ids": list(self.items_at.get(node, []))}
