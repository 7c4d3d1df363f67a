"""The decoder against transformers' MptForCausalLM and against explicit formulas of our own."""
import dataclasses
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from model.checkpoint import load_model, save_model
from model.config import MPTConfig
from model.convert import convert_from_hf, convert_to_hf, ours_to_hf
from model.mpt import MPT, alibi_slopes, build_model

transformers = pytest.importorskip("transformers", reason="transformers is the reference implementation")
TOL = dict(atol=1e-5, rtol=1e-5)  # fp32 parity with the reference


def tiny_hf(n_heads=4, d_model=64, seed=0):
    """A randomly initialised MptForCausalLM in the MPT-7B shape (no bias, expansion 4, bias max 8)."""
    torch.manual_seed(seed)
    cfg = transformers.MptConfig(d_model=d_model, n_heads=n_heads, n_layers=2, vocab_size=512, max_seq_len=128)
    model = transformers.MptForCausalLM(cfg).eval()
    with torch.no_grad():  # LayerNorm weights start at 1; perturb them so the mapping of norms is tested too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def left_padded_batch(seed=1, lengths=(20, 15, 9), vocab=512):
    g = torch.Generator().manual_seed(seed)
    S = max(lengths)
    ids = torch.randint(2, vocab, (len(lengths), S), generator=g)
    mask = torch.zeros(len(lengths), S, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, S - n:] = 1
        ids[b, : S - n] = 0  # pad id
    return ids, mask


def assert_real_tokens_close(ours, ref, mask):
    real = mask.bool()
    torch.testing.assert_close(ours[real], ref[real], **TOL)


# ---------------------------------------------------------------------------------------------
# parity with transformers, through the converter, both directions


@pytest.mark.parametrize("n_heads,d_model", [(4, 64), (6, 48)])
def test_from_hf_safetensors_parity_and_back(tmp_path, n_heads, d_model):
    hf = tiny_hf(n_heads, d_model)
    hf.save_pretrained(tmp_path / "hf", max_shard_size="100KB")  # several shards + index
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    convert_from_hf(tmp_path / "hf", tmp_path / "ours")
    ours = load_model(tmp_path / "ours")

    ids, mask = left_padded_batch()
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
        out = ours(ids, attention_mask=mask)
        torch.testing.assert_close(ours(ids[:1]), hf(ids[:1]).logits, **TOL)  # unpadded row
    assert_real_tokens_close(out, ref, mask)

    convert_to_hf(tmp_path / "ours", tmp_path / "hf2")
    back = transformers.MptForCausalLM.from_pretrained(tmp_path / "hf2").eval()
    with torch.no_grad():
        again = back(ids, attention_mask=mask).logits
    torch.testing.assert_close(again, ref, atol=0, rtol=0)  # the same weights, bit for bit


def _save_bin_shards_like_mosaicml(hf_model, out_dir):
    """Two pickle shards and an index, the layout mosaicml/mpt-7b ships (shard 1 ends mid-block)."""
    out_dir.mkdir()
    hf_model.config.save_pretrained(out_dir)
    state = {k: v.clone() for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    names = list(state)
    cut = names.index("transformer.blocks.1.ffn.down_proj.weight")
    shards = {"pytorch_model-00001-of-00002.bin": names[:cut], "pytorch_model-00002-of-00002.bin": names[cut:]}
    weight_map = {}
    for shard, keys in shards.items():
        torch.save({k: state[k] for k in keys}, out_dir / shard)
        weight_map.update({k: shard for k in keys})
    import json

    (out_dir / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_from_hf_bin_shards_parity(tmp_path):
    hf = tiny_hf(4, 64)
    _save_bin_shards_like_mosaicml(hf, tmp_path / "hf")
    convert_from_hf(tmp_path / "hf", tmp_path / "ours", dtype=None)
    ours = load_model(tmp_path / "ours")
    ids, mask = left_padded_batch()
    with torch.no_grad():
        assert_real_tokens_close(ours(ids, attention_mask=mask), hf(ids, attention_mask=mask).logits, mask)


def test_load_model_dtype_and_device(tmp_path):
    hf = tiny_hf()
    hf.save_pretrained(tmp_path / "hf")
    convert_from_hf(tmp_path / "hf", tmp_path / "ours", dtype=torch.bfloat16)
    ours = load_model(tmp_path / "ours", dtype=torch.float32)
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in ours.parameters())
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in ours.parameters())
    assert not any(p.is_meta for p in ours.parameters())
    bf16 = load_model(tmp_path / "ours")
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())


# ---------------------------------------------------------------------------------------------
# KV cache


