"""The Triton flash attention (attention/flash_alibi.py) against the plain reference (attention/reference.py).

On the CPU the kernels run under TRITON_INTERPRET=1 (set by conftest.py before any kernel import), in
fp32 and fp16 (the interpreter cannot do bf16); with CUDA the same tests run compiled, plus bf16 tests
at MPT-7B's attention shape.

Every check compares against `attention_reference` evaluated in float64 on the upcast inputs, for the
output and the three gradients (the upstream gradient dO is random, so every element of dQ/dK/dV is
exercised). Tolerances:
- fp32 (dot products in IEEE fp32, `input_precision="ieee"`): |err| <= 1e-5 + 1e-5 * |ref|. Observed
  errors are about 1e-6 at unit-variance inputs, so this is a ~10x margin that still catches any wrong
  mask, bias sign, scale or block-boundary slip (those are O(0.1..1) errors).
- fp16 / bf16: the kernel's error vs the float64 reference must be at most 2x the error of the same
  reference run in that low precision (plus 1e-4 for tiny tensors), FlashAttention's own rule: the
  kernel may be no less accurate than the PyTorch implementation in the same dtype up to a factor 2.
"""
import dataclasses
import math
import os

import pytest
import torch

from attention.flash_alibi import flash_attn_alibi
from model.mpt import alibi_slopes as mpt_slopes  # checked in tests/test_model.py
from attention.reference import attention_bias, attention_reference

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(not CUDA and not INTERPRET, reason="needs CUDA or TRITON_INTERPRET=1")

FP32_ATOL = FP32_RTOL = 1e-5


def make_inputs(B, H, Sq, Sk, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, s, D, generator=g) for s in (Sq, Sk, Sk))
    do = torch.randn(B, H, Sq, D, generator=g)
    return [t.to(DEVICE, dtype) for t in (q, k, v, do)]


