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
import os

import pytest
import torch

from attention.flash_alibi import flash_attn_alibi
from model.mpt import alibi_slopes as mpt_slopes  # checked in tests/test_model.py
from attention.reference import attention_reference

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
    original = fa._FlashAttnALiBi.apply

    def counting_apply(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(fa._FlashAttnALiBi, "apply", counting_apply)
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