@pytest.mark.parametrize("n_heads,d_model", [(4, 64), (6, 48)])
def test_kv_cache_left_padded_decode_matches_full_forward(n_heads, d_model):
    cfg = dataclasses.replace(MPTConfig.from_name("tiny"), n_heads=n_heads, d_model=d_model)
    model = build_model(cfg, seed=0).eval()
    ids, mask = left_padded_batch(lengths=(24, 17, 6))
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        cache = model.new_kv_cache(ids.shape[0], max_len=ids.shape[1])
        prompt = 5  # prefill 5 positions, then one token at a time
        steps = [model(ids[:, :prompt], attention_mask=mask[:, :prompt], kv_cache=cache)]
        for t in range(prompt, ids.shape[1]):
            steps.append(model(ids[:, t:t + 1], attention_mask=mask[:, : t + 1], kv_cache=cache))
    assert cache.length == ids.shape[1]
    assert_real_tokens_close(torch.cat(steps, dim=1), full, mask)


def test_kv_cache_reorder_and_limits():
    model = build_model(MPTConfig.from_name("tiny"), seed=0).eval()
    ids = torch.randint(0, 512, (3, 8))
    with torch.no_grad():
        cache = model.new_kv_cache(3, max_len=10)
        model(ids, kv_cache=cache)
        cache.reorder(torch.tensor([2, 2, 0]))
        nxt = torch.randint(0, 512, (3, 1))
        stepped = model(nxt, kv_cache=cache)
        full = model(torch.cat([ids[[2, 2, 0]], nxt], dim=1))[:, -1:]
    torch.testing.assert_close(stepped, full, **TOL)
    for index in ([0, 0, 1, 2, 2], [1]):  # beams spreading out (more rows), finished prompts leaving (fewer)
        rows = torch.tensor(index)
        prefix = torch.cat([ids[[2, 2, 0]], nxt], dim=1)  # (3, 9)
        history = prefix[rows]
        with torch.no_grad():
            grown = model.new_kv_cache(3, max_len=10)
            model(prefix, kv_cache=grown)
            storage = grown.keys.untyped_storage().data_ptr()
            grown.reorder(rows)
            step = torch.randint(0, 512, (len(index), 1))
            torch.testing.assert_close(model(step, kv_cache=grown), model(torch.cat([history, step], 1))[:, -1:],
                                       **TOL)
        # fewer rows: gathered in place (no second cache); more rows: a new cache of the new size
        assert (grown.keys.untyped_storage().data_ptr() == storage) == (len(index) <= 3)
    with pytest.raises(ValueError, match="KV cache holds 10"):
        model(torch.randint(0, 512, (3, 2)), kv_cache=cache)
    with pytest.raises(ValueError, match="max_seq_len=128"):
        model(torch.randint(0, 512, (1, 129)))


# ---------------------------------------------------------------------------------------------
# options transformers does not implement, against explicit formulas written here


def slopes_by_hand(n_heads, bias_max):
    """Press et al.'s recipe as spec/mpt.md 5.1 states it, written independently of model.mpt."""
    def pow2(n):
        return [2 ** (-(k + 1) * bias_max / n) for k in range(n)]

    n = 2 ** math.floor(math.log2(n_heads))
    if n == n_heads:
        return torch.tensor(pow2(n))
    return torch.tensor(pow2(n) + pow2(2 * n)[0::2][: n_heads - n])


def reference_forward(model: MPT, ids):
    """MPT's forward from its equations, one head at a time, no masks besides causal."""
    cfg, sd = model.config, {k: v.double() for k, v in model.state_dict().items()}
    B, S = ids.shape
    H, D = cfg.n_heads, cfg.head_dim

    def ln(x, name):
        return F.layer_norm(x, (cfg.d_model,), sd[name + ".weight"], sd.get(name + ".bias"), cfg.norm_eps)

    def lin(x, name):
        return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias"))

    slopes = slopes_by_hand(H, cfg.alibi_bias_max).double()
    pos = torch.arange(S, dtype=torch.float64)
    x = sd["wte.weight"][ids]
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        qkv = lin(ln(x, p + "norm_1"), p + "attn.Wqkv")
        if cfg.clip_qkv is not None:
            qkv = qkv.clamp(-cfg.clip_qkv, cfg.clip_qkv)
        q, k, v = qkv.split(cfg.d_model, dim=-1)
        if cfg.qk_ln:
            q, k = ln(q, p + "attn.q_ln"), ln(k, p + "attn.k_ln")
        heads = []
        for h in range(H):
            qh, kh, vh = (t[..., h * D:(h + 1) * D] for t in (q, k, v))
            scores = qh @ kh.transpose(-1, -2) * cfg.scale - slopes[h] * (pos[:, None] - pos[None, :])
            scores = scores.masked_fill(pos[None, :] > pos[:, None], float("-inf"))
            heads.append(torch.softmax(scores, -1) @ vh)
        x = x + lin(torch.cat(heads, -1), p + "attn.out_proj")
        x = x + lin(F.gelu(lin(ln(x, p + "norm_2"), p + "ffn.up_proj")), p + "ffn.down_proj")
    logits = ln(x, "norm_f") @ sd["wte.weight"].T
    return logits * cfg.logit_scale if cfg.logit_scale is not None else logits


