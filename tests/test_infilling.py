"""The blank-infilling format (data/formats/infilling.py): the spec's worked example exactly, entities never split,
the loss on Part B only, GLM's span sampler, and the intra rule the decoder shares."""
import random

import pytest

from data.formats.infilling import (IGNORE_INDEX, EntityTrie, IntraTracker, infill, sample_spans, span_intra,
                                    units_of)

IDS = {"mask": 901, "smask": 902, "gmask": 903, "start": 904, "end": 905}
M, S, E = IDS["mask"], IDS["start"], IDS["end"]


def test_the_specs_worked_example():
    """../shared/spec/recsysllm.md 1.2: x1..x7, entities e1 = x1..x3 and e2 = x6 x7, spans e1 and x5."""
    x = [None, 11, 12, 13, 14, 15, 16, 17]
    tokens, entities = x[1:], [(0, 3), (5, 7)]
    units = units_of(7, entities)
    assert units == [(0, 3), (3, 4), (4, 5), (5, 7)]
    trie = EntityTrie([x[1:4], x[6:8]])
    ex = infill(tokens, entities, [(0, 1), (2, 3)], IDS, trie, position_scheme="glm")
    assert ex.input_ids == [M, x[4], M, x[6], x[7], S, x[1], x[2], x[3], S, x[5]]
    assert ex.targets == [IGNORE_INDEX] * 5 + [x[1], x[2], x[3], E, x[5], E]
    assert ex.positions == [0, 1, 2, 3, 4, 0, 0, 0, 0, 2, 2]  # GLM's inter ids
    assert ex.intra == [0, 0, 0, 1, 2, 1, 2, 3, 4, 1, 2]  # RecSysLLM (R7; Part A's 1, 2 inside e2: our reading)
    assert ex.prefix_end == 5
    ours = infill(tokens, entities, [(0, 1), (2, 3)], IDS, trie)  # continuation positions (docs/recsysllm.md)
    assert ours.positions == [0, 1, 2, 3, 4, 0, 1, 2, 3, 2, 3] and ours.input_ids == ex.input_ids


def test_gmask_suffix_is_next_item_prediction():
    tokens, entities = [1, 2, 3, 4, 5, 6], [(0, 2), (2, 4), (4, 6)]  # three items, the last is the answer
    ex = infill(tokens, entities, [(2, 3)], IDS, EntityTrie([[1, 2], [3, 4], [5, 6]]), mask="gmask")
    assert ex.input_ids == [1, 2, 3, 4, IDS["gmask"], S, 5, 6]
    assert ex.positions == [0, 1, 2, 3, 4, 4, 5, 6]  # [gMASK] k, [START] k, targets k+1, ...: a plain continuation
    assert ex.targets[-3:] == [5, 6, E] and ex.prefix_end == 5


def test_intra_rule_is_the_decoders():
    trie = EntityTrie([[5, 6, 7], [5, 9], [8]])
    for span in ([5, 6, 7, 8], [5, 9, 5, 6], [2, 5, 6], [8, 8, 5]):
        tracker = IntraTracker(trie)
        assert span_intra(span, trie) == [1] + [tracker.step(t) for t in span]
    assert span_intra([5, 6, 7, 8], trie) == [1, 2, 3, 4, 1]  # a new entity restarts at 1
    assert span_intra([2, 5, 6], trie) == [1, 2, 1, 2]  # 2 is no entity: 5 starts one


@pytest.mark.parametrize("seed", range(20))
def test_sampled_spans_never_split_an_entity_and_the_loss_is_on_part_b_only(seed):
    rng = random.Random(seed)
    n_items = rng.randint(3, 30)
    tokens, entities = [], []
    for _ in range(n_items):  # items of 1-6 tokens between separator tokens
        start = len(tokens)
        tokens += [rng.randint(10, 800) for _ in range(rng.randint(1, 6))]
        entities.append((start, len(tokens)))
        tokens.append(1)
    units = units_of(len(tokens), entities)
    spans = sample_spans(len(units), rng)
    assert all(b < c for (_, b), (c, _) in zip(spans, spans[1:]))  # a unit between spans
    ex = infill(tokens, entities, spans, IDS, EntityTrie([tokens[s:e] for s, e in entities]))
    n_span_tokens = sum(units[b - 1][1] - units[a][0] for a, b in spans)
    assert len(ex.input_ids) == len(tokens) + 2 * len(spans)
    assert ex.prefix_end == len(tokens) - n_span_tokens + len(spans)
    assert all(t == IGNORE_INDEX for t in ex.targets[:ex.prefix_end])
    assert sum(t != IGNORE_INDEX for t in ex.targets) == n_span_tokens + len(spans)
    for a, b in spans:  # every masked run starts and ends on unit boundaries: entities whole
        start, end = units[a][0], units[b - 1][1]
        assert all(not (s < start < e) and not (s < end < e) for s, e in entities)


def test_bad_spans_and_entities_are_named():
    with pytest.raises(ValueError, match=r"entity \(2, 1\)"):
        units_of(5, [(2, 1)])
    with pytest.raises(ValueError, match=r"span \(1, 3\)"):
        infill([1, 2, 3, 4], [], [(1, 3), (2, 4)], IDS, None)


def test_a_rows_cut_pieces_of_lines_are_text():
    """A packed row starts and ends inside lines the build's fixed-length rows cut: those pieces are not entities
    (row_lines), while a whole document's first and last item lines are (document_entities)."""
    from data.formats.infilling import document_entities, row_entities

    NL, EOS = 2, 0
    row = [5, 6, NL, 7, 8, NL, 9, EOS, 10, 11]  # ...a piece | item 7 8 | item 9 | EOS | the next document's piece
    assert row_entities(row, NL, EOS) == [(3, 5), (6, 7)]
    assert document_entities([5, 6, NL, 7, 8, NL], NL, EOS) == [(0, 2), (3, 5)]
