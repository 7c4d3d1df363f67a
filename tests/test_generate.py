"""Our greedy, sampling and beam search against transformers' `generate` on a tiny converted MPT."""
import collections

import pytest
import torch

from evaluation.generate import GenerationConfig, filter_logits, generate, left_pad, sample_next
from model.checkpoint import load_model
from model.convert import convert_from_hf
from test_model import tiny_hf

transformers = pytest.importorskip("transformers", reason="transformers generate is the reference")

PAD = 1  # a pad id distinct from EOS, so that padding and EOS cannot be confused in comparisons
EOS = 403  # a token of the tiny model whose output logit is boosted (below) so that beams end at mixed lengths
MAX_NEW = 20


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(transformers model, our converted copy). EOS's embedding row is doubled: it only ever acts as an
    output logit (prompts never hold it, a beam stops at it), so EOS becomes likely at some steps."""
    tmp = tmp_path_factory.mktemp("tiny_mpt")
    hf = tiny_hf(4, 64)
    with torch.no_grad():
        hf.transformer.wte.weight[EOS] *= 2.0
    hf.save_pretrained(tmp / "hf")
    convert_from_hf(tmp / "hf", tmp / "ours")
    return hf, load_model(tmp / "ours").eval()


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(5)
    return [torch.randint(2, 512, (n,), generator=g).tolist() for n in (12, 7, 3)]  # left padded to 12


def padded(outputs, width):
    """Our generated tokens, right padded with PAD to HF's output width: (total sequences, width)."""
    return torch.tensor([(g.tokens + [PAD] * width)[:width] for per in outputs for g in per])


def hf_generate(hf, prompts, **kwargs):
    ids, mask = left_pad(prompts, PAD)
    out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, eos_token_id=EOS,
                      pad_token_id=PAD, return_dict_in_generate=True, **kwargs)
    return out, ids.shape[1]


# ---------------------------------------------------------------------------------------------
# greedy


def test_greedy_matches_transformers(models, prompts):
    hf, ours = models
    ref, P = hf_generate(hf, prompts, do_sample=False, num_beams=1, output_logits=True)
    out = generate(ours, prompts, GenerationConfig(max_new_tokens=MAX_NEW, eos_token_id=EOS, pad_token_id=PAD))
    generated = ref.sequences[:, P:]
    assert torch.equal(padded(out, generated.shape[1]), generated)
    # log-probs of the chosen tokens, from HF's raw logits
    step_logprobs = torch.stack([torch.log_softmax(lg, -1) for lg in ref.logits], dim=1)  # (B, steps, V)
    for b, (g,) in enumerate(out):
        ref_lp = step_logprobs[b, torch.arange(len(g.tokens)), torch.tensor(g.tokens)].sum()
        assert g.logprob == pytest.approx(float(ref_lp), abs=1e-4)
    # the fixture exercises both ways to stop
    assert {g.finish_reason for (g,) in out} == {"eos", "length"}


def test_greedy_cached_equals_uncached(models, prompts):
    _, ours = models
    cfg = dict(max_new_tokens=MAX_NEW, eos_token_id=EOS, pad_token_id=PAD)
    cached = generate(ours, prompts, GenerationConfig(**cfg))
    uncached = generate(ours, prompts, GenerationConfig(use_cache=False, **cfg))
    for (a,), (b,) in zip(cached, uncached):
        assert a.tokens == b.tokens and a.logprob == pytest.approx(b.logprob, abs=1e-4)


# ---------------------------------------------------------------------------------------------
# beam search


@pytest.mark.parametrize("length_penalty,early_stopping", [(1.0, False), (0.0, False), (2.0, True), (1.0, "never")])
def test_beam_search_matches_transformers(models, prompts, length_penalty, early_stopping):
    hf, ours = models
    ref, P = hf_generate(hf, prompts, do_sample=False, num_beams=10, num_return_sequences=10, output_scores=True,
                         length_penalty=length_penalty, early_stopping=early_stopping)
    cfg = GenerationConfig(max_new_tokens=MAX_NEW, num_beams=10, num_return_sequences=10, eos_token_id=EOS,
                           pad_token_id=PAD, length_penalty=length_penalty, early_stopping=early_stopping)
    out = generate(ours, prompts, cfg)
    assert [len(per) for per in out] == [10, 10, 10]
    generated = ref.sequences[:, P:]
    assert torch.equal(padded(out, generated.shape[1]), generated)
    scores = torch.tensor([g.score for per in out for g in per])
    torch.testing.assert_close(scores, ref.sequences_scores, atol=1e-4, rtol=1e-5)
    for per in out:  # the score is the documented function of the raw log-prob
        for g in per:
            assert g.score == pytest.approx(g.logprob / len(g.tokens) ** length_penalty, rel=1e-5)
            assert (g.tokens[-1] == EOS) == (g.finish_reason == "eos")
    reasons = collections.Counter(g.finish_reason for per in out for g in per)
    assert reasons["eos"] > 0 and reasons["length"] > 0, reasons


