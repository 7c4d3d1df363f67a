"""ALiBi attention through PyTorch's FlexAttention: a second fast path, built from torch itself.

    out[b, h, i] = softmax_j( scale * q_i . k_j  - slope_h * |i + (Sk - Sq) - j|  + mask )  @ v

The same function, arguments and conventions as `attention.reference.attention_reference` and
`attention.flash_alibi.flash_attn_alibi` (see attention/reference.py's docstring; facts in ../shared/spec/mpt.md
sections 5, 6 and 14), expressed as torch.nn.attention.flex_attention's two hooks:
- ALiBi is a `score_mod`: -slope_h * |i + Sk - Sq - j|, or with `positions` (B, Sk) -slope_h * |pos_i - pos_j|,
  from the (H,) fp32 slopes and exact integer distances, so it is computed in fp32 (flex hands score_mod fp32
  scores: the compiled kernels accumulate q.k in fp32, the eager path upcasts). No bias tensor exists.
- Causal (bottom-right aligned), the bidirectional prefix (`prefix_end`) and key padding are a `mask_mod`, turned
  by create_block_mask into a BlockMask: tiles of 128 x 128 (query, key) pairs, those no pair of which is visible
  are skipped, fully visible ones run without the mask, the others apply mask_mod per element. Any Sq, Sk works
  (the last tile is partial; tests/test_flex_attention.py uses 1, 3, 37, 130 and, on CUDA, 777 and 1500).
- A query row that sees no key outputs 0 (flex's rule, the same as FlashAttention-2's and ours), never NaN.

`flex_bias(...)` builds the BlockMask and the score_mod once, as a `FlexBias` that every layer of a forward pass
shares (model/mpt.py builds one per forward, as it builds one AttentionBias for the "torch" path): building the
BlockMask evaluates mask_mod over the whole (B or 1, 1, Sq, Sk) grid (a transient bool tensor of that size, 32 MB
at batch 8 x 2048^2), which per layer would be 32 times the work at 7B. Offsets (Sk - Sq) are captured as 0-d
tensors, not Python ints, because torch.compile guards on the value of a captured int: an int would recompile the
kernel at every decoding step, where Sk grows.

Where it runs:
- CUDA: torch.compile(flex_attention), a fused Triton kernel (forward and backward) that inductor generates from the
  two hooks; nothing (B, H, Sq, Sk)-sized is stored, only the output and the row log-sum-exp. The first call
  compiles; a new length recompiles, once, as a dynamic-shape kernel (dynamo's automatic dynamic shapes). The
  closures are rebuilt every forward, which does not recompile: dynamo guards on their code and on the shapes of the
  tensors they capture. (No GPU was at hand when this was written: compile times are not measured.)
- CPU: the eager flex_attention (it materialises the fp32 scores: a correctness path, for tests and small
  inference; compiling it for the CPU took 15-20 s for one small shape on one core). Forward only: torch 2.13's
  FlexAttention has no backward on the CPU, so inputs that require grad raise NotImplementedError here (train
  with attn_impl "torch" on the CPU).
"""
import functools
from typing import Callable, NamedTuple, Optional

import torch
from torch.nn.attention.flex_attention import BlockMask, and_masks, create_block_mask, flex_attention, or_masks


class FlexBias(NamedTuple):
    """ALiBi and masks of one attention call, in flex_attention's terms; built once, shared by every layer."""
    score_mod: Optional[Callable]  # (score, b, h, i, j) -> score - slope_h * distance, fp32; None without ALiBi
    block_mask: Optional[BlockMask]  # (B or 1, 1, Sq, Sk) in 128 x 128 tiles; None when every key is visible
    seq_q: int
    seq_k: int
    batch: Optional[int]  # B of the per-row tensors captured (mask, positions, prefix); None: any batch


def _alibi_score_mod(slopes, offset, positions):
    """ALiBi as a score_mod; `offset` (0-d int tensor) = Sk - Sq maps query i to key position i + offset."""
    if positions is None:
        def alibi(score, b, h, q_idx, kv_idx):
            return score - slopes[h] * (q_idx + offset - kv_idx).abs()  # int distance, then fp32
    else:
        def alibi(score, b, h, q_idx, kv_idx):
            return score - slopes[h] * (positions[b, q_idx + offset] - positions[b, kv_idx]).abs()
    return alibi


def _mask_mod(seq_q, causal, key_padding_mask, prefix_end, offset):
    """Visibility as a mask_mod, or None when every key is visible:
    V[b, i, j] = keypad[b, j] and (j < prefix_end[b] or j <= i + offset), the causal part only when causal."""
    mods = []
    if causal and seq_q > 1:  # a single query is the last position: every key is at or before it
        def causal_mod(b, h, q_idx, kv_idx):
            return kv_idx <= q_idx + offset

        if prefix_end is not None:
            def prefix_mod(b, h, q_idx, kv_idx):
                return kv_idx < prefix_end[b]

            causal_mod = or_masks(causal_mod, prefix_mod)
        mods.append(causal_mod)
    if key_padding_mask is not None:
        def key_mod(b, h, q_idx, kv_idx):
            return key_padding_mask[b, kv_idx]

        mods.append(key_mod)
    return and_masks(*mods) if mods else None


