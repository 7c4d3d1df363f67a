"""FlexAttention with ALiBi (attention/flex.py) and the model's attn_impl "flex", against the reference.

On the CPU, torch's eager flex_attention forward (torch 2.13 has no CPU backward; that it raises is tested) in fp32
against `attention_reference` in float64, at 1e-5: plain causal, left/right padding (pad query rows give 0),
GLM's prefix + explicit positions (RecSysLLM), decoding against a cache (Sq = 1 and 3), lengths that are not
multiples of flex's 128-wide tiles (37, 130), head dims 16/64/128. At model level the "flex" MPT gives the "torch"
MPT's logits, also when generating with the KV cache. With CUDA: the compiled kernel's forward and backward under
tests/test_kernels.py's rule (fp32 within 1e-5, bf16 at most 2x the reference's own bf16 error).

The "torch" path's bf16 bias (SDPA needs the bias in q's dtype; attention_reference's docstring has the measurement
at seq 2048): on the CPU, rounding the bias alone costs no more than the explicit path's own bf16 error; with CUDA,
the memory-efficient SDPA kernel with that bias passes the kernel rule at MPT-7B's shape.
"""
import dataclasses
import functools
import json
import os

import pytest
import torch

import test_kernels
from attention.flex import flex_attn_alibi, flex_bias
from attention.reference import attention_bias, attention_reference
from config import ConfigError
from model.config import MPTConfig
from model.mpt import MPT, alibi_slopes
from test_kernels import DEVICE, make_inputs, padding_mask, run_attention

CUDA = torch.cuda.is_available()
# the CPU runs the eager flex_attention on purpose (attention/flex.py), which torch warns about once
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
TOL = dict(atol=1e-5, rtol=1e-5)
BIAS_ROUNDING_SHARE = 1.0  # the bf16 bias's error / the explicit path's: measured 0.54-0.61 at seq 512, <= 0.77 at 2048


def check_forward(q, k, v, **kwargs):
    """flex's forward (no grad: the CPU has no backward) vs the float64 reference; returns flex's output."""
    with torch.no_grad():
        got = flex_attn_alibi(q, k, v, **kwargs)
    exact = attention_reference(q.double(), k.double(), v.double(), **kwargs)
    assert got.dtype == q.dtype and got.shape == exact.shape
    torch.testing.assert_close(got.double(), exact, **TOL)
    return got


def qkv(B, H, Sq, Sk, D, seed=0):
    q, k, v, _ = make_inputs(B, H, Sq, Sk, D, torch.float32, seed=seed)
    return q, k, v


# ---------------------------------------------------------------------------------------------------- the function


@pytest.mark.parametrize("head_dim", [16, 64, 128])
@pytest.mark.parametrize("seq", [37, 130])  # not multiples of the 128-wide tiles; 130 spans two
def test_causal(seq, head_dim):
    check_forward(*qkv(2, 4, seq, seq, head_dim, seed=seq + head_dim), alibi_slopes=alibi_slopes(4).to(DEVICE))


def test_not_causal_and_options():
    q, k, v = qkv(2, 6, 37, 37, 16, seed=1)  # 6 heads: MPT's non-power-of-two slope order
    slopes = alibi_slopes(6).to(DEVICE)
    check_forward(q, k, v, alibi_slopes=slopes, causal=False)
    check_forward(q, k, v, alibi_slopes=slopes, softmax_scale=0.37)
    check_forward(q, k, v, alibi_slopes=None)


@pytest.mark.parametrize("seq_q,seq_k", [(1, 37), (3, 37), (1, 130), (3, 130), (40, 17)])
def test_decoding_against_a_cache(seq_q, seq_k):
    """The queries are the last Sq of Sk positions (bottom-right causal). (40, 17): the first 23 queries precede every
    key, so they see nothing and give 0."""
    got = check_forward(*qkv(2, 4, seq_q, seq_k, 64, seed=seq_q * seq_k), alibi_slopes=alibi_slopes(4).to(DEVICE))
    if seq_q > seq_k:
        assert got[:, :, : seq_q - seq_k].abs().max() == 0