def test_beam_search_cached_equals_uncached(models, prompts):
    _, ours = models
    cfg = dict(max_new_tokens=MAX_NEW, num_beams=4, num_return_sequences=3, eos_token_id=EOS, pad_token_id=PAD)
    cached = generate(ours, prompts, GenerationConfig(**cfg))
    uncached = generate(ours, prompts, GenerationConfig(use_cache=False, **cfg))
    for per_a, per_b in zip(cached, uncached):
        assert [g.tokens for g in per_a] == [g.tokens for g in per_b]
        assert [g.score for g in per_a] == pytest.approx([g.score for g in per_b], abs=1e-4)


def test_batch_equals_one_prompt_at_a_time(models, prompts):
    """Left padding and dropping finished prompts from the batch change nothing."""
    _, ours = models
    cfg = GenerationConfig(max_new_tokens=MAX_NEW, num_beams=5, num_return_sequences=5, eos_token_id=EOS,
                           pad_token_id=PAD)
    batched = generate(ours, prompts, cfg)
    for p, per in zip(prompts, batched):
        (alone,) = generate(ours, [p], cfg)
        assert [g.tokens for g in alone] == [g.tokens for g in per]
        assert [g.score for g in alone] == pytest.approx([g.score for g in per], abs=1e-4)


def letters(ids):
    """A toy detokeniser: token t -> one letter, so stop strings can be placed by hand."""
    return "".join(chr(ord("a") + t % 26) for t in ids)


class LetterStop(transformers.StoppingCriteria):
    """The same stop-string rule for HF: the generated text (prompt excluded) contains the string."""

    def __init__(self, stop, prompt_len):
        self.stop, self.prompt_len = stop, prompt_len

    def __call__(self, input_ids, scores, **kwargs):
        return torch.tensor([self.stop in letters(row[self.prompt_len:].tolist()) for row in input_ids])


def test_stop_strings_match_transformers(models, prompts):
    hf, ours = models
    P = max(map(len, prompts))
    for n in (1, 6):
        base = dict(max_new_tokens=MAX_NEW, eos_token_id=EOS, pad_token_id=PAD, num_beams=n, num_return_sequences=n)
        plain = generate(ours, prompts, GenerationConfig(**base))
        stop = letters(plain[0][0].tokens)[-1]  # a letter the best unstopped sequence of prompt 0 ends with
        criteria = transformers.StoppingCriteriaList([LetterStop(stop, P)])
        ref, _ = hf_generate(hf, prompts, do_sample=False, stopping_criteria=criteria, num_beams=n,
                             num_return_sequences=n, output_scores=n > 1)
        out = generate(ours, prompts, GenerationConfig(stop_strings=[stop], **base), decode=letters)
        generated = ref.sequences[:, P:]
        assert torch.equal(padded(out, generated.shape[1]), generated)
        stopped = [g for per in out for g in per if g.finish_reason == "stop_string"]
        assert stopped, "the fixture should stop some sequence at the stop string"
        for g in stopped:  # the stop string ends in the last token and nowhere before
            assert stop in letters(g.tokens) and stop not in letters(g.tokens[:-1])


def test_generation_config_validation():
    with pytest.raises(ValueError, match="num_return_sequences"):
        GenerationConfig(num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="deterministic"):
        GenerationConfig(num_beams=2, do_sample=True)
    with pytest.raises(ValueError, match="decode function"):
        generate(None, [[1]], GenerationConfig(stop_strings=["x"]))


def test_prompt_too_long_names_the_config_key(models):
    _, ours = models
    with pytest.raises(ValueError, match="max_seq_len=128"):
        generate(ours, [[5] * 120], GenerationConfig(max_new_tokens=20))


# ---------------------------------------------------------------------------------------------
# sampling