def flex_bias(alibi_slopes, seq_q, seq_k, *, causal=True, key_padding_mask=None, positions=None, prefix_end=None,
              device=None) -> FlexBias:
    """The score_mod and BlockMask of attention with these shapes and options (the arguments of flex_attn_alibi).

    alibi_slopes (H,) or None; key_padding_mask (B, Sk) bool, True = real key; positions (B, Sk) int, the keys'
    ALiBi positions (queries take the last Sq, so Sq <= Sk); prefix_end (B,) int, causal only.
    """
    device = torch.device(device) if device is not None else (
        alibi_slopes.device if alibi_slopes is not None else torch.device("cpu"))
    if prefix_end is not None and not causal:
        raise ValueError("prefix_end is given but causal=False: every key is visible already")
    if positions is not None:
        if tuple(positions.shape[1:]) != (seq_k,):
            raise ValueError(f"positions has shape {tuple(positions.shape)}; expected (batch, Sk={seq_k})")
        if seq_q > seq_k:
            raise ValueError(f"positions needs seq_q <= seq_k (queries use the last seq_q key positions), "
                             f"got seq_q {seq_q} > seq_k {seq_k}")
        positions = positions.to(device)
    offset = torch.tensor(seq_k - seq_q, device=device)  # a tensor: no recompile when Sk grows (module docstring)
    score_mod = None
    if alibi_slopes is not None:
        score_mod = _alibi_score_mod(alibi_slopes.to(device=device, dtype=torch.float32), offset, positions)
    key_padding_mask = key_padding_mask.to(device=device, dtype=torch.bool) if key_padding_mask is not None else None
    prefix_end = prefix_end.to(device) if prefix_end is not None else None
    batches = {t.shape[0] for t in (key_padding_mask, positions, prefix_end) if t is not None}
    if len(batches) > 1:
        raise ValueError(f"key_padding_mask, positions and prefix_end disagree on the batch size: {sorted(batches)}")
    batch = batches.pop() if batches else None
    mask_mod = _mask_mod(seq_q, causal, key_padding_mask, prefix_end, offset)
    block_mask = None
    if mask_mod is not None:
        # H=None: one mask for all heads; batch None (plain causal): one for all rows
        per_row = key_padding_mask is not None or (prefix_end is not None and causal and seq_q > 1)
        block_mask = create_block_mask(mask_mod, batch if per_row else None, None, seq_q, seq_k, device=device)
    return FlexBias(score_mod, block_mask, seq_q, seq_k, batch)


@functools.cache
def _compiled_flex_attention():
    """torch.compile(flex_attention), created on first use on CUDA (the fused kernels are generated per shape)."""
    return torch.compile(flex_attention)


def _check(q, k, v, alibi_slopes, key_padding_mask, positions, prefix_end):
    """Shapes that flex_attention itself cannot check: the captured tensors are indexed inside the kernel."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be (batch, heads, seq, head_dim)")
    B, H, _, _ = q.shape
    Sk = k.shape[2]
    if alibi_slopes is not None and tuple(alibi_slopes.shape) != (H,):
        raise ValueError(f"alibi_slopes must be ({H},), got {tuple(alibi_slopes.shape)}")
    for name, t, shape in (("key_padding_mask", key_padding_mask, (B, Sk)), ("positions", positions, (B, Sk)),
                           ("prefix_end", prefix_end, (B,))):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {shape}, got {tuple(t.shape)}")


def flex_attn_alibi(q, k, v, alibi_slopes=None, *, causal=True, key_padding_mask=None, softmax_scale=None,
                    positions=None, prefix_end=None, bias: FlexBias = None):
    """FlexAttention with ALiBi; the same function as `attention.reference.attention_reference`.

    q (B, H, Sq, D), k/v (B, H, Sk, D) in one dtype, any strides; alibi_slopes (H,) fp32 or None; causal bottom-right
    aligned (query i sees key j iff j <= i + Sk - Sq); key_padding_mask (B, Sk) bool with True = real key, or None;
    softmax_scale defaults to 1/sqrt(D); positions (B, Sk) int or None (ALiBi positions of the keys, queries taking
    the last Sq); prefix_end (B,) int or None, causal only (keys j < prefix_end[b] visible to every query of row b).
    `bias`: a precomputed `flex_bias(...)` for these shapes, in which case alibi_slopes, causal, key_padding_mask,
    positions and prefix_end are not consulted. Returns (B, H, Sq, D) in q's dtype; rows that see no key are 0.
    Differentiable in q, k and v on CUDA; on the CPU forward only (NotImplementedError otherwise).
    """
    Sq, Sk = q.shape[2], k.shape[2]
    if bias is None:
        _check(q, k, v, alibi_slopes, key_padding_mask, positions, prefix_end)
        bias = flex_bias(alibi_slopes, Sq, Sk, causal=causal, key_padding_mask=key_padding_mask, positions=positions,
                         prefix_end=prefix_end, device=q.device)
    elif (bias.seq_q, bias.seq_k) != (Sq, Sk) or bias.batch not in (None, q.shape[0]):
        # the captured tensors are indexed inside the kernel: a mismatch would read out of bounds, not raise
        raise ValueError(f"the FlexBias was built for batch {bias.batch}, seq_q {bias.seq_q}, seq_k {bias.seq_k}; "
                         f"got batch {q.shape[0]}, seq_q {Sq}, seq_k {Sk}")
    if q.device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise NotImplementedError(
            f"attention through FlexAttention (attn_impl 'flex') cannot be trained on the CPU: torch "
            f"{torch.__version__}'s flex_attention has no CPU backward. Train on CUDA, or use attn_impl 'torch' on "
            f"the CPU; inference (torch.no_grad) works")
    attend = _compiled_flex_attention() if q.is_cuda else flex_attention
    return attend(q, k, v, score_mod=bias.score_mod, block_mask=bias.block_mask, scale=softmax_scale)
