"""Chunking of long histories: fewest near-equal chunks, every rendered chunk under the limit."""
import pytest

from data import templates
from data.chunking import Chunker, smallest_k
from data.recipe import near_equal_groups
from data.records import Interaction, Item
from data.tokenizer import load


def test_near_equal_groups():
    assert near_equal_groups(10, 3) == [(0, 4), (4, 7), (7, 10)]
    # 10-token lines, 5 tokens of header, limit 31: at most 2 lines per chunk -> 5 chunks
    assert smallest_k([10] * 10, overhead=5, limit=31) == 5

def words(texts):
    return [len(t.split()) for t in texts]


def history(n, review_words=3):
    return [Interaction("u", Item(str(i), title=f"t{i}"), rating=4.0, review=" ".join(["w"] * review_words))
            for i in range(n)]


def check(chunks, n_items, lengths, limit):
    sizes = [len(c) for c in chunks]
    assert sum(sizes) == n_items and max(sizes) - min(sizes) <= 1
    assert all(n < limit for n in lengths)


def test_chunks_with_a_word_tokenizer():
    d = templates.get_domain("food")
    h = history(50)

    def measure(groups):
        return words([templates.pretrain_document(d, g) for g in groups])
    limit = 100
    chunker = Chunker(words, limit)
    chunks = chunker.split(h, lambda x: templates.pretrain_line(d, x), words([d.header])[0], measure)
    check(chunks, 50, measure(chunks), limit)
    # the fewest chunks: one fewer would not fit
    fewer = [h[a:b] for a, b in near_equal_groups(50, len(chunks) - 1)]
    assert max(measure(fewer)) >= limit
    assert [x.item.id for c in chunks for x in c] == [x.item.id for x in h]  # order kept


def test_single_item_over_limit_gets_its_review_cut():
    d = templates.get_domain("food")
    h = history(3) + [Interaction("u", Item("big", title="big"), rating=1.0, review=" ".join(["w"] * 500))]
    chunker = Chunker(words, 60)

    def measure(groups):
        return words([templates.pretrain_document(d, g) for g in groups])
    chunks = chunker.split(h, lambda x: templates.pretrain_line(d, x), words([d.header])[0], measure)
    assert all(n < 60 for n in measure(chunks)) and sum(map(len, chunks)) == 4
    assert chunker.counts["reviews_truncated"] == 1


def test_real_gpt_neox_tokenizer_chunks_under_2048(shared_data):
    tok = load(shared_data / "tokenizer" / "gpt-neox-20b.json")
    assert tok.encode("Hello world!").ids == [12092, 1533, 2]

    def lengths(texts):
        return [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]
    d = templates.get_domain("amazon")
    h = [Interaction("u", Item(str(i), title=f"Product number {i} deluxe edition", brand="Acme"), rating=5.0,
                     review="It works well and I would buy it again. " * 4) for i in range(300)]

    def measure(groups):
        return lengths([templates.pretrain_document(d, g) for g in groups])
    assert measure([h])[0] >= 2048
    chunks = Chunker(lengths, 2048).split(h, lambda x: templates.pretrain_line(d, x), lengths([d.header])[0], measure)
    check(chunks, 300, measure(chunks), 2048)
    assert len(chunks) > 1 and max(measure([h[a:b] for a, b in near_equal_groups(300, len(chunks) - 1)])) >= 2048


def test_chunk_ids_cut_from_the_document_equal_encoding_the_chunk(shared_data):
    """data.prepare.DocLines: a chunk's ids are cut out of the whole document's ids instead of encoding the
    chunk again; they must be exactly the ids of encoding the chunk's own text (GPT-NeoX tokenizer)."""
    from data.prepare import DocLines
    from data.tokenizer import line_local
    tok = load(shared_data / "tokenizer" / "gpt-neox-20b.json")
    assert line_local(tok)
    d = templates.get_domain("amazon")
    reviews = ["Great!!  Would buy   again...", "naïve café ﬁne 12,345.67 — ok", "it's 'quoted' don't", "日本語のレビュー",
               "<|endoftext|> inside", "emoji 👍🏽 end."]
    h = [Interaction("u", Item(str(i), title=f"Item {i}", brand="Acme" if i % 2 else None), rating=float(i % 5 + 1),
                     review=reviews[i % len(reviews)]) for i in range(40)]
    doc = templates.pretrain_document(d, h)
    e = tok.encode(doc, add_special_tokens=False)
    lines = DocLines(doc, e, len(d.header) + 2, True)
    assert lines.sliceable and lines.n == 40
    for a, b in [(0, 40), (0, 1), (0, 13), (13, 27), (27, 40), (39, 40), (5, 6)]:
        want = tok.encode(templates.pretrain_document(d, h[a:b]), add_special_tokens=False).ids
        assert lines.chunk_ids(a, b) == want and lines.chunk_len(a, b) == len(want)


def test_tokenizer_that_is_not_line_local_is_detected():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from data.tokenizer import line_local
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    assert not line_local(tok)