def test_filters_equal_transformers_warpers():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 300, generator=g)
    logits[:, :40] = logits[:, :1]  # ties at the top-k boundary
    for temperature, top_k, top_p in [(1.0, 50, 0.9), (0.7, 10, 1.0), (1.3, 0, 0.5), (1.0, 45, 0.95)]:
        processors = transformers.LogitsProcessorList()
        if temperature != 1.0:
            processors.append(transformers.TemperatureLogitsWarper(temperature))
        if top_k:
            processors.append(transformers.TopKLogitsWarper(top_k))
        if top_p < 1.0:
            processors.append(transformers.TopPLogitsWarper(top_p))
        ref = processors(None, logits.clone())
        ours = filter_logits(logits, temperature, top_k, top_p)
        assert torch.equal(torch.isinf(ours), torch.isinf(ref))
        torch.testing.assert_close(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)])


# probabilities 0.40 0.25 0.15 0.10 0.06 0.04 (already sorted); kept sets worked out by hand:
# top-k 3 -> {0,1,2}; top-p 0.6 -> 0.40 < 0.6, 0.40 + 0.25 >= 0.6 -> {0,1}; top-p 0.7 -> 0.65 < 0.7 -> {0,1,2};
# top-k 2 with top-p 0.9 -> top-k leaves 0.40/0.65, 0.25/0.65 -> {0,1}; top-k 5 + top-p 0.5 (of 0.96):
# 0.40/0.96 = 0.417 < 0.5 -> {0,1}
CONSTRUCTED = torch.tensor([0.40, 0.25, 0.15, 0.10, 0.06, 0.04])


@pytest.mark.parametrize("top_k,top_p,kept", [(3, 1.0, {0, 1, 2}), (0, 0.6, {0, 1}), (0, 0.7, {0, 1, 2}),
                                              (2, 0.9, {0, 1}), (5, 0.5, {0, 1}), (0, 1.0, {0, 1, 2, 3, 4, 5})])
def test_sampling_support_and_frequencies(top_k, top_p, kept):
    n = 40_000
    logits = CONSTRUCTED.log().expand(n, -1)
    cfg = GenerationConfig(do_sample=True, top_k=top_k, top_p=top_p)
    draws = sample_next(logits, cfg, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=6).double()
    assert set(draws.unique().tolist()) == kept
    expected = torch.zeros(6, dtype=torch.float64)
    expected[list(kept)] = CONSTRUCTED.double()[list(kept)]
    expected /= expected.sum()
    torch.testing.assert_close(counts / n, expected, atol=0.01, rtol=0)  # ~4 standard errors at n = 40k


def test_sampling_matches_transformers_and_is_seeded(models, prompts):
    """With the same seed our generator draws what HF's global generator draws (both CPU Philox/MT)."""
    hf, ours = models
    settings = dict(top_k=50, top_p=0.9, temperature=0.8)
    runs = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        ref, P = hf_generate(hf, prompts, do_sample=True, **settings)
        cfg = GenerationConfig(max_new_tokens=MAX_NEW, do_sample=True, eos_token_id=EOS, pad_token_id=PAD,
                               seed=seed, **settings)
        out = generate(ours, prompts, cfg)
        assert torch.equal(padded(out, ref.sequences.shape[1] - P), ref.sequences[:, P:])
        assert [g.tokens for (g,) in generate(ours, prompts, cfg)] == [g.tokens for (g,) in out]  # reproducible
        runs[seed] = [g.tokens for (g,) in out]
    assert runs[0] != runs[1]


# ---------------------------------------------------------------------------------------------
# trie-constrained beam search


def toy_catalog(n=60, seed=3):
    """Token sequences of length 2..6 sharing prefixes (items of one 'brand' share the first tokens)."""
    g = torch.Generator().manual_seed(seed)
    heads = torch.randint(2, 512, (8, 2), generator=g).tolist()
    seqs = []
    for i in range(n):
        tail = torch.randint(2, 512, (int(torch.randint(0, 5, (1,), generator=g)),), generator=g).tolist()
        seqs.append(heads[i % 8][: 1 + i % 2] + [t for t in tail if t != EOS])
    return seqs


