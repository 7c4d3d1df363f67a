"""Plain PyTorch attention with ALiBi: the reference every other implementation is tested against.

One definition of the attention the model computes, shared by the model's "torch" path, the tests of the two fast
paths (the Triton kernel, attention/flash_alibi.py, and FlexAttention, attention/flex.py) and the benchmarks:

    out[b, h, i] = softmax_j( scale * q_i . k_j  - slope_h * |i + (Sk - Sq) - j|  + mask )  @ v

Conventions (see ../shared/spec/mpt.md sections 5-6 and 14):
- Tensors are (B, H, S, D). Queries are the *last* Sq positions of the Sk keys, so causal masking is
  bottom-right aligned: query i may see key j iff j <= i + (Sk - Sq). With Sq == Sk this is ordinary
  causal masking; with Sq < Sk it is decoding against a KV cache.
- ALiBi is the "distance" form -slope * |i + Sk - Sq - j| (FlashAttention-2's convention). On every
  causal row it differs from MPT's cached "vector" form slope * (j - (Sk - 1)) by a per-row constant,
  so softmax outputs are identical to MPT's; for non-causal attention it is MPT's full |i - j| form.
- key_padding_mask is (B, Sk) bool, True for a real key. A query row with no visible key (a pad query
  of a left-padded batch) outputs zeros, as FlashAttention-2 does, instead of NaN.
- Blank infilling (RecSysLLM / GLM, ../shared/spec/recsysllm.md 1.5, 2.3): `prefix_end` (B,) makes the keys
  j < prefix_end[b] visible to every query of row b (GLM's bidirectional Part A: j < sep or j <= i), and
  `positions` (B, Sk) gives every key its ALiBi position (queries take the last Sq): the bias becomes
  -slope * |pos_i - pos_j|, always with the absolute value (with a prefix, a query sees keys after it). The mask
  uses indices, ALiBi uses positions. Without them the attention is exactly the causal one above.
"""
import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F


def alibi_bias(slopes, seq_q, seq_k, device=None, positions=None):
    """(H,) slopes -> (H, Sq, Sk) fp32 bias -slope * |i + Sk - Sq - j|, or with `positions` (B, Sk) of the keys
    (the queries' are the last Sq) -> (B, H, Sq, Sk) -slope * |pos_i - pos_j|."""
    device = device if device is not None else slopes.device
    slopes = slopes.to(device=device, dtype=torch.float32)
    if positions is not None:
        pos = positions.to(device=device, dtype=torch.int64)
        distance = (pos[:, -seq_q:, None] - pos[:, None, :]).abs().float()  # (B, Sq, Sk), exact ints first
        return -slopes[None, :, None, None] * distance[:, None]
    q_pos = torch.arange(seq_k - seq_q, seq_k, device=device, dtype=torch.float32)  # absolute positions
    k_pos = torch.arange(seq_k, device=device, dtype=torch.float32)
    distance = (q_pos[:, None] - k_pos[None, :]).abs()  # (Sq, Sk)
    return -slopes[:, None, None] * distance


def attention_mask(seq_q, seq_k, causal, key_padding_mask=None, device=None, prefix_end=None):
    """Boolean "may attend" mask, broadcastable to (B, 1, Sq, Sk); None when everything is visible.
    prefix_end (B,): keys before it are visible to every query (causal only)."""
    allowed = None
    if causal and seq_q > 1:
        q_pos = torch.arange(seq_k - seq_q, seq_k, device=device)
        allowed = (torch.arange(seq_k, device=device)[None, :] <= q_pos[:, None])[None, None]  # (1,1,Sq,Sk)
        if prefix_end is not None:
            in_prefix = torch.arange(seq_k, device=device)[None, :] < prefix_end.to(device)[:, None]  # (B, Sk)
            allowed = allowed | in_prefix[:, None, None, :]  # (B,1,Sq,Sk)
    if key_padding_mask is not None:
        keys = key_padding_mask.to(device=device, dtype=torch.bool)[:, None, None, :]  # (B,1,1,Sk)
        allowed = keys if allowed is None else allowed & keys
    return allowed


class AttentionBias(NamedTuple):
    """The additive fp32 bias of one attention call and the query rows that see no key.

    Built once and shared by every layer of a forward pass (they all see the same positions and mask).
    """
    bias: Optional[torch.Tensor]  # (B or 1, H or 1, Sq, Sk): ALiBi, with finfo.min where attention is not allowed
    rows_without_keys: Optional[torch.Tensor]  # (B or 1, 1, Sq, 1) bool: rows that output 0


def attention_bias(alibi_slopes, seq_q, seq_k, *, causal=True, key_padding_mask=None, device=None, positions=None,
                   prefix_end=None, dtype=torch.float32) -> AttentionBias:
    """The bias in `dtype`: ALiBi computed in fp32 and rounded once to `dtype` (the model asks for its compute dtype,
    so that SDPA gets one bias shared by every layer instead of a cast per layer; see attention_reference)."""
    if prefix_end is not None and not causal:
        raise ValueError("prefix_end is given but causal=False: every key is visible already")
    if positions is not None and tuple(positions.shape[1:]) != (seq_k,):
        raise ValueError(f"positions has shape {tuple(positions.shape)}; expected (batch, Sk={seq_k})")
    allowed = attention_mask(seq_q, seq_k, causal, key_padding_mask, device=device, prefix_end=prefix_end)
    bias = None
    if alibi_slopes is not None:
        bias = alibi_bias(alibi_slopes, seq_q, seq_k, device=device, positions=positions)
        bias = bias if positions is not None else bias[None]
    if bias is not None:
        bias = bias.to(dtype)
    if allowed is None:
        return AttentionBias(bias, None)
    # finfo(dtype).min rather than -inf keeps fully masked rows finite (they are zeroed, with zero gradients); fp32's
    # min would round to -inf in bf16/fp16, hence the min of the dtype the bias is stored in
    bias = torch.where(allowed, torch.zeros((), dtype=dtype, device=device) if bias is None else bias,
                       torch.finfo(dtype).min)
    return AttentionBias(bias, ~allowed.any(dim=-1, keepdim=True))


