"""Chunking of long histories: fewest near-equal chunks, every rendered chunk under the limit."""
from data.prepare import templates
from data.prepare.chunking import Chunker, smallest_k
from data.prepare.recipe import near_equal_groups
from data.prepare.records import Interaction, Item
from data.formats.tokenizer import load


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
