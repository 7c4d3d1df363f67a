"""data/token_lines.py: ids cut out of a whole text's ids must be exactly the ids of encoding the text
they stand for, for documents, next-item prompts and rating prompts with their hidden last line; where
that cannot be guaranteed, LineSpans.of must refuse (the pipeline then encodes)."""
import pytest

from data import templates
from data.records import Interaction, Item
from data.token_lines import LineSpans, joinable
from data.tokenizer import line_local, load, train_bpe

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


def ids(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def nl_id(tok):
    assert line_local(tok)
    (nl,) = ids(tok, "\n")
    return nl


RUNS = [(0, 40), (0, 2), (0, 13), (13, 27), (27, 40), (38, 40), (5, 7), (11, 14)]


def test_document_chunks(tok):
    d, h = templates.get_domain("amazon"), history(40)
    doc = templates.pretrain_document(d, h)
    spans = LineSpans.of(doc, ids(tok, doc), templates.document_head(d), "", nl_id(tok), len(h))
    assert spans is not None and spans.n == 40
    for a, b in RUNS + [(39, 40), (5, 6)]:
        want = ids(tok, templates.pretrain_document(d, h[a:b]))
        assert spans.join(a, b) == want and spans.length(a, b) == len(want), (a, b)
    # the chunker's per-line estimate, as it would encode it
    assert spans.line_tokens() == [len(ids(tok, templates.pretrain_line(d, x))) + 1 for x in h]


@pytest.mark.parametrize("domain", ["amazon", "movielens", "amazon_books"])
def test_prompt_chunks_next_item_and_rating_with_hidden_last_line(tok, domain):
    """The fine-tuning pairs of history[a:b] from the whole history's two prompts (prepare.PairCutter), and
    an evaluation prompt without its oldest lines (write_eval's trimming)."""
    d, nl = templates.get_domain(domain), nl_id(tok)
    h = [x if x.rating is not None else Interaction(x.user, x.item, rating=3.0, review=x.review) for x in history(40)]
    nxt, _ = templates.next_item_pair(d, h[:-1], h[-1].item)
    rat, _ = templates.rating_pair(d, h[:-1])
    nxt_spans = LineSpans.of(nxt, ids(tok, nxt), templates.prompt_head(templates.NEXT_ITEM_TASK, d),
                             templates.PROMPT_TAIL, nl, 39)
    rat_spans = LineSpans.of(rat, ids(tok, rat), templates.prompt_head(templates.RATING_TASK, d),
                             templates.PROMPT_TAIL, nl, 39)
    assert nxt_spans is not None and rat_spans is not None
    for a, b in RUNS:
        want = ids(tok, templates.next_item_pair(d, h[a:b - 1], h[b - 1].item)[0])
        assert nxt_spans.join(a, b - 1) == want and nxt_spans.length(a, b - 1) == len(want), (a, b)
        hidden = templates.rating_line(d, h[b - 2], hide=True)
        assert joinable(hidden)
        want = ids(tok, templates.rating_pair(d, h[a:b - 1])[0])
        assert rat_spans.join(a, b - 2, last=ids(tok, hidden)) == want, (a, b)
        assert rat_spans.length(a, b - 2, last=len(ids(tok, hidden))) == len(want)
        assert rat_spans.length(a, 39) == len(ids(tok, templates.rating_pair(d, h[a:-1])[0]))


def test_refuses_what_it_cannot_cut(tok):
    head, nl = templates.document_head(templates.get_domain("food")), nl_id(tok)
    good = head + "Title: a\nTitle: b"
    assert LineSpans.of(good, ids(tok, good), head, "", nl) is not None
    for text in [head + "Title: a \nTitle: b",  # a line ending with a space (" \n" is one pre-token)
                 head + "Title: a\n Title: b",  # a line starting with a space
                 head + "Title: a\n\nTitle: b",  # an empty line
                 head + "Title: a\nTitle: b ",  # whitespace at the end
                 head]:  # no lines
        assert LineSpans.of(text, ids(tok, text), head, "", nl) is None, text
    assert LineSpans.of(good, ids(tok, good), head, "", nl, n_lines=3) is None  # another line count
    assert LineSpans.of(good, ids(tok, good), head, "", None) is None  # the tokenizer is not line-local
    # ids in which a newline is not a token of its own (one newline token fewer than the text's newlines)
    bad = ids(tok, good)
    i = bad.index(nl, len(ids(tok, head)))
    assert LineSpans.of(good, bad[:i] + bad[i + 1:], head, "", nl) is None
    assert not joinable("a\nb") and not joinable(" a") and not joinable("") and joinable("Title: x; Rating:")


def test_find_runs_of_chunker_groups():
    """prepare.find_runs: which groups are unchanged runs of the history (those are cut, the rest encoded)."""
    import dataclasses
    from data.prepare import find_runs
    h = history(10)
    assert find_runs(h, [h[0:4], h[4:7], h[7:10]]) == [(0, 4), (4, 7), (7, 10)]
    cut = dataclasses.replace(h[5], review="cut")  # a review cut to fit: a new object
    assert find_runs(h, [h[0:4], [h[4], cut, h[6]], h[7:10]]) == [(0, 4), None, (7, 10)]
    assert find_runs(h, [h[0:4], h[5:7], h[7:10]]) == [(0, 4), (5, 7), (7, 10)]  # item 4 dropped
    assert find_runs(h, [[cut], h[6:8], []]) == [None, (6, 8), None]


def test_no_text_without_lines_is_cut(tok):
    """head + tail alone: their newlines would join into other tokens ("\\n\\n\\n\\n"), so it is never cut."""
    d = templates.get_domain("food")
    prompt, _ = templates.next_item_pair(d, history(3), history(4)[-1].item)
    spans = LineSpans.of(prompt, ids(tok, prompt), templates.prompt_head(templates.NEXT_ITEM_TASK, d),
                         templates.PROMPT_TAIL, nl_id(tok), 3)
    assert spans.length(2, 3) == len(ids(tok, templates.next_item_pair(d, history(3)[2:], history(4)[-1].item)[0]))
    for call in (lambda: spans.join(3, 3), lambda: spans.length(3, 3), lambda: spans.length(1, 1)):
        with pytest.raises(ValueError, match="without lines"):
            call()