def attention_reference(q, k, v, alibi_slopes=None, *, causal=True, key_padding_mask=None,
                        softmax_scale=None, sdpa=False, dropout_p=0.0, bias: AttentionBias = None, positions=None,
                        prefix_end=None):
    """q (B, H, Sq, D), k/v (B, H, Sk, D), alibi_slopes (H,) or None -> (B, H, Sq, D) in q's dtype.

    Scores, bias and softmax are computed in fp32 (as MPT and transformers do; in float64 for float64 inputs, the
    tests' exact reference); the probabilities are cast to v's dtype for the product with v. dropout_p drops
    attention probabilities (training only; the Triton kernel has no dropout). `bias`: a precomputed
    `attention_bias(...)` for these shapes, in which case alibi_slopes, causal, key_padding_mask, positions and
    prefix_end are not consulted.

    With sdpa=True the bias is handed to torch's scaled_dot_product_attention instead of being applied by hand. On
    CUDA that is the memory-efficient kernel (the flash one takes no bias): q.k, bias add and softmax in fp32, and
    nothing (B, H, Sq, Sk)-sized is stored besides the bias itself, where the explicit path stores the fp32
    probabilities and their low-precision copy (6 bytes per score in bf16: 25.8 GB per 2048-token sequence for
    MPT-7B's 32 layers). That kernel needs the bias in q's dtype (an fp32 bias with bf16 q raises "invalid dtype
    for bias"), so in bf16 the ALiBi values are rounded to bf16, by up to 2^-8 of their size. That is not free: a
    slope that is not a power of two (24 of MPT-7B's 32 slopes 2^(-k/4)) is rounded at every distance, and where the
    attention is (slope * distance of a few units) the logits move by ~0.01. Measured on the CPU, 6 of MPT-7B's heads
    (slopes 2^-0.25, 2^-1, 2^-2, 2^-4, 2^-6, 2^-8), seq 2048, head dim 128, bf16 inputs, forward + backward, max
    |error| against this function in float64:

        q, k, v ~ N(0, 1)                           out      dq       dk       dv
        explicit path (bf16 q.k, fp32 bias)         1.6e-2   1.8e-2   1.8e-2   2.7e-2
        the bias rounded to bf16, all else float64  1.2e-2   1.4e-2   1.0e-2   1.2e-2
        SDPA with the bf16 bias (CPU flash kernel)  1.3e-2   1.7e-2   2.0e-2   2.7e-2
        q ~ N(0, 16), peakier attention
        explicit path                               8.3e-2   6.3e-2   2.5e-1   6.5e-2
        the bias rounded to bf16, all else float64  3.1e-2   3.0e-2   1.2e-1   2.5e-2
        SDPA with the bf16 bias (CPU flash kernel)  2.9e-2   3.8e-2   1.3e-1   5.4e-2

    At q ~ N(0, 1) the rounding's error sits on the non-power-of-two slope (1.2e-2 there, <= 6e-4 on the others); a
    power-of-two slope's bias is exact to distance 256 only, and at q ~ N(0, 16) the flattest two reach 1.5e-2. So
    the rounding costs less than the explicit path's own bf16 error (which rounds q.k before adding the exact bias),
    SDPA stays within the kernels' rule (at most 2x the explicit path's error, tests/test_kernels.py) and is mostly
    more accurate, and the model takes it in every dtype but float64 (model/mpt.py). One exception, of the CPU kernel
    and not of the bias: the CPU flash kernel's dV reaches 2.5x the explicit path's error at seq 512 with padding
    (SDPA's math backend, given the same bias, matches the explicit path). CUDA's kernel is checked by
    tests/test_flex_attention.py when a GPU runs it. For exact fp32 ALiBi, and for 7B training, use attn_impl
    "triton" or "flex": ALiBi in the kernel, no (B, H, S, S) tensor at all.
    """
    D = q.shape[-1]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    if bias is None:
        bias = attention_bias(alibi_slopes, q.shape[2], k.shape[2], causal=causal,
                              key_padding_mask=key_padding_mask, device=q.device, positions=positions,
                              prefix_end=prefix_end, dtype=q.dtype if sdpa else torch.float32)
    if sdpa:
        mask = bias.bias.to(q.dtype) if bias.bias is not None else None  # a no-op for the model's bias
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, dropout_p=dropout_p)
    else:
        work = torch.promote_types(q.dtype, torch.float32)  # fp32, or float64 for the exact reference
        scores = torch.matmul(q, k.transpose(-1, -2)).to(work) * scale  # (B, H, Sq, Sk)
        if bias.bias is not None:
            scores = scores + bias.bias
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        if dropout_p > 0:
            probs = F.dropout(probs, p=dropout_p)
        out = torch.matmul(probs, v)
    if bias.rows_without_keys is not None:
        out = out.masked_fill(bias.rows_without_keys, 0.0)
    return out
