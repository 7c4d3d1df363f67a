"""The Triton flash attention's prefix-LM inputs (issue 17): `positions` (ALiBi on given key positions)
and `prefix_end` (GLM's bidirectional Part A), forward and backward.

The oracle is written here from the formula (../shared/spec/recsysllm.md 1.5, 2.3), independent of
attention/reference.py, and evaluated in float64:

    V[b, i, j] = keypad[b, j] AND (j < prefix_end[b] OR j <= i + Sk - Sq)      (indices; causal only)
    s[b, h, i, j] = scale * q_i . k_j - slope_h * |pos[b, i + Sk - Sq] - pos[b, j]|
    out = softmax_j(s where V, else -inf) @ v,  rows without a visible key -> 0

Tolerances are tests/test_kernels.py's: fp32 |err| <= 1e-5 + 1e-5 |ref|; fp16 at most 2x the error of the
same oracle run in fp16 (+1e-4). Shapes are small (the interpreter is slow) but span several blocks of the
interpreter configuration (forward / dQ 32 x 16 tiles, dK/dV 16 x 32), so prefixes that end before, inside
and after a block boundary, key blocks partly and wholly inside the prefix, and partial last blocks occur.
"""

import pytest
import torch

triton = pytest.importorskip("triton", reason="the Triton kernels need the triton package")

from attention.flash_alibi import flash_attn_alibi
from test_kernels import CUDA, DEVICE, FP32_ATOL, FP32_RTOL, INTERPRET, make_inputs, run_attention

pytestmark = pytest.mark.skipif(not CUDA and not INTERPRET, reason="needs CUDA or TRITON_INTERPRET=1")
# Steep slopes (not MPT's 2^-h/4..2^-8) so that a wrong sign or a missing abs on the distance is an O(1) error
SLOPES = torch.tensor([1.0, 0.5, 0.25, 0.0625])


# ---------------------------------------------------------------------------------------------------
# Oracle and helpers
# ---------------------------------------------------------------------------------------------------
def dense_attention(q, k, v, slopes, *, causal=True, key_padding_mask=None, positions=None, prefix_end=None):
    """The formula above, densely. Scores and softmax in float64 for float64 inputs, else fp32 (as the
    model's reference path does), probabilities cast to v's dtype for the product."""
    B, _, Sq, D = q.shape
    Sk = k.shape[2]
    dev = q.device
    q_idx = torch.arange(Sk - Sq, Sk, device=dev)  # a query's index among the keys
    k_idx = torch.arange(Sk, device=dev)
    if positions is None:
        pos_q, pos_k = q_idx.expand(B, Sq), k_idx.expand(B, Sk)
    else:
        pos_q, pos_k = positions[:, Sk - Sq:], positions
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = torch.matmul(q, k.transpose(-1, -2)).to(acc) / D ** 0.5
    if slopes is not None:
        dist = (pos_q[:, :, None] - pos_k[:, None, :]).abs().to(acc)  # (B, Sq, Sk)
        scores = scores - slopes.to(dev, acc)[None, :, None, None] * dist[:, None]
    visible = torch.ones(B, Sq, Sk, dtype=torch.bool, device=dev)
    if causal:
        visible = k_idx[None, None, :] <= q_idx[None, :, None]
        if prefix_end is not None:
            visible = visible | (k_idx[None, None, :] < prefix_end[:, None, None])
        visible = visible.expand(B, Sq, Sk)
    if key_padding_mask is not None:
        visible = visible & key_padding_mask[:, None, :]
    visible = visible[:, None]  # (B, 1, Sq, Sk)
    # finfo.min, not -inf: a row without keys stays finite and is zeroed below (masked_fill: zero gradients)
    scores = scores.masked_fill(~visible, torch.finfo(acc).min)
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v).masked_fill(~visible.any(-1, keepdim=True), 0.0)