def run_attention(fn, q, k, v, do, **kwargs):
    """Output and (dq, dk, dv) of fn(q, k, v, **kwargs) with upstream gradient do."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, **kwargs)
    out.backward(do)
    return out.detach(), q.grad, k.grad, v.grad


def check_against_reference(q, k, v, do, **kwargs):
    """Kernel vs float64 reference (and, in fp16/bf16, vs the same reference in that dtype)."""
    got = run_attention(flash_attn_alibi, q, k, v, do, **kwargs)
    exact = run_attention(attention_reference, q.double(), k.double(), v.double(), do.double(), **kwargs)
    names = ("out", "dq", "dk", "dv")
    for name, g, e in zip(names, got, exact):
        assert g.dtype == q.dtype and g.shape == e.shape, name
        assert torch.isfinite(g).all(), f"{name} has non-finite values"
    if q.dtype == torch.float32:
        for name, g, e in zip(names, got, exact):
            torch.testing.assert_close(g.double(), e, atol=FP32_ATOL, rtol=FP32_RTOL, msg=lambda m: f"{name}: {m}")
    else:
        low = run_attention(attention_reference, q, k, v, do, **kwargs)
        for name, g, l, e in zip(names, got, low, exact):
            err, ref_err = (g.double() - e).abs().max().item(), (l.double() - e).abs().max().item()
            assert err <= 2 * ref_err + 1e-4, f"{name}: kernel error {err:.3g} > 2 x reference error {ref_err:.3g}"
    return got, exact


# ---------------------------------------------------------------------------------------------------
# CPU (interpreter) and GPU: small shapes
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("n_heads,head_dim", [(4, 32), (6, 16)], ids=["4h", "6h"])
@pytest.mark.parametrize("seq", [1, 17, 64, 130])
def test_matches_reference(seq, n_heads, head_dim, causal):
    q, k, v, do = make_inputs(2, n_heads, seq, seq, head_dim, torch.float32, seed=seq)
    check_against_reference(q, k, v, do, alibi_slopes=mpt_slopes(n_heads).to(DEVICE), causal=causal)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("seq_q,seq_k", [(1, 37), (7, 64), (16, 130), (40, 17)])
def test_query_shorter_than_keys(seq_q, seq_k, causal):
    """Sq < Sk: decoding (Sq = 1) and chunked prefill against a cache, bottom-right causal alignment.

    (40, 17) is Sq > Sk: the first 23 queries precede every key, so causally they see nothing -> 0.
    """
    q, k, v, do = make_inputs(2, 6, seq_q, seq_k, 16, torch.float32, seed=seq_q + seq_k)
    got, exact = check_against_reference(q, k, v, do, alibi_slopes=mpt_slopes(6).to(DEVICE), causal=causal)
    if causal and seq_q > seq_k:
        assert got[0][:, :, : seq_q - seq_k].abs().max() == 0


def padding_mask(seq_k, device=DEVICE):
    """(4, Sk) key masks: left padded (generation), right padded (training), all real, all padding."""
    mask = torch.ones(4, seq_k, dtype=torch.bool)
    mask[0, : seq_k // 3] = False  # left padding
    mask[1, seq_k - seq_k // 4:] = False  # right padding
    mask[3] = False  # a sequence that is only padding: every row fully masked
    return mask.to(device)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("seq_q,seq_k", [(70, 70), (5, 70)])
def test_key_padding(seq_q, seq_k, causal):
    """Left/right padded batches; pad queries of the left-padded row (causal) and the all-pad row see
    no key: output 0, gradients 0, no NaN."""
    q, k, v, do = make_inputs(4, 4, seq_q, seq_k, 32, torch.float32, seed=3)
    mask = padding_mask(seq_k)
    (out, dq, dk, dv), _ = check_against_reference(q, k, v, do, alibi_slopes=mpt_slopes(4).to(DEVICE),
                                                   causal=causal, key_padding_mask=mask)
    assert out[3].abs().max() == 0 and dq[3].abs().max() == 0 and dk[3].abs().max() == 0
    assert dk[0, :, : seq_k // 3].abs().max() == 0 and dv[0, :, : seq_k // 3].abs().max() == 0  # pad keys
    if causal and seq_q == seq_k:  # left-padded pad queries see nothing
        assert out[0, :, : seq_k // 3].abs().max() == 0 and dq[0, :, : seq_k // 3].abs().max() == 0


def test_left_padding_equals_unpadded_run():
    """ALiBi depends only on distances, so a left-padded sequence's real rows equal an unpadded run (mpt.md 5.3)."""
    pad, seq = 9, 30
    q, k, v, _ = make_inputs(1, 4, seq, seq, 16, torch.float32, seed=5)
    slopes = mpt_slopes(4).to(DEVICE)
    mask = torch.ones(1, seq, dtype=torch.bool, device=DEVICE)
    mask[0, :pad] = False
    padded = flash_attn_alibi(q, k, v, slopes, key_padding_mask=mask)
    unpadded = flash_attn_alibi(q[:, :, pad:], k[:, :, pad:], v[:, :, pad:], slopes)
    torch.testing.assert_close(padded[:, :, pad:], unpadded, atol=FP32_ATOL, rtol=FP32_RTOL)