@pytest.mark.parametrize("seq_q,seq_k", [(70, 70), (1, 70), (3, 70)])
def test_key_padding(seq_q, seq_k):
    """Rows: left padded (generation), right padded (training), unpadded, all padding. Query rows that see no key (the
    left-padded row's pad queries, the all-padding row) give 0, not NaN."""
    q, k, v = qkv(4, 4, seq_q, seq_k, 32, seed=3)
    out = check_forward(q, k, v, alibi_slopes=alibi_slopes(4).to(DEVICE), key_padding_mask=padding_mask(seq_k))
    assert out[3].abs().max() == 0
    if seq_q == seq_k:
        assert out[0, :, : seq_k // 3].abs().max() == 0


@pytest.mark.parametrize("seq_q", [None, 1, 3])  # None: Sq = Sk (training); 1 and 3: decoding against the cache
def test_prefix_and_positions(seq_q):
    """RecSysLLM's blank infilling: a bidirectional Part A (prefix_end) and GLM positions (spans revisit Part A's
    positions, so they are not monotone), with a left-padded row."""
    Sk = 12
    q, k, v = qkv(4, 4, seq_q or Sk, Sk, 32, seed=seq_q or 0)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 2, 3, 4, 5, 6], list(range(12)),
                              [0, 1, 2, 3, 4, 1, 2, 3, 4, 3, 4, 5], list(range(11, -1, -1))], device=DEVICE)
    prefix_end = torch.tensor([7, 0, 12, 5], device=DEVICE)  # GLM's sep, none, everything, another
    pad = torch.ones(4, Sk, dtype=torch.bool, device=DEVICE)
    pad[3, :2] = False
    check_forward(q, k, v, alibi_slopes=alibi_slopes(4).to(DEVICE), positions=positions, prefix_end=prefix_end,
                  key_padding_mask=pad)


def test_one_flex_bias_serves_every_layer():
    """What the model does: one FlexBias per forward pass, used by each layer's q, k, v."""
    slopes, pad = alibi_slopes(4).to(DEVICE), padding_mask(40)
    bias = flex_bias(slopes, 40, 40, key_padding_mask=pad, device=DEVICE)
    for seed in range(2):
        q, k, v = qkv(4, 4, 40, 40, 16, seed=seed)
        with torch.no_grad():
            torch.testing.assert_close(flex_attn_alibi(q, k, v, bias=bias),
                                       flex_attn_alibi(q, k, v, slopes, key_padding_mask=pad), atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"built for batch 4, seq_q 40, seq_k 40; got batch 4, seq_q 1, seq_k 41"):
        flex_attn_alibi(q[:, :, :1], torch.cat([k, k[:, :, :1]], 2), torch.cat([v, v[:, :, :1]], 2), bias=bias)
    with pytest.raises(ValueError, match=r"built for batch 4, seq_q 40, seq_k 40; got batch 2, seq_q 40"):
        flex_attn_alibi(q[:2], k[:2], v[:2], bias=bias)


def test_errors_name_the_input():
    q = torch.zeros(2, 4, 5, 16, device=DEVICE)
    slopes = alibi_slopes(4).to(DEVICE)
    with pytest.raises(ValueError, match=r"alibi_slopes must be \(4,\)"):
        flex_attn_alibi(q, q, q, alibi_slopes(2).to(DEVICE))
    with pytest.raises(ValueError, match=r"key_padding_mask must be \(2, 5\)"):
        flex_attn_alibi(q, q, q, slopes, key_padding_mask=torch.ones(2, 4, dtype=torch.bool, device=DEVICE))
    with pytest.raises(ValueError, match="prefix_end is given but causal=False"):
        flex_attn_alibi(q, q, q, slopes, causal=False, prefix_end=torch.zeros(2, dtype=torch.long, device=DEVICE))
    with pytest.raises(ValueError, match="positions needs seq_q <= seq_k"):
        flex_attn_alibi(q, q[:, :, :3], q[:, :, :3], slopes, positions=torch.zeros(2, 3, dtype=torch.long,
                                                                                    device=DEVICE))


