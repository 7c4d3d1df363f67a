"""Decoding a [gMASK] span with the dynamic position mechanism (evaluation/generate.py InfillState): with the KV
cache it equals recomputing the whole sequence, and the log-probabilities it reports are those of one full forward
over the training collator's own example of the same answer (so positions and intra ids are the training ones)."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from data.formats.infilling import EntityTrie, gmask_prompt, infill, units_of
from evaluation.generate import GenerationConfig, generate
from model.config import MPTConfig
from model.mpt import build_model

IDS = {"mask": 505, "smask": 506, "gmask": 507, "start": 508, "end": 509}


@pytest.fixture(scope="module")
def model():
    m = build_model(dataclasses.replace(MPTConfig.from_name("tiny"), intra_positions=16), seed=0).eval()
    with torch.no_grad():
        m.wte_intra.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))  # as if trained
    return m


def histories():
    """Two rendered histories: item lines (entities) separated by a newline token 2, the catalog's items."""
    items = [[11, 12, 13], [20, 21], [30], [11, 12, 40], [50, 51, 52, 53]]
    out = []
    for pick in ([0, 1, 2], [3, 4, 1, 0, 2]):
        tokens, entities = [], []
        for i in pick:
            if tokens:
                tokens.append(2)
            entities.append((len(tokens), len(tokens) + len(items[i])))
            tokens += items[i]
        out.append((tokens, entities))
    return items, out


@pytest.mark.parametrize("num_beams", [1, 3])
def test_cache_equals_recompute(model, num_beams):
    items, hist = histories()
    prompts = [gmask_prompt(t, e, IDS) for t, e in hist]
    trie = EntityTrie(items)
    cfg = GenerationConfig(max_new_tokens=6, num_beams=num_beams, num_return_sequences=num_beams,
                           eos_token_id=IDS["end"])
    cached = generate(model, prompts, cfg, infill=trie)
    recomputed = generate(model, prompts, dataclasses.replace(cfg, use_cache=False), infill=trie)
    for a, b in zip(cached, recomputed):
        assert [g.tokens for g in a] == [g.tokens for g in b]
        for x, y in zip(a, b):
            assert x.logprob == pytest.approx(y.logprob, abs=1e-5)


def test_decoded_logprobs_are_the_training_examples(model):
    """Score the greedy answer with one forward over `infill(...)` of history + answer (the collator's example,
    positions and intra ids by its rule): the same log-probabilities the decoder reported, step by step."""
    items, hist = histories()
    trie = EntityTrie(items)
    prompts = [gmask_prompt(t, e, IDS) for t, e in hist]
    out = generate(model, prompts, GenerationConfig(max_new_tokens=5, eos_token_id=IDS["end"]), infill=trie)
    for (tokens, entities), per_prompt in zip(hist, out):
        g = per_prompt[0]
        answer = [t for t in g.tokens if t != IDS["end"]]
        last = len(units_of(len(tokens), entities))
        ex = infill(tokens + answer, entities + ([(len(tokens), len(tokens) + len(answer))] if answer else []),
                    [(last, last + 1)], IDS, trie, mask="gmask")
        with torch.no_grad():
            logits = model(torch.tensor([ex.input_ids]), positions=torch.tensor([ex.positions]),
                           prefix_end=torch.tensor([ex.prefix_end]), intra_positions=torch.tensor([ex.intra]))[0]
        log_probs = F.log_softmax(logits, -1)
        n = ex.prefix_end
        targets = ex.targets[n:n + len(g.tokens)]  # the answer, then [END] when the decoder stopped there
        assert targets == g.tokens
        total = sum(float(log_probs[n + k, t]) for k, t in enumerate(targets))
        assert total == pytest.approx(g.logprob, abs=1e-4)


def test_scored_answers_are_the_training_examples(model):
    """evaluation/scoring.py on infilling prompts (rating over a set, candidate ranking): each answer's score equals
    one forward over the fine-tuning collator's example of that prompt and answer (data/formats/infilling.py
    pair_infilled: the same positions and intra ids), whatever the chunking."""
    from data.formats.infilling import pair_infilled
    from evaluation.scoring import score_continuations

    items, hist = histories()
    trie = EntityTrie(items)
    answers = [[20, 21], [11, 12, 13], [11, 12, 40], [50], [30, 30, 30]]  # entities, prefixes, and not
    prompts = [gmask_prompt(t, e, IDS) for t, e in hist]
    scoring = prompts  # InfillPrompts are scored as they are
    for budget in (8, 4096):
        scores = score_continuations(model, scoring, [[a + [IDS["end"]] for a in answers]] * 2, pad_token_id=0,
                                     token_budget=budget, intra_trie=trie)
        for (tokens, entities), per_prompt in zip(hist, scores):
            for answer, got in zip(answers, per_prompt):
                ex = pair_infilled(tokens, answer, entities, IDS, trie)
                with torch.no_grad():
                    logits = model(torch.tensor([ex.input_ids]), positions=torch.tensor([ex.positions]),
                                   prefix_end=torch.tensor([ex.prefix_end]),
                                   intra_positions=torch.tensor([ex.intra]))[0]
                log_probs = F.log_softmax(logits, -1)
                n = ex.prefix_end
                want = sum(float(log_probs[n + k, t]) for k, t in enumerate(ex.targets[n:]))
                assert got.n_tokens == len(answer) + 1 and got.logprob == pytest.approx(want, abs=1e-4)
    with pytest.raises(ValueError, match="pass the entity trie"):
        score_continuations(model, scoring, [[[20, IDS["end"]]]] * 2)


def test_a_causal_checkpoint_refuses_to_infill():
    causal = build_model(MPTConfig.from_name("tiny"), seed=0).eval()
    items, hist = histories()
    with pytest.raises(ValueError, match="need a model with an intra-position table"):
        generate(causal, [gmask_prompt(*hist[0], IDS)], GenerationConfig(max_new_tokens=2), infill=EntityTrie(items))


def test_bad_infilling_prompts_are_named(model):
    items, hist = histories()
    trie = EntityTrie(items)
    cfg = GenerationConfig(max_new_tokens=2, eos_token_id=IDS["end"])
    good = gmask_prompt(*hist[0], IDS)
    no_mask = dataclasses.replace(good, input_ids=good.input_ids[:-1], positions=good.positions[:-1],
                                  intra=good.intra[:-1])  # Part A alone: nothing says where to fill
    with pytest.raises(ValueError, match=r"infilling prompt 0: expected Part A \(ending in its mask\) \+ \[START\]"):
        generate(model, [no_mask], cfg, infill=trie)
    foreign = dataclasses.replace(good, input_ids=good.input_ids[:-1] + [60000])  # a [START] id of another model
    with pytest.raises(ValueError, match=r"prompt 0 holds token id 60000, not a row of the model's 512-row"):
        generate(model, [foreign], cfg, infill=trie)
    long_entity = EntityTrie([[11] * 40])  # the pool holds an entity longer than the 16-row intra table
    with pytest.raises(ValueError, match=r"an entity of 40 tokens, which needs intra id 41: the model's intra table "
                                         r"has 16 rows"):
        generate(model, [good], cfg, infill=long_entity)
    too_long = EntityTrie([[11] * 126])  # ... and one that cannot fit the 128-token context with its mask tokens
    with pytest.raises(ValueError, match=r"an entity of 126 tokens: with \[gMASK\], \[START\] and \[END\] it is "
                                         r"longer than the model's context \(model config key max_seq_len = 128\)"):
        generate(model, [good], cfg, infill=too_long)