@pytest.mark.parametrize("case", ["no_alibi", "custom_scale", "strided_views"])
def test_options_and_layouts(case):
    B, H, S, D = 2, 4, 33, 16
    slopes = mpt_slopes(H).to(DEVICE)
    kwargs = dict(alibi_slopes=slopes, causal=True)
    q, k, v, do = make_inputs(B, H, S, S, D, torch.float32, seed=11)
    if case == "no_alibi":
        kwargs["alibi_slopes"] = None
    elif case == "custom_scale":
        kwargs["softmax_scale"] = 0.37
    else:
        # the model's layout: q, k, v are (B, H, S, D) views of one fused (B, S, 3 * H * D) projection
        qkv = torch.randn(B, S, 3 * H * D, generator=torch.Generator().manual_seed(2)).to(DEVICE)
        q, k, v = (t.view(B, S, H, D).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        assert not q.is_contiguous()
        do = do.transpose(2, 3).contiguous().transpose(2, 3)  # a non-contiguous upstream gradient too
    check_against_reference(q, k, v, do, **kwargs)


def test_kv_cache_view():
    """Keys/values as slices of a preallocated cache (B, H, max_len, D), queries the last few positions."""
    B, H, D, max_len, filled, new = 2, 4, 16, 96, 45, 3
    cache_k = torch.randn(B, H, max_len, D, device=DEVICE)
    cache_v = torch.randn(B, H, max_len, D, device=DEVICE)
    q = torch.randn(B, H, new, D, device=DEVICE)
    k, v = cache_k[:, :, :filled], cache_v[:, :, :filled]
    slopes = mpt_slopes(H).to(DEVICE)
    mask = torch.ones(B, filled, dtype=torch.bool, device=DEVICE)
    mask[1, :10] = False
    got = flash_attn_alibi(q, k, v, slopes, key_padding_mask=mask)
    exact = attention_reference(q.double(), k.double(), v.double(), slopes, key_padding_mask=mask)
    torch.testing.assert_close(got.double(), exact, atol=FP32_ATOL, rtol=FP32_RTOL)


@pytest.mark.parametrize("seq,causal,padded", [(17, True, False), (130, True, True), (64, False, True)])
def test_fp16(seq, causal, padded):
    q, k, v, do = make_inputs(2, 4, seq, seq, 32, torch.float16, seed=seq)
    mask = padding_mask(seq)[[0, 1]] if padded else None
    check_against_reference(q, k, v, do, alibi_slopes=mpt_slopes(4).to(DEVICE), causal=causal,
                            key_padding_mask=mask)


def test_rejects_bad_inputs():
    q = torch.randn(1, 2, 8, 16, device=DEVICE)
    with pytest.raises(ValueError, match="head_dim"):
        flash_attn_alibi(torch.randn(1, 2, 8, 24), torch.randn(1, 2, 8, 24), torch.randn(1, 2, 8, 24))
    with pytest.raises(ValueError, match="alibi_slopes"):
        flash_attn_alibi(q, q, q, torch.ones(3, device=DEVICE))
    with pytest.raises(ValueError, match="key_padding_mask"):
        flash_attn_alibi(q, q, q, key_padding_mask=torch.ones(1, 9, dtype=torch.bool, device=DEVICE))


# ---------------------------------------------------------------------------------------------------
# Head dim 128 (MPT-7B's) on the CPU too: small sequences, forward and backward
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("seq_q,seq_k,causal", [(40, 40, True), (3, 40, True), (33, 33, False)],
                         ids=["causal", "decode", "full"])
def test_head_dim_128(seq_q, seq_k, causal, dtype):
    """Left- and right-padded rows at D = 128: two forward key blocks and query blocks, a partial last one."""
    q, k, v, do = make_inputs(2, 2, seq_q, seq_k, 128, dtype, seed=128 + seq_q)
    check_against_reference(q, k, v, do, alibi_slopes=mpt_slopes(2).to(DEVICE), causal=causal,
                            key_padding_mask=padding_mask(seq_k)[[0, 1]])


# ---------------------------------------------------------------------------------------------------
# Column-form ALiBi (plain causal): slope * (j - origin) per key instead of -slope * (i + Sk - Sq - j)
# ---------------------------------------------------------------------------------------------------
def reference_lse2(q, k, slopes, key_padding_mask=None):
    """Base-2 row log-sum-exp of the causal distance-form scores in float64 (+inf where a row sees no key):
    what the forward must store whichever ALiBi form it computes with."""
    ab = attention_bias(slopes, q.shape[2], k.shape[2], causal=True, key_padding_mask=key_padding_mask,
                        device=q.device)
    scores = torch.matmul(q.double(), k.double().transpose(-1, -2)) / q.shape[-1] ** 0.5 + ab.bias.double()
    scores = scores.masked_fill(ab.bias == torch.finfo(torch.float32).min, float("-inf"))
    lse = torch.logsumexp(scores, -1) / math.log(2)
    return lse.masked_fill(torch.isneginf(lse), float("inf"))


@pytest.mark.parametrize("seq_q", [512, 2])
def test_column_alibi_long_sequence(seq_q):
    """512 keys, one steep head (slope 1): the column form's biases reach slope * 512 in magnitude, yet the
    output, the gradients and the stored LSE keep fp32 accuracy against float64, because the origin sits at
    the middle of each block. (With a global origin, slope * j, the output is off by ~4e-5 here and this
    test fails; ~1e-3 at 8192 keys in a float32 simulation.)"""
    import attention.flash_alibi as fa

    assert fa.COLUMN_ALIBI
    slopes = torch.tensor([1.0], device=DEVICE)
    q, k, v, do = make_inputs(1, 1, seq_q, 512, 16, torch.float32, seed=512 + seq_q)
    check_against_reference(q, k, v, do, alibi_slopes=slopes, causal=True)
    _, lse = fa._fwd_op(q, k, v, slopes, True, None, None, None, None)
    torch.testing.assert_close(lse.double(), reference_lse2(q, k, slopes), atol=1e-5, rtol=1e-6)


def test_column_and_distance_forms_agree(monkeypatch):
    """The two ALiBi forms give the same output, gradients and stored LSE (the LSE in memory is the distance
    form's), including rows without keys (+inf LSE, zero output). Because the LSE is form-independent, a
    forward in one form and a backward in the other are still exact."""
    import attention.flash_alibi as fa

    B, H, Sq, Sk = 4, 2, 40, 37  # Sq > Sk: the first 3 queries of every row see no key
    q, k, v, do = make_inputs(B, H, Sq, Sk, 16, torch.float32, seed=21)
    slopes, mask = torch.tensor([1.0, 0.25], device=DEVICE), padding_mask(Sk)
    kwargs = dict(alibi_slopes=slopes, causal=True, key_padding_mask=mask)
    results = {}
    for column in (True, False):
        monkeypatch.setattr(fa, "COLUMN_ALIBI", column)
        results[column] = run_attention(flash_attn_alibi, q, k, v, do, **kwargs)
        results[column, "lse"] = fa._fwd_op(q, k, v, slopes, True, mask, None, None, None)[1]
    for a, b in zip(results[True], results[False]):
        torch.testing.assert_close(a, b, atol=FP32_ATOL, rtol=FP32_RTOL)
    exact_lse = reference_lse2(q, k, slopes, mask)
    for column in (True, False):
        lse = results[column, "lse"]
        assert torch.equal(torch.isinf(lse), torch.isinf(exact_lse)) and torch.isinf(lse[:, :, :3]).all()
        torch.testing.assert_close(lse.double(), exact_lse, atol=1e-5, rtol=1e-6)
    assert results[True][0][:, :, :3].abs().max() == 0 and results[True][0][3].abs().max() == 0
    exact = run_attention(attention_reference, q.double(), k.double(), v.double(), do.double(), **kwargs)
    for column in (True, False):  # forward in one form, backward in the other
        qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
        monkeypatch.setattr(fa, "COLUMN_ALIBI", column)
        out = flash_attn_alibi(qq, kk, vv, **kwargs)
        monkeypatch.setattr(fa, "COLUMN_ALIBI", not column)
        out.backward(do)
        for g, e in zip((qq.grad, kk.grad, vv.grad), exact[1:]):
            torch.testing.assert_close(g.double(), e, atol=FP32_ATOL, rtol=FP32_RTOL)


@pytest.mark.parametrize("case", ["causal_padded", "noncausal", "prefix_positions"])
def test_both_dkdv_layouts_are_exact(monkeypatch, case):
    """The dK/dV pass computes (key, query) tiles by default (`TRANSPOSED_DKDV`); the forward's layout with its
    transposes stays as the first GPU's A/B arm. Both give the float64 reference's gradients: with the column
    ALiBi, without causality, and with explicit positions and a bidirectional prefix."""
    import attention.flash_alibi as fa

    B, H, Sq, Sk = 4, 2, 45, 45  # the four rows of `padding_mask`
    q, k, v, do = make_inputs(B, H, Sq, Sk, 32, torch.float32, seed=33)
    kwargs = dict(alibi_slopes=torch.tensor([1.0, 0.25], device=DEVICE), key_padding_mask=padding_mask(Sk))
    if case == "noncausal":
        kwargs["causal"] = False
    if case == "prefix_positions":
        kwargs["positions"] = torch.tensor([list(range(30)) + list(range(10, 25))] * B, device=DEVICE)
        kwargs["prefix_end"] = torch.tensor([30, 7, 0, 45], device=DEVICE)
    exact = run_attention(attention_reference, q.double(), k.double(), v.double(), do.double(), **kwargs)
    for transposed in (True, False):
        monkeypatch.setattr(fa, "TRANSPOSED_DKDV", transposed)
        got = run_attention(flash_attn_alibi, q, k, v, do, **kwargs)
        for name, g, e in zip(("out", "dq", "dk", "dv"), got, exact):
            torch.testing.assert_close(g.double(), e, atol=FP32_ATOL, rtol=FP32_RTOL, msg=f"{name}, {transposed}")


# ---------------------------------------------------------------------------------------------------
# The custom op (recgpt::flash_attn_alibi_fwd / _bwd)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["causal_padded", "prefix_positions", "full_scaled"])
def test_custom_op_equals_autograd_function(case):
    """flash_attn_alibi (the op) and the autograd.Function it replaced launch the same kernels: bit-identical
    output and gradients."""
    import attention.flash_alibi as fa

    B, H, S, D = 2, 2, 20, 16
    q, k, v, do = make_inputs(B, H, S, S, D, torch.float32, seed=31)
    mask = padding_mask(S)[[0, 1]]
    slopes = mpt_slopes(H).to(DEVICE)
    kwargs = dict(alibi_slopes=slopes, causal=True, key_padding_mask=mask, softmax_scale=None, positions=None,
                  prefix_end=None)
    if case == "prefix_positions":
        kwargs["positions"] = torch.tensor([[0] * 6 + list(range(14)), list(range(10)) + list(range(3, 13))],
                                           device=DEVICE)
        kwargs["prefix_end"] = torch.tensor([12, 10], dtype=torch.int32, device=DEVICE)
    elif case == "full_scaled":
        kwargs.update(causal=False, softmax_scale=0.3)
    op = run_attention(flash_attn_alibi, q, k, v, do, **kwargs)
    args = [kwargs[n] for n in ("alibi_slopes", "causal", "key_padding_mask", "softmax_scale", "positions",
                                "prefix_end")]
    function = run_attention(lambda q, k, v, **_: fa._FlashAttnALiBi.apply(q, k, v, *args), q, k, v, do)
    for name, a, b in zip(("out", "dq", "dk", "dv"), op, function):
        assert torch.equal(a, b), name


def test_custom_op_opcheck():
    """torch.library.opcheck on both ops (schema, autograd registration, fake tensors, AOT dispatch with
    dynamic shapes) at a tiny shape, and torch.compile(fullgraph=True) through flash_attn_alibi."""
    import attention.flash_alibi as fa

    B, H, S, D = 1, 2, 8, 16
    q, k, v, do = make_inputs(B, H, S, S, D, torch.float32, seed=41)
    slopes = mpt_slopes(H).to(DEVICE)
    mask = torch.ones(B, S, dtype=torch.bool, device=DEVICE)
    mask[0, :2] = False
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    torch.library.opcheck(fa._fwd_op, (q, k, v, slopes, True, mask, None, None, None))
    out, lse = fa._fwd_op(q.detach(), k.detach(), v.detach(), slopes, True, mask, None, None, None)
    torch.library.opcheck(fa._bwd_op, (do, q.detach(), k.detach(), v.detach(), out, lse, slopes, True, mask,
                                       None, None, None))
    compiled = torch.compile(lambda q, k, v: flash_attn_alibi(q, k, v, slopes, key_padding_mask=mask),
                             backend="aot_eager", fullgraph=True)
    got = run_attention(compiled, q, k, v, do)
    eager = run_attention(flash_attn_alibi, q, k, v, do, alibi_slopes=slopes, key_padding_mask=mask)
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------
# Autotuning (host side only: runs without a GPU): the decode key and the pruned configurations
# ---------------------------------------------------------------------------------------------------
def test_decode_autotune_key_ignores_cache_length():
    import attention.flash_alibi as fa

    assert {fa._fwd_buckets(sq, sk) for sq in (1, 3, 16) for sk in (1, 37, 64, 65, 2048, 8192)} == {(16, 0)}
    assert fa._fwd_buckets(17, 100) == (64, 128) and fa._fwd_buckets(2048, 2048) == (2048, 2048)


class _Q:
    def __init__(self, dtype):
        self.dtype, self.device = dtype, "cuda:0"


@pytest.mark.parametrize("arch", [8, 9])
def test_pruned_configs(arch, monkeypatch):
    """Every autotune key keeps at least one configuration of its dtype's set; decode keys keep only the
    16-row decode tiles; tiles never exceed the bucketed lengths; on sm_90 the forward drops the tutorial's
    8-warp small tiles (and the backward keeps its own)."""
    import attention.flash_alibi as fa

    monkeypatch.setattr(fa, "_capability", lambda device: (arch, 0))
    passes = ((fa.FWD_GPU_CONFIGS, fa._prune_fwd), (fa.BWD_KV_GPU_CONFIGS, fa._prune),
              (fa.BWD_Q_GPU_CONFIGS, fa._prune))
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for q_len, k_len in [fa._fwd_buckets(1, 900), (64, 64), (64, 4096), (2048, 2048)]:
            named = {"Q": _Q(dtype), "Q_BUCKET": q_len, "K_BUCKET": k_len}
            for configs, prune in passes[:1] if k_len == 0 else passes:  # the backward never gets a decode key
                kept = prune(configs, named)
                assert kept and all(c.fp32 == (dtype == torch.float32) and c.decode == (k_len == 0) for c in kept)
                assert all(c.kwargs["BLOCK_M"] <= q_len and c.kwargs["BLOCK_N"] <= (k_len or 1 << 30) for c in kept)
                if k_len == 0:
                    assert {c.kwargs["BLOCK_M"] for c in kept} == {16}
                if arch == 9 and prune is fa._prune_fwd:  # no 8-warp tile smaller than 128 x 128
                    assert all(c.num_warps == 4 or c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] >= 1 << 14 for c in kept)
    named = {"Q": _Q(torch.bfloat16), "Q_BUCKET": 2048, "K_BUCKET": 2048}
    assert len(fa._prune_fwd(fa.FWD_GPU_CONFIGS, named)) == (3 if arch == 9 else 5)
    assert len(fa._prune(fa.BWD_Q_GPU_CONFIGS, named)) == 4  # the backward keeps its 8-warp tiles on sm_90