def test_cpu_backward_is_refused_with_the_reason():
    q = torch.randn(1, 2, 4, 16, requires_grad=True)
    with pytest.raises(NotImplementedError, match="no CPU backward.*attn_impl 'torch'"):
        flex_attn_alibi(q, q, q, alibi_slopes(2))


@pytest.mark.skipif(os.environ.get("RECGPT_COMPILE_TESTS") != "1",
                    reason="compiling flex_attention for the CPU (inductor's C++ template) takes 15-20 s of one core "
                           "(measured): too slow for the suite; set RECGPT_COMPILE_TESTS=1 to run it")
def test_compiled_forward_on_cpu():
    q, k, v = (t.cpu() for t in qkv(4, 4, 37, 37, 16, seed=5))
    slopes, pad = alibi_slopes(4), padding_mask(37, device="cpu")
    bias = flex_bias(slopes, 37, 37, key_padding_mask=pad)
    with torch.no_grad():
        got = torch.compile(flex_attn_alibi)(q, k, v, bias=bias)
    exact = attention_reference(q.double(), k.double(), v.double(), slopes, key_padding_mask=pad)
    torch.testing.assert_close(got.double(), exact, **TOL)


# ---------------------------------------------------------------------------------------------------- the model


def tiny_pair(**overrides):
    """Two MPTs with the same weights, attn_impl "torch" and "flex" (the tiny config's shape: 4 heads of 16)."""
    cfg = dataclasses.replace(MPTConfig.from_name("tiny"), **overrides)
    torch.manual_seed(0)
    ref = MPT(cfg).to(DEVICE)
    ref.init_weights()
    if cfg.intra_positions:  # as if trained: the table starts at zero
        with torch.no_grad():
            ref.wte_intra.weight.normal_(0, 0.5)
    flex = MPT(dataclasses.replace(cfg, attn_impl="flex")).to(DEVICE)
    flex.load_state_dict(ref.state_dict())
    return ref.eval(), flex.eval()


def padded_batch(seed):
    """(3, 37) token ids and their attention mask: row 1 left-padded by 6, row 2 right-padded by 8, row 0 whole."""
    ids = torch.randint(0, 512, (3, 37), generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    mask = torch.ones(3, 37, dtype=torch.long, device=DEVICE)
    mask[1, :6] = 0
    mask[2, -8:] = 0
    return ids, mask


def test_model_flex_equals_torch():
    """fp32 logits within 1e-5 on every row of a batch with left padding, right padding and none."""
    ref, flex = tiny_pair()
    ids, mask = padded_batch(seed=2)
    with torch.no_grad():
        torch.testing.assert_close(flex(ids, attention_mask=mask), ref(ids, attention_mask=mask), **TOL)
        torch.testing.assert_close(flex(ids), ref(ids), **TOL)


def test_model_flex_generation_with_the_kv_cache():
    """A left-padded prompt prefilled, then tokens decoded one at a time against the cache: the same logits as the
    "torch" model's steps, and as one full forward."""
    ref, flex = tiny_pair()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 512, (2, 20), generator=g).to(DEVICE)
    mask = torch.ones(2, 20, dtype=torch.long, device=DEVICE)
    mask[1, :7] = 0  # left padded
    prompt = 13

    def stepwise(model):
        cache = model.new_kv_cache(2, max_len=20)
        steps = [model(ids[:, :prompt], attention_mask=mask[:, :prompt], kv_cache=cache)]
        for t in range(prompt, 20):
            steps.append(model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], kv_cache=cache))
        return torch.cat(steps, 1)

    with torch.no_grad():
        got, want, full = stepwise(flex), stepwise(ref), flex(ids, attention_mask=mask)
    torch.testing.assert_close(got, want, **TOL)
    real = mask.bool()
    torch.testing.assert_close(got[real], full[real], **TOL)