def test_constrained_beam_search_returns_only_catalog_items(models, prompts):
    from evaluation.constrained import CatalogTrie

    hf, ours = models
    seqs = toy_catalog()
    ids = [str(i) for i in range(len(seqs))]
    trie = CatalogTrie(seqs, ids, eos_id=EOS, vocab_size=512)
    catalog = {tuple(s) + (EOS,) for s in seqs}
    cfg = GenerationConfig(max_new_tokens=10, num_beams=5, num_return_sequences=5, eos_token_id=EOS, pad_token_id=PAD)
    out = generate(ours, prompts, cfg, constraint=trie)
    for per in out:
        assert per, "some item must come back"
        for g in per:
            assert tuple(g.tokens) in catalog and g.finish_reason == "eos"
            assert g.extra["item_ids"] and all(seqs[int(i)] == g.tokens[:-1] for i in g.extra["item_ids"])
        assert len({tuple(g.tokens) for g in per}) == len(per)  # no repeated item

    # the same as HF with prefix_allowed_tokens_fn (which masks log-probs the same way), finite scores only
    P = max(map(len, prompts))

    def allowed(batch_id, row):
        node = 0
        for tok in row[P:].tolist():
            node = trie.children[node].get(tok) if node is not None else None
        if node is None or not trie.children[node]:  # HF runs on dead (-inf) or ended (-1e9) rows; any token
            return list(range(512))
        return sorted(trie.children[node])

    ref, _ = hf_generate(hf, prompts, do_sample=False, num_beams=5, num_return_sequences=5, output_scores=True,
                         prefix_allowed_tokens_fn=allowed)
    for b, per in enumerate(out):
        rows = [r for r in range(5 * b, 5 * b + 5) if ref.sequences_scores[r] > -1e8]
        hf_items = [[t for t in ref.sequences[r, P:].tolist()] for r in rows]
        assert [g.tokens for g in per] == [h[: len(g.tokens)] for g, h in zip(per, hf_items)]
        assert [g.score for g in per] == pytest.approx([float(ref.sequences_scores[r]) for r in rows], abs=1e-4)

    # a budget too short for any item: nothing comes back rather than a cut-off non-item
    short = generate(ours, prompts, GenerationConfig(max_new_tokens=1, num_beams=5, num_return_sequences=5,
                                                     eos_token_id=EOS, pad_token_id=PAD), constraint=trie)
    assert short == [[], [], []]


def test_constrained_beams_end_on_items_whatever_the_stop_strings(models, prompts):
    """A stop string that occurs inside item texts does not end a constrained beam mid-item (the outputs would
    then be no catalog item, and evaluate.py failed on their empty item list): the trie decides where outputs
    end, so the outputs are those of the same search without stop strings."""
    from evaluation.constrained import CatalogTrie

    _, ours = models
    seqs = toy_catalog()
    trie = CatalogTrie(seqs, [str(i) for i in range(len(seqs))], eos_id=EOS, vocab_size=512)

    def decode(tokens):  # a character per token
        return "".join(chr(0x4E00 + t) for t in tokens)
    base = GenerationConfig(max_new_tokens=10, num_beams=5, num_return_sequences=5, eos_token_id=EOS, pad_token_id=PAD)
    plain = generate(ours, prompts, base, constraint=trie)
    # the first token of a returned item of two or more tokens: a stop string met before the item ends
    stop = decode(next(g.tokens for per in plain for g in per if len(g.tokens) >= 3)[:1])
    stopped = generate(ours, prompts, GenerationConfig(**{**base.__dict__, "stop_strings": (stop,)}), decode=decode,
                       constraint=trie)
    def found(outputs):
        return [[(g.tokens, g.score) for g in per] for per in outputs]
    assert found(stopped) == found(plain)
    for per in stopped:
        assert per and all(g.extra["item_ids"] and g.finish_reason == "eos" for g in per)
    assert any(stop in decode(g.tokens) for per in stopped for g in per)  # the case arose


def test_trie_over_real_item_texts_round_trips(shared_data):
    """With the GPT-NeoX tokenizer, a constrained output decodes back to exactly its catalog text."""
    import json

    from data.formats.tokenizer import load
    from evaluation.constrained import CatalogTrie

    tok_path = shared_data / "tokenizer" / "gpt-neox-20b.json"
    items_path = shared_data / "amazon-beauty-p5" / "items.jsonl"
    if not tok_path.is_file() or not items_path.is_file():
        pytest.skip(f"{tok_path} or {items_path} not found")
    tok = load(tok_path)
    with open(items_path) as f:
        items = [json.loads(next(f)) for _ in range(300)]
    ids = [x["item_id"] for x in items]
    texts = [f"Title: {x['title'] or 'unknown title'}" for x in items]
    trie = CatalogTrie.from_catalog(ids, texts, lambda b: [e.ids for e in tok.encode_batch(b, add_special_tokens=False)],
                                    eos_id=tok.token_to_id("<|endoftext|>"), vocab_size=50432)
    assert len(trie) == len(set(texts))
    for item_id, text in zip(ids, texts):
        tokens = tok.encode(text, add_special_tokens=False).ids + [0]
        described = trie.describe(tokens)["item_ids"]
        assert item_id in described and all(texts[ids.index(i)] == text for i in described)
        assert tok.decode(tokens[:-1], skip_special_tokens=True) == text