# ---------------------------------------------------------------------------------------------------
# Model level: attn_impl "triton" gives the same loss and gradients as "torch"
# ---------------------------------------------------------------------------------------------------
def test_model_triton_matches_torch(monkeypatch):
    from model.config import MPTConfig
    from model.mpt import MPT

    cfg = MPTConfig(d_model=64, n_heads=4, n_layers=2, vocab_size=512, max_seq_len=128)
    torch.manual_seed(0)
    ref_model = MPT(dataclasses.replace(cfg, attn_impl="torch")).to(DEVICE)
    ref_model.init_weights()
    tri_model = MPT(dataclasses.replace(cfg, attn_impl="triton")).to(DEVICE)
    tri_model.load_state_dict(ref_model.state_dict())

    B, S = 3, 37
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (B, S), generator=g).to(DEVICE)
    attention_mask = torch.ones(B, S, dtype=torch.long, device=DEVICE)
    attention_mask[1, :6] = 0  # left padded (generation style)
    attention_mask[2, -8:] = 0  # right padded (training style)
    labels = ids.masked_fill(attention_mask == 0, -100)

    def loss_and_grads(model):
        model.zero_grad()
        logits = model(ids, attention_mask=attention_mask)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    # the triton path really runs the kernel (not the PyTorch fallback)
    calls = []
    import attention.flash_alibi as fa
    original = fa._forward

    def counting_forward(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(fa, "_forward", counting_forward)
    loss_tri, grads_tri = loss_and_grads(tri_model)
    monkeypatch.undo()
    assert len(calls) == cfg.n_layers
    loss_ref, grads_ref = loss_and_grads(ref_model)
    torch.testing.assert_close(loss_tri, loss_ref, atol=1e-5, rtol=1e-5)
    assert grads_tri.keys() == grads_ref.keys()
    for name in grads_ref:
        torch.testing.assert_close(grads_tri[name], grads_ref[name], atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------------------------------------------
# GPU only: bf16 at MPT-7B's attention shape (32 heads, head dim 128, seq 2048)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
def test_gpu_bf16_mpt7b_shape(padded):
    B, H, S, D = 1 if not padded else 2, 32, 2048, 128
    q, k, v, do = make_inputs(B, H, S, S, D, torch.bfloat16, seed=7)
    mask = None
    if padded:
        mask = torch.ones(B, S, dtype=torch.bool, device=DEVICE)
        mask[0, :300] = False  # left padded
        mask[1, -500:] = False  # right padded
    check_against_reference(q, k, v, do, alibi_slopes=mpt_slopes(H).to(DEVICE), causal=True, key_padding_mask=mask)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("seq_q,seq_k,causal", [(1000, 1000, True), (1000, 1000, False), (1, 777, True), (300, 1500, True)])
def test_gpu_low_precision(seq_q, seq_k, causal, head_dim, dtype):
    q, k, v, do = make_inputs(2, 6, seq_q, seq_k, head_dim, dtype, seed=seq_k)
    mask = padding_mask(seq_k)[[0, 1]]
    check_against_reference(q, k, v, do, alibi_slopes=mpt_slopes(6).to(DEVICE), causal=causal, key_padding_mask=mask)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("seq_q,seq_k", [(4096, 4096), (1, 8192)], ids=["prefill", "decode"])
def test_gpu_column_alibi_fp32_long(seq_q, seq_k):
    """The column form at long sequences with MPT-7B's steepest slopes, fp32 against float64."""
    import attention.flash_alibi as fa

    assert fa.COLUMN_ALIBI
    slopes = torch.tensor([2 ** -0.25, 2 ** -1, 2 ** -4, 2 ** -8], device=DEVICE)
    q, k, v, do = make_inputs(1, 4, seq_q, seq_k, 128, torch.float32, seed=9)
    check_against_reference(q, k, v, do, alibi_slopes=slopes, causal=True)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_decode_tunes_once():
    """Decoding against caches of different lengths adds one forward autotune entry, not one per
    power-of-two bucket of the cache length."""
    import attention.flash_alibi as fa

    slopes = mpt_slopes(4).to(DEVICE)
    before = {key for key in fa._attn_fwd.cache if key[1] == 0}
    for seq_k in (100, 1000, 3000):
        q, k, v, _ = make_inputs(2, 4, 1, seq_k, 128, torch.bfloat16, seed=seq_k)
        flash_attn_alibi(q, k, v, slopes)
    assert len({key for key in fa._attn_fwd.cache if key[1] == 0} - before) <= 1


@pytest.mark.skipif(CUDA, reason="the smoke run is the CPU stand-in for the GPU A/B (which times for minutes)")
def test_ab_timing_smoke_runs_every_section():
    """`python -m attention.ab_timing` is what the first GPU runs to settle the untimed choices: every section must
    at least run here (interpreter, tiny shapes) so that a GPU's minutes are not lost to a crash."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "attention.ab_timing", "--smoke"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for section in ("## 1. ALiBi form", "## 2. Pruned", "## 3. Decoding", "## 4. dK/dV layout"):
        assert section in proc.stdout, section