def test_model_flex_blank_infilling_with_the_kv_cache():
    """RecSysLLM: Part A prefilled with its bidirectional prefix at GLM positions, then a span decoded at positions
    that revisit Part A's (the cache keeps the keys' positions): "flex" gives "torch"'s logits."""
    ref, flex = tiny_pair(intra_positions=8)
    g = torch.Generator().manual_seed(4)
    part_a, span = (torch.randint(0, 512, (2, n), generator=g).to(DEVICE) for n in (9, 4))
    pos_a, pos_span = torch.arange(9, device=DEVICE).expand(2, 9), (2 + torch.arange(4, device=DEVICE)).expand(2, 4)
    intra_a, intra_span = torch.zeros_like(part_a), (1 + torch.arange(4, device=DEVICE)).expand(2, 4)
    prefix = torch.full((2,), 9, device=DEVICE)

    def stepwise(model):
        cache = model.new_kv_cache(2, 16)
        steps = [model(part_a, kv_cache=cache, positions=pos_a, prefix_end=prefix, intra_positions=intra_a)]
        for t in range(4):
            steps.append(model(span[:, t:t + 1], kv_cache=cache, positions=pos_span[:, t:t + 1],
                               intra_positions=intra_span[:, t:t + 1]))
        return torch.cat(steps, 1)

    with torch.no_grad():
        torch.testing.assert_close(stepwise(flex), stepwise(ref), **TOL)


@pytest.mark.skipif(CUDA, reason="the CPU's refusal; CUDA trains through the compiled kernel")
def test_model_flex_training_on_cpu_is_refused():
    _, flex = tiny_pair()
    with pytest.raises(NotImplementedError, match="attn_impl 'flex'.*no CPU backward"):
        flex.train()(torch.zeros(1, 5, dtype=torch.long))


def test_config_accepts_flex_and_exports_a_value_hf_loads(tmp_path):
    """attn_impl "flex" is ours: the exported config.json says "torch" (mosaicml's remote-code config rejects other
    values), which transformers reads, and which reads back as the same model but for attn_impl."""
    cfg = dataclasses.replace(MPTConfig.from_name("tiny"), attn_impl="flex")
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_mpt_json()))
    assert json.loads((tmp_path / "config.json").read_text())["attn_config"]["attn_impl"] == "torch"
    assert MPTConfig.from_mpt_json(tmp_path / "config.json") == dataclasses.replace(cfg, attn_impl="torch")
    transformers = pytest.importorskip("transformers")
    assert transformers.MptConfig.from_pretrained(tmp_path).attn_config.attn_impl == "torch"
    with pytest.raises(ConfigError, match="must be 'torch', 'triton' or 'flex'"):
        MPTConfig.from_dict({**cfg.to_dict(), "attn_impl": "flash"})


# ---------------------------------------------------------------------------------------------------- CUDA


@pytest.fixture
def kernel_rule(monkeypatch):
    """tests/test_kernels.py's check (forward and the three gradients against float64; fp32 within 1e-5, fp16/bf16 at
    most 2x the error of attention_reference's explicit path in that dtype), for an implementation given here."""
    def check(impl, q, k, v, do, **kwargs):
        monkeypatch.setattr(test_kernels, "flash_attn_alibi", impl)
        return test_kernels.check_against_reference(q, k, v, do, **kwargs)
    return check


def test_bf16_bias_rounding_costs_less_than_the_explicit_paths_bf16():
    """Why the "torch" path may hand SDPA a bf16 bias: rounding the ALiBi + mask bias to bf16, everything else exact
    (float64), moves the output and the gradients much less than the explicit path's own bf16 error does (seq 512,
    a left-padded row, MPT-7B's steepest, middle and flattest slopes; attention_reference's docstring: seq 2048)."""
    slopes = alibi_slopes(32)[[0, 15, 31]]
    q, k, v, do = (t.cpu() for t in make_inputs(1, 3, 512, 512, 128, torch.bfloat16, seed=8))
    mask = torch.ones(1, 512, dtype=torch.bool)
    mask[0, :50] = False
    exact64 = [t.double() for t in (q, k, v, do)]
    exact = run_attention(attention_reference, *exact64, alibi_slopes=slopes, key_padding_mask=mask)
    rounded = run_attention(attention_reference, *exact64,
                            bias=attention_bias(slopes, 512, 512, key_padding_mask=mask, dtype=torch.bfloat16))
    explicit = run_attention(attention_reference, q, k, v, do, alibi_slopes=slopes, key_padding_mask=mask)
    for name, r, x, e in zip(("out", "dq", "dk", "dv"), rounded, explicit, exact):
        err, explicit_err = (r - e).abs().max().item(), (x.double() - e).abs().max().item()
        assert err <= BIAS_ROUNDING_SHARE * explicit_err, f"{name}: {err:.3g} vs the explicit path's {explicit_err:.3g}"