def check(q, k, v, do, **kwargs):
    """Kernel vs the float64 oracle: output and the three gradients."""
    slopes = kwargs.pop("alibi_slopes", SLOPES[: q.shape[1]])
    got = run_attention(flash_attn_alibi, q, k, v, do, alibi_slopes=slopes.to(DEVICE), **kwargs)
    exact = run_attention(dense_attention, q.double(), k.double(), v.double(), do.double(), slopes=slopes, **kwargs)
    names = ("out", "dq", "dk", "dv")
    for name, g, e in zip(names, got, exact):
        assert g.dtype == q.dtype and g.shape == e.shape, name
        assert torch.isfinite(g).all(), f"{name} has non-finite values"
    if q.dtype == torch.float32:
        for name, g, e in zip(names, got, exact):
            torch.testing.assert_close(g.double(), e, atol=FP32_ATOL, rtol=FP32_RTOL, msg=lambda m, name=name: f"{name}: {m}")
    else:
        low = run_attention(dense_attention, q, k, v, do, slopes=slopes, **kwargs)
        for name, g, l, e in zip(names, got, low, exact):
            err, ref_err = (g.double() - e).abs().max().item(), (l.double() - e).abs().max().item()
            assert err <= 2 * ref_err + 1e-4, f"{name}: kernel error {err:.3g} > 2 x reference error {ref_err:.3g}"
    return got


def glm_positions(part_a, total, g):
    """Option-B (GLM-like) positions of one row: Part A 0..a-1, then spans that each restart at a random
    mask id p < a and continue p, p+1, ... (non-monotone; they reuse and run past Part-A ids)."""
    pos = list(range(part_a))
    while len(pos) < total:
        start = int(torch.randint(0, max(part_a, 1), (1,), generator=g))
        span = int(torch.randint(1, 8, (1,), generator=g))
        pos += range(start, start + span)
    return torch.tensor(pos[:total], dtype=torch.long)


def make_positions(kind, prefix, seq_k, seed=0, pad=None):
    """(B, Sk) int positions of the given kind ("arange" or "glm"), or None ("index"). Left-padded rows
    (pad[b] pad keys) get position 0 on the pads and their layout after them."""
    if kind == "index":
        return None
    g = torch.Generator().manual_seed(seed)
    pad = pad if pad is not None else [0] * len(prefix)
    rows = []
    for a, p in zip(prefix, pad):
        real = seq_k - p
        row = torch.arange(real) if kind == "arange" else glm_positions(max(a - p, 0), real, g)
        rows.append(torch.cat([torch.zeros(p, dtype=torch.long), row]))
    return torch.stack(rows).to(DEVICE)


def prefix_tensor(values, dtype=torch.int32):
    return torch.tensor(values, dtype=dtype, device=DEVICE)


# ---------------------------------------------------------------------------------------------------
# Against the oracle
# ---------------------------------------------------------------------------------------------------
# Prefix ends per batch row for Sk = 37: none, inside the first forward key block, at a dK/dV block
# boundary (32: key block 0 wholly inside), past the first query block's causal limit, and all keys.
PREFIXES_37 = [0, 5, 32, 35, 37]


@pytest.mark.parametrize("kind", ["index", "arange", "glm"])
def test_prefix_and_positions(kind):
    S = 37
    q, k, v, do = make_inputs(len(PREFIXES_37), 2, S, S, 32, torch.float32, seed=1)
    positions = make_positions(kind, PREFIXES_37, S, seed=2)
    check(q, k, v, do, positions=positions, prefix_end=prefix_tensor(PREFIXES_37))


def test_random_prefixes_int64():
    """Random prefix lengths (plus 0 and Sk) with GLM positions, both given as int64."""
    S, B = 40, 5
    g = torch.Generator().manual_seed(3)
    prefix = [0, S] + torch.randint(1, S, (B - 2,), generator=g).tolist()
    q, k, v, do = make_inputs(B, 2, S, S, 32, torch.float32, seed=4)
    positions = make_positions("glm", prefix, S, seed=5)
    assert positions.dtype == torch.int64
    check(q, k, v, do, positions=positions, prefix_end=prefix_tensor(prefix, torch.int64))


@pytest.mark.parametrize("kind", ["index", "glm"])
def test_positions_without_causal_mask(kind):
    """causal=False with positions: every key visible, ALiBi on |pos_q - pos_k|."""
    S = 37
    q, k, v, do = make_inputs(2, 2, S, S, 32, torch.float32, seed=6)
    check(q, k, v, do, causal=False, positions=make_positions(kind, [10, 20], S, seed=7))


