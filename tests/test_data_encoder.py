"""data/prepare/encoder.py: the ids (and counts) the build writes must be exactly those of encoding each text whole,
for every text shape the build makes and for adversarial ones; where the line-by-line rule cannot hold, the text
is encoded whole; and a tokenizer that breaks the rule is stopped by the run-time spot check."""
import random

import pytest

from data.prepare import encoder as encoder_lib
from data.prepare import templates
from data.prepare.bpe import train_bpe
from data.prepare.encoder import Encoder, line_local
from data.prepare.records import Interaction, Item
from data.formats.tokenizer import load

REVIEWS = ["Great!!  Would buy   again...", "naïve café ﬁne 12,345.67 — ok", "it's 'quoted' don't", "日本語のレビュー",
           "<|endoftext|> inside", "emoji 👍🏽 end.", "ends with a colon:", "1/2 price; Rating: 5"]


def history(n):
    return [Interaction("u", Item(str(i), title=f"Item {i}", brand="Acme" if i % 2 else None,
                                  genres="Drama, War" if i % 3 else None),
                        rating=float(i % 5 + 1) if i % 7 else None, review=REVIEWS[i % len(REVIEWS)])
            for i in range(n)]


@pytest.fixture(params=["trained-bpe", "gpt-neox-20b"])
def tok(request, tmp_path):
    if request.param == "gpt-neox-20b":  # skips, with the reason, without ../shared/data
        return load(request.getfixturevalue("shared_data") / "tokenizer" / "gpt-neox-20b.json")
    return train_bpe([templates.pretrain_document(templates.get_domain("amazon"), history(60))], 300, tmp_path / "bpe.json")


def texts_of_every_shape():
    out = []
    for domain in ("amazon", "movielens", "amazon_books", "steam"):
        d, h = templates.get_domain(domain), history(12)
        out += [templates.pretrain_document(d, h), templates.pretrain_document(d, h[3:4]), templates.document_head(d),
                templates.next_item_pair(d, h[:-1], h[-1].item)[0], templates.next_item_pair(d, [], h[0].item)[0],
                templates.item_text(d, h[0].item)]
        if d.rating:
            out += [templates.rating_pair(d, h[:-2])[0], templates.rating_pair(d, h[:2])[0],
                    templates.format_rating(4.0, d.scale)]
        out += [templates.wrap_prompt(t, d, []) for t in (templates.RATING_TASK, templates.NEXT_ITEM_TASK)]
    return out


ADVERSARIAL = ["", "\n", "a\n", "\na", "\n\na", "a\n\nb", "a\n\n\nb", "a\n\n\n\nb", "a \nb", "a\n b", "a\t\nb", "a\n\tb",
               "a\r\nb", "a\n\n", " a\nb", "a\nb ", "a\u00a0\nb", "a\n\u3000b", "x\n<|endoftext|>\ny", "<|endoftext|>\n",
               "1\n2\n3", "'s\n'll", "Rating: 5.0/5.0\n\n### Response:", "...\n...", "😀\n😀"]


def test_ids_and_counts_equal_whole_encoding(tok):
    enc = Encoder(tok)
    assert enc.nl_id is not None  # both tokenizers are line-local: the line-by-line path is what is tested
    rng = random.Random(0)
    texts = texts_of_every_shape() + ADVERSARIAL
    texts += ["\n".join(rng.sample(texts, 3)) for _ in range(200)]  # joins: empty lines, runs of newlines
    whole = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    assert [i.tolist() for i in enc.ids(texts)] == whole
    assert enc.counts(texts) == [len(w) for w in whole]
    as_lines = [t.split("\n") for t in texts]  # the same texts, given as their lines
    assert [i.tolist() for i in enc.ids(as_lines)] == whole and enc.counts(as_lines) == [len(w) for w in whole]
    assert enc.encoded_tokens < sum(map(len, whole))  # lines shared between texts were encoded once


def test_a_full_cache_starts_again_and_gives_the_same_ids(tok, monkeypatch):
    texts = texts_of_every_shape()
    want = [i.tolist() for i in Encoder(tok).ids(texts)]
    monkeypatch.setattr(encoder_lib, "MAX_CACHED_TOKENS", 50)  # smaller than one call's lines
    enc = Encoder(tok)
    assert [enc.ids([t])[0].tolist() for t in texts] == want
    assert [enc.counts([t])[0] for t in texts] == list(map(len, want))
    assert len(enc._lines) + len(enc._texts) < len({line for t in texts for line in t.split("\n")})  # it started again
    assert [i.tolist() for i in enc.ids(texts)] == want and enc.counts(texts) == list(map(len, want))


def test_texts_that_cannot_be_cut_at_newlines_are_encoded_whole(tok):
    enc = Encoder(tok)
    assert enc._split(["Title: a\nTitle: b", "a\n\nb"])[0] == [["Title: a", "Title: b"], ["a", "", "b"]]
    texts = ["a\n", "a\n\n\nb", "a \nb", "a\n b", "a\r\nb", " a", "a\u3000", "x\n a\ny"]
    assert enc._split(texts)[0] == [None] * len(texts)
    assert enc._split([t.split("\n") for t in texts])[0] == [None] * len(texts)  # the same texts as lists of lines
    assert enc._split([["a", "b\nc"], ["", "a"], ["a", "", "b", "", "c"]])[0] == [None, ["", "a"], ["a", "", "b", "", "c"]]
    # a line that is dirty in one text (" a") is a whole text of its own elsewhere: each is what it is
    assert enc._split([" a", "x\n a", "a"])[0] == [None, None, ["a"]]
    assert enc.ids([" a"])[0].tolist() == tok.encode(" a", add_special_tokens=False).ids


def test_tokenizer_that_is_not_line_local_is_encoded_whole(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    assert not line_local(tok)
    bpe = train_bpe(["some text\nmore text"], 300, tmp_path / "bpe.json")
    assert line_local(bpe)
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    assert not line_local(bpe)
    enc = Encoder(bpe)
    assert enc.nl_id is None
    texts = texts_of_every_shape()
    assert [i.tolist() for i in enc.ids(texts)] == [e.ids for e in bpe.encode_batch(texts, add_special_tokens=False)]


def test_spot_check_stops_a_tokenizer_that_breaks_the_rule(tmp_path, monkeypatch):
    """A tokenizer taken for line-local that is not (here: one whose newline merges with the next word): the
    first ids handed out are checked against whole encodings, and the build stops naming the text."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {c: i for i, c in enumerate(["<|endoftext|>", "a", "b", "\n", "\na"])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="<|endoftext|>", max_input_chars_per_word=100))
    tok.pre_tokenizer = pre_tokenizers.Split("b", "isolated")
    monkeypatch.setattr(encoder_lib, "line_local", lambda tok: True)
    enc = Encoder(tok)
    with pytest.raises(RuntimeError, match="not line-local.*'b\\\\na'"):
        enc.ids(["b\na"])
