"""Plain PyTorch attention with ALiBi: the reference every other implementation is tested against.

One definition of the attention the model computes, shared by the model's CPU path, the Triton kernel's
tests and the benchmarks:

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
                   prefix_end=None) -> AttentionBias:
    if prefix_end is not None and not causal:
        raise ValueError("prefix_end is given but causal=False: every key is visible already")
    if positions is not None and tuple(positions.shape[1:]) != (seq_k,):
        raise ValueError(f"positions has shape {tuple(positions.shape)}; expected (batch, Sk={seq_k})")
    allowed = attention_mask(seq_q, seq_k, causal, key_padding_mask, device=device, prefix_end=prefix_end)
    bias = None
    if alibi_slopes is not None:
        bias = alibi_bias(alibi_slopes, seq_q, seq_k, device=device, positions=positions)
        bias = bias if positions is not None else bias[None]
    if allowed is None:
        return AttentionBias(bias, None)
    # finfo.min rather than -inf keeps fully masked rows finite (they are zeroed, with zero gradients)
    bias = torch.where(allowed, 0.0 if bias is None else bias, torch.finfo(torch.float32).min)
    return AttentionBias(bias, ~allowed.any(dim=-1, keepdim=True))


def attention_reference(q, k, v, alibi_slopes=None, *, causal=True, key_padding_mask=None,
                        softmax_scale=None, sdpa=False, dropout_p=0.0, bias: AttentionBias = None, positions=None,
                        prefix_end=None):
    """q (B, H, Sq, D), k/v (B, H, Sk, D), alibi_slopes (H,) or None -> (B, H, Sq, D) in q's dtype.

    Scores, bias and softmax are computed in fp32 (as MPT and transformers do); the probabilities are
    cast to v's dtype for the product with v. dropout_p drops attention probabilities (training only;
    the Triton kernel has no dropout). With sdpa=True the same fp32 bias is handed to torch's
    scaled_dot_product_attention instead of being applied by hand (faster, same result; the bias is cast
    to q's dtype, which SDPA requires). `bias`: a precomputed `attention_bias(...)` for these shapes, in
    which case alibi_slopes, causal, key_padding_mask, positions and prefix_end are not consulted.
    """
    D = q.shape[-1]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    if bias is None:
        bias = attention_bias(alibi_slopes, q.shape[2], k.shape[2], causal=causal,
                              key_padding_mask=key_padding_mask, device=q.device, positions=positions,
                              prefix_end=prefix_end)
    if sdpa:
        mask = bias.bias.to(q.dtype) if bias.bias is not None else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, dropout_p=dropout_p)
    else:
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale  # (B, H, Sq, Sk)
        if bias.bias is not None:
            scores = scores + bias.bias
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        if dropout_p > 0:
            probs = F.dropout(probs, p=dropout_p)
        out = torch.matmul(probs, v)
    if bias.rows_without_keys is not None:
        out = out.masked_fill(bias.rows_without_keys, 0.0)
    return out