@pytest.mark.skipif(not CUDA, reason="needs CUDA: the memory-efficient SDPA kernel of the model's bf16 torch path")
@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
def test_gpu_torch_path_bf16_sdpa_at_mpt7b_shape(padded, kernel_rule):
    """The model's "torch" path in bf16 (SDPA with the bias in bf16) under the kernel rule at MPT-7B's shape."""
    B, H, S, D = 2, 32, 2048, 128
    q, k, v, do = make_inputs(B, H, S, S, D, torch.bfloat16, seed=7)
    mask = None
    if padded:
        mask = torch.ones(B, S, dtype=torch.bool, device=DEVICE)
        mask[0, :300] = False
        mask[1, -500:] = False
    kernel_rule(functools.partial(attention_reference, sdpa=True), q, k, v, do,
                alibi_slopes=alibi_slopes(H).to(DEVICE), key_padding_mask=mask)


@pytest.mark.skipif(not CUDA, reason="needs CUDA: the compiled flex kernel (the CPU has no flex backward)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("seq_q,seq_k,head_dim", [(37, 37, 16), (130, 130, 64), (1, 777, 128), (300, 1500, 128)])
def test_gpu_forward_and_backward(seq_q, seq_k, head_dim, dtype, kernel_rule):
    q, k, v, do = make_inputs(2, 6, seq_q, seq_k, head_dim, dtype, seed=seq_k)
    kernel_rule(flex_attn_alibi, q, k, v, do, alibi_slopes=alibi_slopes(6).to(DEVICE),
                key_padding_mask=padding_mask(seq_k)[[0, 1]])


@pytest.mark.skipif(not CUDA, reason="needs CUDA: the compiled flex kernel (the CPU has no flex backward)")
def test_gpu_bf16_mpt7b_shape_with_prefix_and_positions(kernel_rule):
    B, H, S, D = 2, 32, 2048, 128
    q, k, v, do = make_inputs(B, H, S, S, D, torch.bfloat16, seed=9)
    positions = torch.cat([torch.arange(1500), torch.arange(100, 648)]).expand(B, S).to(DEVICE)  # a span revisits
    kernel_rule(flex_attn_alibi, q, k, v, do, alibi_slopes=alibi_slopes(H).to(DEVICE), positions=positions,
                prefix_end=torch.tensor([1500, 0], device=DEVICE))
    kernel_rule(flex_attn_alibi, q, k, v, do, alibi_slopes=alibi_slopes(H).to(DEVICE))


@pytest.mark.skipif(not CUDA, reason="needs CUDA: the compiled flex kernel (the CPU has no flex backward)")
def test_gpu_model_flex_trains_like_torch():
    """Loss and every parameter gradient of the "flex" model equal the "torch" model's (fp32, padded batch)."""
    ref, flex = tiny_pair()
    ids, mask = padded_batch(seed=5)
    labels = ids.masked_fill(mask == 0, -100)

    def loss_and_grads(model):
        model.train().zero_grad()
        logits = model(ids, attention_mask=mask)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    (loss_flex, grads_flex), (loss_ref, grads_ref) = loss_and_grads(flex), loss_and_grads(ref)
    torch.testing.assert_close(loss_flex, loss_ref, **TOL)
    for name in grads_ref:
        torch.testing.assert_close(grads_flex[name], grads_ref[name], atol=1e-5, rtol=1e-4,
                                   msg=lambda m: f"{name}: {m}")