@pytest.mark.parametrize("options", [
    dict(no_bias=False),
    dict(alibi_bias_max=16.0, n_heads=6, d_model=48),
    dict(clip_qkv=0.05),
    dict(qk_ln=True, no_bias=False),
    dict(logit_scale=0.3),
    dict(softmax_scale=0.5, expansion_ratio=3),
])
def test_options_against_explicit_formulas(options):
    cfg = dataclasses.replace(MPTConfig.from_name("tiny"), **options)
    model = build_model(cfg, seed=0).eval()
    with torch.no_grad():  # non-trivial biases and norm weights
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    ids = torch.randint(0, cfg.vocab_size, (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).double(), reference_forward(model, ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_heads", [32, 12, 6, 20, 40, 1])
def test_alibi_slopes_match_spec(n_heads):
    torch.testing.assert_close(alibi_slopes(n_heads, 8.0), slopes_by_hand(n_heads, 8).float())


def test_alibi_slopes_examples_from_spec():
    exponents = [2, 4, 6, 8, 1, 3]  # spec/mpt.md 5.1, H = 6
    torch.testing.assert_close(alibi_slopes(6), torch.tensor([2.0 ** -e for e in exponents]))
    assert alibi_slopes(32)[0].item() == pytest.approx(0.8408964, abs=1e-7)
    assert alibi_slopes(32)[-1].item() == 0.00390625


# ---------------------------------------------------------------------------------------------
# the published MPT-7B


def test_mpt7b_on_meta_has_published_parameter_count_and_names():
    cfg = MPTConfig.from_name("mpt-7b")
    with torch.device("meta"):
        model = MPT(cfg)
    assert sum(p.numel() for p in model.parameters()) == 6_649_286_656 == cfg.num_params()
    published = {"transformer.wte.weight", "transformer.norm_f.weight"} | {
        f"transformer.blocks.{i}.{n}.weight" for i in range(32)
        for n in ("norm_1", "attn.Wqkv", "attn.out_proj", "norm_2", "ffn.up_proj", "ffn.down_proj")}
    ours = [ours_to_hf(n) for n in model.state_dict()]
    assert len(ours) == len(set(ours)) == 194
    assert set(ours) == published
    assert model.state_dict()["blocks.0.attn.Wqkv.weight"].shape == (12288, 4096)


def test_mpt7b_config_json_roundtrip(tmp_path):
    """The published config.json (spec/mpt.md section 1) reads to our mpt-7b config and back."""
    import json

    published = {
        "architectures": ["MPTForCausalLM"], "attn_config": {
            "alibi": True, "alibi_bias_max": 8, "attn_impl": "torch", "attn_pdrop": 0,
            "attn_type": "multihead_attention", "attn_uses_sequence_id": False, "clip_qkv": None,
            "prefix_lm": False, "qk_ln": False, "softmax_scale": None},
        "auto_map": {"AutoConfig": "configuration_mpt.MPTConfig"}, "d_model": 4096, "emb_pdrop": 0,
        "embedding_fraction": 1.0, "expansion_ratio": 4, "init_config": {
            "emb_init_std": None, "emb_init_uniform_lim": None, "fan_mode": "fan_in", "init_div_is_residual": True,
            "init_gain": 0, "init_nonlinearity": "relu", "init_std": 0.02, "name": "kaiming_normal_",
            "verbose": 0},
        "init_device": "cpu", "learned_pos_emb": True, "logit_scale": None, "max_seq_len": 2048,
        "model_type": "mpt", "n_heads": 32, "n_layers": 32, "no_bias": True,
        "norm_type": "low_precision_layernorm", "resid_pdrop": 0, "tokenizer_name": "EleutherAI/gpt-neox-20b",
        "torch_dtype": "bfloat16", "transformers_version": "4.28.1", "use_cache": False, "vocab_size": 50432}
    (tmp_path / "config.json").write_text(json.dumps(published))
    cfg = MPTConfig.from_mpt_json(tmp_path / "config.json")
    assert cfg == dataclasses.replace(MPTConfig.from_name("mpt-7b"), attn_impl="torch")
    (tmp_path / "back.json").write_text(json.dumps(cfg.to_mpt_json()))
    assert MPTConfig.from_mpt_json(tmp_path / "back.json") == cfg
    hf_cfg = transformers.MptConfig.from_pretrained(tmp_path / "back.json")
    assert (hf_cfg.d_model, hf_cfg.n_heads, hf_cfg.n_layers, hf_cfg.vocab_size) == (4096, 32, 32, 50432)


# ---------------------------------------------------------------------------------------------
# initialisation and construction


def test_init_follows_llm_foundry_kaiming():
    cfg = dataclasses.replace(MPTConfig.from_name("tiny"), d_model=256, n_heads=4, n_layers=4, vocab_size=2048)
    model = build_model(cfg, seed=0)
    std = {n: p.std().item() for n, p in model.named_parameters()}
    fan_in = math.sqrt(2 / 256)
    assert std["blocks.0.attn.Wqkv.weight"] == pytest.approx(fan_in, rel=0.02)
    assert std["blocks.0.ffn.up_proj.weight"] == pytest.approx(fan_in, rel=0.02)
    assert std["wte.weight"] == pytest.approx(fan_in, rel=0.02)
    assert std["blocks.0.attn.out_proj.weight"] == pytest.approx(fan_in / math.sqrt(8), rel=0.03)
    assert std["blocks.0.ffn.down_proj.weight"] == pytest.approx(math.sqrt(2 / 1024) / math.sqrt(8), rel=0.03)
    assert torch.all(model.blocks[0].norm_1.weight == 1)
    again = build_model(cfg, seed=0)
    assert torch.equal(again.wte.weight, model.wte.weight)  # seeded init is reproducible


def test_training_steps_reduce_loss():
    model = build_model(MPTConfig.from_name("tiny"), seed=0)
    ids = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        logits = model(ids)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, 512), ids[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]  # memorises a fixed batch: every parameter is wired to the loss


def test_triton_impl_without_cuda_falls_back_with_one_log_line(monkeypatch, caplog):
    import model.mpt as mpt

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(mpt, "_warned_no_triton", False)
    torch_model = build_model(MPTConfig.from_name("tiny"), seed=0).eval()
    triton_model = build_model(dataclasses.replace(torch_model.config, attn_impl="triton"), init=False).eval()
    triton_model.load_state_dict(torch_model.state_dict())
    ids = torch.randint(0, 512, (2, 9))
    with caplog.at_level(logging.WARNING, logger="model.mpt"), torch.no_grad():
        out, again = triton_model(ids), triton_model(ids)
    assert len([r for r in caplog.records if "needs CUDA" in r.message]) == 1
    torch.testing.assert_close(out, torch_model(ids), atol=0, rtol=0)
    torch.testing.assert_close(again, out, atol=0, rtol=0)


def test_save_model_roundtrip_in_several_shards(tmp_path):
    model = build_model(MPTConfig.from_name("tiny"), seed=0)
    save_model(model.state_dict(), model.config, tmp_path / "ckpt", max_shard_bytes=100_000)
    assert len(list((tmp_path / "ckpt").glob("model-*.safetensors"))) > 1
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.config == model.config
    for name, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name


def test_kernel_gets_fp32_slopes_when_fsdp_casts_them(monkeypatch):
    """FSDP2's bf16 policy casts every floating forward input of a block, AttentionInputs.slopes included (0.8409
    becomes 0.8398); the kernel path must still see MPT's fp32 slopes."""
    import attention.flash_alibi as flash
    from model.mpt import AttentionInputs, alibi_slopes, attention

    seen = {}

    def fake_kernel(q, k, v, slopes, **kwargs):
        seen["slopes"] = slopes
        return q

    monkeypatch.setattr(flash, "flash_attn_alibi", fake_kernel)
    cfg = MPTConfig.from_name("tiny")
    exact = alibi_slopes(6, 8.0)
    cfg = dataclasses.replace(cfg, n_heads=6, d_model=48, attn_impl="triton")
    q = torch.zeros(1, 6, 3, 8)
    attention(q, q, q, AttentionInputs(exact.to(torch.bfloat16), None, None), cfg)
    assert seen["slopes"].dtype == torch.float32 and torch.equal(seen["slopes"], exact)
    attention(q, q, q, AttentionInputs(exact, None, None), cfg)  # fp32 as given: passed through unchanged
    assert seen["slopes"] is exact