def test_positions_only():
    """Positions without a prefix: the causal mask alone, ALiBi on the given (non-monotone) positions."""
    S = 37
    q, k, v, do = make_inputs(2, 2, S, S, 32, torch.float32, seed=8)
    check(q, k, v, do, positions=make_positions("glm", [12, 30], S, seed=9))


@pytest.mark.parametrize("kind", ["index", "glm"])
def test_left_padding_with_prefix(kind):
    """Left-padded rows with a prefix: prefix_end = pad + |Part A|. Pad queries see the real prefix keys;
    a row with no prefix has empty pad queries (0 output, 0 gradients); an all-pad row is all zeros."""
    S = 37
    pad = [9, 9, 0, S]
    prefix = [9 + 12, 0, 35, 20]
    q, k, v, do = make_inputs(4, 2, S, S, 32, torch.float32, seed=10)
    mask = torch.ones(4, S, dtype=torch.bool)
    for b, p in enumerate(pad):
        mask[b, :p] = False
    mask = mask.to(DEVICE)
    positions = make_positions(kind, prefix, S, seed=11, pad=pad)
    out, dq, dk, dv = check(q, k, v, do, key_padding_mask=mask, positions=positions, prefix_end=prefix_tensor(prefix))
    assert out[1, :, :9].abs().max() == 0 and dq[1, :, :9].abs().max() == 0  # pad queries, no prefix
    assert out[3].abs().max() == 0 and dq[3].abs().max() == 0 and dk[3].abs().max() == 0
    assert dk[0, :, :9].abs().max() == 0 and dv[0, :, :9].abs().max() == 0  # pad keys
    assert out[0, :, :9].abs().max() > 0  # pad queries of row 0 see its prefix


@pytest.mark.parametrize("kind", ["index", "glm"])
@pytest.mark.parametrize("seq_q", [1, 3])
def test_decoding(seq_q, kind):
    """Sq < Sk against a cache of Sk = 20 keys, prefix ending before the queries and covering every key."""
    Sk = 20
    prefix = [7, Sk, 0, Sk - 1]
    q, k, v, do = make_inputs(4, 2, seq_q, Sk, 32, torch.float32, seed=12 + seq_q)
    positions = make_positions(kind, prefix, Sk, seed=13)
    check(q, k, v, do, positions=positions, prefix_end=prefix_tensor(prefix))


def test_more_queries_than_keys():
    """Sq > Sk (index positions): queries before every key see only the prefix (or nothing)."""
    q, k, v, do = make_inputs(3, 2, 24, 20, 16, torch.float32, seed=14)
    out, *_ = check(q, k, v, do, prefix_end=prefix_tensor([0, 6, 20]))
    assert out[0, :, :4].abs().max() == 0 and out[1, :, :4].abs().min() > 0


@pytest.mark.parametrize("head_dim,seq", [(64, 37), (128, 33)])
def test_head_dims(head_dim, seq):
    """Head dims 64 and 128 (32 is above). 33 keys: two dK/dV key blocks, three forward key blocks."""
    prefix = [0, 20, seq]
    q, k, v, do = make_inputs(3, 2, seq, seq, head_dim, torch.float32, seed=head_dim)
    check(q, k, v, do, positions=make_positions("glm", prefix, seq, seed=15), prefix_end=prefix_tensor(prefix))


@pytest.mark.parametrize("seq_q", [33, 3], ids=["prefill", "decode"])
def test_head_dim_128_fp16_padded(seq_q):
    """D = 128 in fp16 with a left-padded row, GLM positions and prefixes (before, inside and after the
    queries of the decode case)."""
    Sk = 33
    pad = [0, 6, 0]
    prefix = [20, 6 + 10, Sk]
    q, k, v, do = make_inputs(3, 2, seq_q, Sk, 128, torch.float16, seed=seq_q)
    mask = torch.ones(3, Sk, dtype=torch.bool)
    mask[1, :6] = False
    check(q, k, v, do, key_padding_mask=mask.to(DEVICE), positions=make_positions("glm", prefix, Sk, seed=19, pad=pad),
          prefix_end=prefix_tensor(prefix))


def test_fp16():
    S = 37
    pad = [0, 5, 0]
    prefix = [20, 5 + 15, 0]
    q, k, v, do = make_inputs(3, 4, S, S, 32, torch.float16, seed=16)
    mask = torch.ones(3, S, dtype=torch.bool)
    mask[1, :5] = False
    check(q, k, v, do, key_padding_mask=mask.to(DEVICE), positions=make_positions("glm", prefix, S, seed=17, pad=pad),
          prefix_end=prefix_tensor(prefix))


# ---------------------------------------------------------------------------------------------------
# Regression: the neutral prefix inputs reproduce the plain causal kernel bit for bit
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_pos,with_prefix", [(True, False), (False, True), (True, True)],
                         ids=["positions", "prefix0", "both"])
@pytest.mark.parametrize("seq_q,seq_k", [(37, 37), (3, 37)])
def test_neutral_inputs_equal_plain_kernel(seq_q, seq_k, with_pos, with_prefix, monkeypatch):
    """Bit for bit against the plain causal kernel in the distance form of ALiBi (the positions / prefix kernels
    always use it; the plain kernel's default column form is compared with tolerances in test_kernels.py)."""
    import attention.flash_alibi as fa

    monkeypatch.setattr(fa, "COLUMN_ALIBI", False)
    B, H = 2, 4
    q, k, v, do = make_inputs(B, H, seq_q, seq_k, 32, torch.float32, seed=18)
    mask = torch.ones(B, seq_k, dtype=torch.bool, device=DEVICE)
    mask[1, :6] = False
    kwargs = {"alibi_slopes": SLOPES.to(DEVICE), "key_padding_mask": mask}
    plain = run_attention(flash_attn_alibi, q, k, v, do, **kwargs)
    if with_pos:
        kwargs["positions"] = torch.arange(seq_k, device=DEVICE).expand(B, seq_k)  # a stride-0 view is fine
    if with_prefix:
        kwargs["prefix_end"] = torch.zeros(B, dtype=torch.int32, device=DEVICE)
    new = run_attention(flash_attn_alibi, q, k, v, do, **kwargs)
    for name, a, b in zip(("out", "dq", "dk", "dv"), plain, new):
        assert torch.equal(a, b), f"{name} differs from the plain causal kernel"


# ---------------------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------------------
def test_rejects_bad_inputs():
    B, H, S, D = 2, 2, 8, 16
    q = torch.randn(B, H, S, D, device=DEVICE)
    pos = torch.arange(S, device=DEVICE).expand(B, S)
    pe = torch.zeros(B, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match=r"positions must be \(batch, seq_k\)"):
        flash_attn_alibi(q, q, q, positions=pos[:, :-1])
    with pytest.raises(ValueError, match=r"positions must be \(batch, seq_k\)"):
        flash_attn_alibi(q, q, q, positions=pos[0])
    with pytest.raises(ValueError, match="positions must be int32 or int64"):
        flash_attn_alibi(q, q, q, positions=pos.float())
    with pytest.raises(ValueError, match="positions is on meta"):
        flash_attn_alibi(q, q, q, positions=pos.to("meta"))
    with pytest.raises(TypeError, match="positions must be a tensor"):
        flash_attn_alibi(q, q, q, positions=list(range(S)))
    with pytest.raises(ValueError, match="positions needs seq_q <= seq_k"):
        flash_attn_alibi(q, q[:, :, :5], q[:, :, :5], positions=pos[:, :5])
    with pytest.raises(ValueError, match=r"prefix_end must be \(batch,\)"):
        flash_attn_alibi(q, q, q, prefix_end=pe[:, None])
    with pytest.raises(ValueError, match=r"prefix_end must be \(batch,\)"):
        flash_attn_alibi(q, q, q, prefix_end=pe[:1])
    with pytest.raises(ValueError, match="prefix_end must be int32 or int64"):
        flash_attn_alibi(q, q, q, prefix_end=pe.bool())
    with pytest.raises(ValueError, match="prefix_end only applies with causal=True"):
        flash_attn_alibi(q, q, q, causal=False, prefix_end=pe)
