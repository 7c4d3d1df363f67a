"""Flash attention with ALiBi in Triton: forward and backward, computing exactly `attention_reference`.

    out[b, h, i] = softmax_j( scale * q_i . k_j  - slope_h * |i + (Sk - Sq) - j|  + mask )  @ v

Conventions (identical to attention/reference.py; facts in ../shared/spec/mpt.md sections 5, 6 and 14):
- q (B, H, Sq, D), k and v (B, H, Sk, D), any strides (views of a fused QKV or of a KV cache are fine).
  Queries are the LAST Sq of the Sk key positions, so causal masking is bottom-right aligned:
  query i sees key j iff j <= i + (Sk - Sq). Sq < Sk is decoding / chunked prefill against a cache.
- ALiBi is the "distance" form -slope_h * |i + Sk - Sq - j| (FlashAttention-2's), computed in registers
  from the (H,) fp32 slopes and the row/column indices; no bias tensor exists anywhere. On causal rows
  it differs from MPT's "vector" form by a per-row constant, so the probabilities are MPT's.
  Plain causal attention (no positions, no prefix) computes the equivalent column form
  slope_h * (j - origin) instead, one bias per key rather than a distance per (query, key) pair: on every
  visible pair it differs from the distance form by slope_h * (i + Sk - Sq - origin), a per-row constant.
  The origin is a per-program key index near the tile (the middle query row of the forward / dQ block,
  the middle key of the dK/dV block), which keeps the biases of the keys that matter small and fp32 exact;
  a global origin (slope * j) would lose ~1e-3 at 8192 keys. The stored LSE is always the distance
  form's (each pass shifts it by its own per-row constant), so forward and backward agree whatever form
  each uses. `COLUMN_ALIBI = False` switches the column form off.
- key_padding_mask (B, Sk) bool, True = real key; the kernels read it as one uint8 per key.
- A query row that sees no key (a pad query of a left-padded batch, or a query before every key when
  Sq > Sk) outputs 0 and gets zero gradients, as FlashAttention-2 does; never NaN.
- head_dim is a power of two in 16..128; fp16/bf16 (and fp32, with IEEE dot products) on GPU, fp32 or
  fp16 under TRITON_INTERPRET=1 on the CPU (the interpreter cannot do bf16).

Prefix-LM / GLM blank infilling (../shared/spec/recsysllm.md 1.5, 2.2, 2.3), both optional and integer-only
(no gradient):
- positions (B, Sk) int32/int64: the ALiBi position of every key; query i has the position of key
  i + Sk - Sq (needs Sq <= Sk). The bias becomes -slope_h * |pos_q - pos_k|, always with the abs (span
  tokens see Part-A keys at larger positions, and positions need not be monotone). The causal mask still
  uses indices. Without positions the bias is today's index distance.
- prefix_end (B,) int32/int64, causal only: keys j < prefix_end[b] are visible to every query of row b
  (GLM's bidirectional Part A). Visibility V[i, j] = keypad[j] AND (j < prefix_end[b] OR j <= i + Sk - Sq).
  Values are clamped to [0, Sk] in the kernel (no host sync to check them).
- Both are compile-time switches (HAS_POS, HAS_PREFIX): without them the kernels are the plain ones.

Algorithm (FlashAttention-2; ../shared/spec/mpt.md 14.2-14.3):
- Forward, one program per (query block of BLOCK_M rows, batch*head). Stream the key/value blocks of
  BLOCK_N rows through an online softmax: running row max m, running row sum l, unnormalised output
  acc (fp32). At the end O = acc / l and only the row log-sum-exp L = m + log2(l) is written.
  Everything runs in base 2: scores are s2 = log2(e) * (scale * q.k + alibi), so exp2 replaces exp;
  the bias is multiplied by log2(e) too, and L is a base-2 LSE (the backward uses the same base).
- Backward, recomputation from L (P is never stored):
  1. D_i = rowsum(dO_i * O_i) (fp32), a small kernel;
  2. one program per key block: loop over the query blocks that can see it, recompute
     P^T = exp2(s2^T - L) directly as (key, query) tiles (s2^T from K Q^T: no computed tile is
     transposed, `TRANSPOSED_DKDV`), and accumulate dV += P^T dO, dK += scale * dS^T Q with
     dS^T = P^T * (dP^T - D), dP^T = V dO^T;
  3. one program per query block: loop over its visible key blocks, accumulate dQ += scale * dS K.
  Splitting dK/dV from dQ (as the Triton tutorial does) needs no atomics and is deterministic.
- Causal block skipping: key blocks entirely above the (bottom-right) diagonal are never visited, and
  the element-wise mask (causal + sequence bounds) is applied only in the blocks that straddle the
  diagonal or a sequence end (`MASK` constexpr); the key-padding mask, when given, applies everywhere.
  With a prefix the visible region of a query block is the union of the causal triangle and the prefix
  columns [0, prefix_end): its key loop runs to max(causal limit, prefix_end) and only the blocks beyond
  max(first row's causal limit, prefix_end) are masked; a key block that begins inside the prefix is
  seen by every query block in the dK/dV pass (and needs no mask there if it ends inside the prefix).
- Fully masked rows: the running max stays -inf, so the kernel subtracts 0 instead (no inf - inf), l
  stays 0, the output is written as 0 and L as +inf, which makes the recomputed P exactly 0 in the
  backward, hence zero dQ and no contribution to dK/dV.

Block sizes come from `triton.autotune` over a small set of configurations (FWD_CONFIGS, BWD_KV_CONFIGS,
BWD_Q_CONFIGS below) on GPU, keyed on the head dim, the flags and power-of-two buckets of the sequence
lengths; a forward with Sq <= 16 (decoding) is keyed without the cache length at all and tuned over 16-row
query tiles, so a generation tunes once. `_prune` trims each set per key (dtype, lengths, and on sm_90 the
Triton tutorial's rule against small 8-warp forward tiles). Under the Triton interpreter a single fixed
small configuration is used (multi-config autotuning does not work there).

`flash_attn_alibi` calls one PyTorch custom op, `recgpt::flash_attn_alibi_fwd` (returning the output and
the LSE), whose registered backward is the op `recgpt::flash_attn_alibi_bwd`: torch.compile and FSDP's
tracing treat each as one opaque node with a shape-only fake implementation.
"""
import math
import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2(e))

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


# ----------------------------------------------------------------------------------------------------
# Block configurations. (BLOCK_M = query rows, BLOCK_N = key rows per tile.)
# GPU: a small set around the Triton tutorial's and FlashAttention-2's choices for head dim 64/128:
# 128-row query tiles with 32..128-row key tiles in the forward and dQ pass, and the transposed shape
# (128-row key tiles, narrow query tiles) in the dK/dV pass, whose accumulators are two (BLOCK_N, D)
# fp32 tiles. Configurations that exceed a GPU's shared memory are skipped by the autotuner (it catches
# OutOfResources). All of them compile for sm_80 and sm_90 (`python -m attention.compile_check`, no GPU
# needed; its table is docs/kernel_compile_check.md): at D = 128 in bf16 they use at most 97 KiB of shared
# memory on sm_80 and 161 KiB on sm_90, under A100's 163 and H100's 227 KiB.
# Interpreter: one config with BLOCK_M != BLOCK_N so the tests exercise unequal tiles, multiple blocks
# per sequence, partial last blocks and diagonal blocks at sequence lengths like 17..130.
# ----------------------------------------------------------------------------------------------------
def _gpu_configs(shapes, fp32_shapes, decode_shapes=(), decode_fp32_shapes=()):
    """triton.Configs for the GPU, tagged with the attributes `_prune` reads: `fp32` (fp32 inputs get their
    own, smaller tiles: twice the shared memory per element) and `decode` (the forward's Sq <= DECODE_MAX_Q
    configurations, one 16-row query tile)."""
    configs = []
    for fp32, decode, table in ((False, False, shapes), (True, False, fp32_shapes),
                                (False, True, decode_shapes), (True, True, decode_fp32_shapes)):
        for m, n, w, s in table:
            config = triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            config.fp32, config.decode = fp32, decode
            configs.append(config)
    return configs


def _capability(device):
    return torch.cuda.get_device_capability(device)


def _config_family(configs, named_args):
    """The launch's own set: its dtype's (fp32, or fp16/bf16) and, for the forward, decode exactly when K_BUCKET
    is 0 (`_fwd_buckets`); all of `configs` when none match."""
    fp32 = named_args["Q"].dtype == torch.float32
    decode = named_args["K_BUCKET"] == 0
    return [c for c in configs if c.fp32 == fp32 and c.decode == decode] or configs


def _prune(configs, named_args, hopper_rule=False, **kwargs):
    """Configurations worth timing for one autotune key (all of its inputs are in the key: the dtypes, the
    buckets, the GPU the process runs on):
    - the launch's family (`_config_family`: its dtype's set, the decode set exactly when K_BUCKET is 0);
    - tiles no longer than the (bucketed) sequences, as the Triton tutorial's `prune_invalid_configs` does
      for BLOCK_M: a 128-row tile over 40 queries is mostly masked work;
    - with hopper_rule (the forward only), on sm_90 the tutorial's `keep` rule: no 8-warp configuration with
      a tile smaller than 128 x 128. The tutorial states it for its forward kernel; the backward passes keep
      their 8-warp tiles, chosen because 4 warps spill at D = 128 there.
    UNTIMED: these rules come from the tutorial and from register counts, not from timing this kernel; a
    GPU session should time the pruned against the full sets (attention/benchmark.py) before trusting them.
    Never returns an empty list (a rule that would remove everything is skipped)."""
    kept = _config_family(configs, named_args)
    q_len, k_len = named_args["Q_BUCKET"], named_args["K_BUCKET"] or float("inf")
    kept = [c for c in kept if c.kwargs["BLOCK_M"] <= q_len and c.kwargs["BLOCK_N"] <= k_len] or kept
    if hopper_rule and _capability(named_args["Q"].device)[0] == 9:
        kept = [c for c in kept if not (c.num_warps == 8 and c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] < 128 * 128)
                ] or kept
    return kept


# (BLOCK_M, BLOCK_N, num_warps, num_stages); the fp32 sets fit A100's 164 KiB of shared memory at D = 128.
# fp32 (IEEE dot products, no tensor cores) spills in nearly every tile at D = 128 (attention.compile_check): up
# to ~100 KB per thread for the 32 x 64 dK/dV and 64 x 32 dQ tiles. 16 x 32 spills none on sm_80 in any pass and
# at most ~1.1 KB on sm_90, so each fp32 set also offers it to the autotuner, which times them all.
# The fp16/bf16 sets were picked by register pressure at D = 128 (ptxas -v for sm_90a, no GPU timing yet):
# 4 warps with 128-row query tiles, or dK/dV tiles of 64 x 128, spill kilobytes per thread and are left out.
# Some kept ones still spill a little (attention.compile_check, bf16, D = 128: the 128 x 128 forward tile 32-440
# bytes per thread, the 32 x 128 dK/dV tile up to 52 on sm_80), kept for the autotuner to time against the rest.
# Decode (forward, Sq <= 16): one 16-row query tile (the smallest tl.dot accepts) streaming 32..128-row key
# tiles; a 64- or 128-row tile would compute 4-8x the needed rows. Untimed.
FWD_GPU_CONFIGS = _gpu_configs([(128, 64, 8, 3), (128, 32, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (64, 32, 4, 3)],
                               [(64, 32, 4, 2), (32, 32, 4, 2), (16, 32, 4, 2)],
                               decode_shapes=[(16, 64, 4, 3), (16, 128, 4, 2), (16, 32, 4, 3)],
                               decode_fp32_shapes=[(16, 64, 4, 2), (16, 32, 4, 2)])
BWD_KV_GPU_CONFIGS = _gpu_configs([(32, 128, 8, 2), (32, 64, 4, 2), (16, 64, 4, 2), (32, 32, 4, 2)],
                                  [(32, 64, 4, 2), (32, 32, 4, 2), (16, 32, 4, 2)])
BWD_Q_GPU_CONFIGS = _gpu_configs([(128, 32, 8, 2), (128, 64, 8, 2), (64, 64, 8, 2), (64, 32, 4, 2)],
                                 [(64, 32, 4, 2), (32, 32, 4, 2), (16, 32, 4, 2)])


def _interpret_config(m, n):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=4, num_stages=1)]


# Under the interpreter a single fixed configuration (multi-config autotuning does not work there).
FWD_CONFIGS = _interpret_config(32, 16) if _INTERPRET else FWD_GPU_CONFIGS
BWD_KV_CONFIGS = _interpret_config(16, 32) if _INTERPRET else BWD_KV_GPU_CONFIGS
BWD_Q_CONFIGS = _interpret_config(32, 16) if _INTERPRET else BWD_Q_GPU_CONFIGS


def _prune_fwd(configs, named_args, **kwargs):
    return _prune(configs, named_args, hopper_rule=True, **kwargs)


_FWD_PRUNE = None if _INTERPRET else {"early_config_prune": _prune_fwd}
_BWD_PRUNE = None if _INTERPRET else {"early_config_prune": _prune}
# Autotune keys: the flags, the head dim and bucketed lengths (Q_BUCKET/K_BUCKET, see `_bucket` and
# `_fwd_buckets`); tensor dtypes are added by the autotuner itself.
_TUNE_KEY = ["Q_BUCKET", "K_BUCKET", "HEAD_DIM", "IS_CAUSAL", "HAS_ALIBI", "HAS_KPM", "HAS_POS", "HAS_PREFIX",
             "COLUMN_ALIBI"]
# Plain causal attention with ALiBi on key indices uses the column form of the bias (see `_scores`); False
# restores the distance form everywhere (for timing the two against each other, or bit-exact comparisons
# with the positions / prefix kernels, which always use the distance form).
COLUMN_ALIBI = True
# The dK/dV pass recomputes the scores as (key, query) tiles, so P^T and dS^T need no transpose (the Triton
# tutorial's layout). ptxas (attention.compile_check, bf16, D = 128): the 8-warp 32 x 128 tile spills 0-52 bytes per
# thread this way against 204-4,536 with the forward's layout and transposes. False restores that layout (the
# first GPU's A/B: attention/ab_timing.py).
TRANSPOSED_DKDV = True
DECODE_MAX_Q = 16  # forward calls with at most this many queries are tuned as decoding (`_fwd_buckets`)


@triton.jit
def _scores(q, k, offs_m, offs_n, pos_q, pos_k, seq_k, diag, prefix_end, origin, qk_scale2, slope2, kpm_ptr,
            stride_kpm_s, MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_KPM: tl.constexpr,
            HAS_POS: tl.constexpr, HAS_PREFIX: tl.constexpr, COLUMN_ALIBI: tl.constexpr, DOT_PRECISION: tl.constexpr,
            TRANSPOSED: tl.constexpr = False):
    """Base-2 scores of one tile: log2(e) * (scale * q k^T + alibi), -inf where the key is not visible.

    q (BLOCK_M, D), k (BLOCK_N, D); offs_m (BLOCK_M,) query rows, offs_n (BLOCK_N,) key rows;
    diag = Sk - Sq, the absolute position of query row 0; kpm_ptr points at this batch's key mask.
    pos_q (BLOCK_M,), pos_k (BLOCK_N,): ALiBi positions (HAS_POS; unused otherwise, see `_positions`);
    prefix_end: keys before it are visible to every query (HAS_PREFIX; see `_prefix_end`).
    COLUMN_ALIBI: the bias is slope * (j - origin), see `_column_shift`; the caller's LSE is shifted to match.
    Returns (BLOCK_M, BLOCK_N) fp32, or with TRANSPOSED its transpose (BLOCK_N, BLOCK_M), computed as k q^T: the
    dK/dV pass then gets P^T and dS^T straight from the recomputation, with no transpose of a computed tile.
    """
    # qi, kj: the query and key indices, broadcast along the tile's rows and columns (whichever way it is laid out)
    if TRANSPOSED:
        s = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale2
        qi = (offs_m + diag)[None, :]
        kj = offs_n[:, None]
    else:
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale2
        qi = (offs_m + diag)[:, None]
        kj = offs_n[None, :]
    # index distance query - key, exact in int32: the causal mask, and the ALiBi distance when no positions are
    # given. >= 0 on visible pairs of a plain causal tile. (Dead code, removed by the compiler, on the interior
    # tiles of the column form.)
    dist = qi - kj
    if HAS_ALIBI:
        if COLUMN_ALIBI:
            # plain causal: -slope * dist = slope * (j - origin) - slope * (i + diag - origin) on every visible
            # pair, and the last term is constant along the query's row: one bias per key instead of a
            # per-pair int distance, convert and multiply
            s += slope2 * (kj - origin).to(tl.float32)
        elif HAS_POS:
            # always the abs: span tokens see Part-A keys at larger positions, positions may repeat or go back
            if TRANSPOSED:
                pos_dist = pos_q[None, :] - pos_k[:, None]
            else:
                pos_dist = pos_q[:, None] - pos_k[None, :]
            s -= slope2 * tl.abs(pos_dist).to(tl.float32)
        elif IS_CAUSAL and not HAS_PREFIX:
            s -= slope2 * dist.to(tl.float32)  # dist >= 0 wherever the causal mask keeps the score
        else:  # non-causal, or prefix keys to the right of the query
            s -= slope2 * tl.abs(dist).to(tl.float32)
    if HAS_KPM:  # bounded load: even an interior tile of the dK/dV pass may be the last, partial key block
        real = tl.load(kpm_ptr + offs_n * stride_kpm_s, mask=offs_n < seq_k, other=0) != 0  # (BLOCK_N,)
        if TRANSPOSED:
            real = real[:, None]
        else:
            real = real[None, :]
    if MASK:  # diagonal / boundary tile: causal mask (or the prefix) and key bound element-wise
        visible = kj < seq_k
        if IS_CAUSAL:
            if HAS_PREFIX:
                visible = visible & ((dist >= 0) | (kj < prefix_end))
            else:
                visible = visible & (dist >= 0)
        if HAS_KPM:
            visible = visible & real
        s = tl.where(visible, s, float("-inf"))
    elif HAS_KPM:  # interior tile: keys visible (causally or as prefix); only padding remains
        s = tl.where(real, s, float("-inf"))
    return s


@triton.jit
def _column_shift(offs_m, diag, origin, slope2, COLUMN_ALIBI: tl.constexpr):
    """How much the column-form scores of query rows offs_m exceed the distance-form ones (base 2):
    slope2 * (i + diag - origin), constant along each row, so the probabilities are the same and only the
    row LSE moves by it. The LSE in memory is always the distance form's: the forward subtracts the shift
    before storing it and each backward pass adds its own (its origin differs), so every pass may pick its
    form. 0 without the column form."""
    shift = 0.0
    if COLUMN_ALIBI:
        shift = slope2 * (offs_m + diag - origin).to(tl.float32)
    return shift


@triton.jit
def _tile(base, b, h, offs_s, offs_d, stride_b, stride_h, stride_s, stride_d):
    """Pointers to rows offs_s and columns offs_d of head (b, h) of a (B, H, S, D) tensor: (len(offs_s), D)."""
    return base + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h \
        + offs_s[:, None] * stride_s + offs_d[None, :] * stride_d


@triton.jit
def _slope2(Slopes, h, HAS_ALIBI: tl.constexpr):
    """Head h's ALiBi slope in base-2 units (times log2(e), like the scores); 0 without ALiBi."""
    slope2 = 0.0
    if HAS_ALIBI:
        slope2 = tl.load(Slopes + h) * 1.4426950408889634
    return slope2


@triton.jit
def _prefix_end(Prefix, b, stride_prefix, seq_k, HAS_PREFIX: tl.constexpr):
    """Batch row b's prefix end (int32, clamped to [0, Sk]: keys before it are visible to every query);
    0 without a prefix. One scalar per program: the program axis covers b * H + h."""
    prefix_end = 0
    if HAS_PREFIX:
        prefix_end = tl.minimum(tl.maximum(tl.load(Prefix + b.to(tl.int64) * stride_prefix).to(tl.int32), 0), seq_k)
    return prefix_end


@triton.jit
def _positions(pos_ptr, idx, seq_k, stride_pos_s, HAS_POS: tl.constexpr):
    """ALiBi positions of the key indices idx of this batch row (queries pass i + Sk - Sq), 0 outside
    [0, Sk); a placeholder 0 without positions (`_scores` then uses the index distance)."""
    pos = 0
    if HAS_POS:
        pos = tl.load(pos_ptr + idx * stride_pos_s, mask=(idx >= 0) & (idx < seq_k), other=0)
    return pos


@triton.jit
def _key_range(start_m, seq_k, diag, prefix_end, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               IS_CAUSAL: tl.constexpr, HAS_PREFIX: tl.constexpr):
    """Key range of the query block at start_m (forward and dQ pass): (mid, hi) with key blocks [0, mid)
    fully visible and in bounds (no element-wise mask) and [mid, hi) the diagonal / last partial blocks."""
    if IS_CAUSAL:
        # keys [0, hi) are visible to some row of the block; keys [0, every) to every row
        hi = start_m + BLOCK_M + diag
        every = start_m + diag + 1
        if HAS_PREFIX:  # prefix keys are visible to every row
            hi = tl.maximum(hi, prefix_end)
            every = tl.maximum(every, prefix_end)
        hi = tl.minimum(tl.maximum(hi, 0), seq_k)
        mid = tl.minimum(tl.maximum(every, 0) // BLOCK_N * BLOCK_N, hi)
    else:
        hi = seq_k
        mid = seq_k // BLOCK_N * BLOCK_N
    return mid, hi


@triton.jit
def _fwd_inner(acc, m_i, l_i, q, pos_q, k_ptrs, v_ptrs, kpm_ptr, pos_ptr, offs_m, lo, hi, seq_k, diag, prefix_end,
               origin, qk_scale2, slope2, stride_kn, stride_vn, stride_kpm_s, stride_pos_s,
               BLOCK_N: tl.constexpr, MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr,
               HAS_KPM: tl.constexpr, HAS_POS: tl.constexpr, HAS_PREFIX: tl.constexpr, COLUMN_ALIBI: tl.constexpr,
               DOT_PRECISION: tl.constexpr):
    """Online softmax over key blocks [lo, hi): updates acc (BLOCK_M, D), m_i, l_i (BLOCK_M,)."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if MASK:
            k = tl.load(k_ptrs + start_n * stride_kn, mask=(offs_n < seq_k)[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs + start_n * stride_kn)
        pos_k = _positions(pos_ptr, offs_n, seq_k, stride_pos_s, HAS_POS)
        s = _scores(q, k, offs_m, offs_n, pos_q, pos_k, seq_k, diag, prefix_end, origin, qk_scale2, slope2,
                    kpm_ptr, stride_kpm_s, MASK, IS_CAUSAL, HAS_ALIBI, HAS_KPM, HAS_POS, HAS_PREFIX,
                    COLUMN_ALIBI, DOT_PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # a row with no visible key so far has m_new = -inf: subtract 0 instead, so exp2(-inf - 0) = 0
        # rather than exp2(-inf + inf) = NaN
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)  # rescales the old sums to the new max (0 when m_i = -inf)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASK:
            v = tl.load(v_ptrs + start_n * stride_vn, mask=(offs_n < seq_k)[:, None], other=0.0)
        else:
            v = tl.load(v_ptrs + start_n * stride_vn)
        # P is cast to V's dtype for the product, as the reference does
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.autotune(configs=FWD_CONFIGS, key=_TUNE_KEY, prune_configs_by=_FWD_PRUNE)
@triton.jit
def _attn_fwd(Q, K, V, Out, Lse, Slopes, Kpm, Pos, Prefix,
              stride_qb, stride_qh, stride_qm, stride_qd,
              stride_kb, stride_kh, stride_kn, stride_kd,
              stride_vb, stride_vh, stride_vn, stride_vd,
              stride_ob, stride_oh, stride_om, stride_od,
              stride_kpm_b, stride_kpm_s, stride_pos_b, stride_pos_s, stride_prefix,
              n_heads, seq_q, seq_k, qk_scale2, Q_BUCKET, K_BUCKET,
              HEAD_DIM: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_KPM: tl.constexpr,
              HAS_POS: tl.constexpr, HAS_PREFIX: tl.constexpr, COLUMN_ALIBI: tl.constexpr, DOT_PRECISION: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Causal rows near the end see the most keys: launch them first so the long programs start early.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0) if IS_CAUSAL else tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // n_heads
    h = bh % n_heads
    start_m = pid_m * BLOCK_M
    diag = seq_k - seq_q  # absolute position of query row 0 (bottom-right alignment)

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = _tile(Q, b, h, offs_m, offs_d, stride_qb, stride_qh, stride_qm, stride_qd)  # (BLOCK_M, D)
    k_ptrs = _tile(K, b, h, offs_n, offs_d, stride_kb, stride_kh, stride_kn, stride_kd)  # (BLOCK_N, D) at key block 0
    v_ptrs = _tile(V, b, h, offs_n, offs_d, stride_vb, stride_vh, stride_vn, stride_vd)
    kpm_ptr = Kpm + b.to(tl.int64) * stride_kpm_b  # this batch's (Sk,) key mask
    pos_ptr = Pos + b.to(tl.int64) * stride_pos_b  # this batch's (Sk,) positions

    slope2 = _slope2(Slopes, h, HAS_ALIBI)
    prefix_end = _prefix_end(Prefix, b, stride_prefix, seq_k, HAS_PREFIX)
    pos_q = _positions(pos_ptr, offs_m + diag, seq_k, stride_pos_s, HAS_POS)
    # column-form ALiBi origin: the key index of the block's middle row, so the biases of the keys that matter
    # (near each row's diagonal) stay within slope * BLOCK_M / 2 and keep fp32 resolution
    origin = start_m + diag + BLOCK_M // 2

    q = tl.load(q_ptrs, mask=(offs_m < seq_q)[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    mid, hi = _key_range(start_m, seq_k, diag, prefix_end, BLOCK_M, BLOCK_N, IS_CAUSAL, HAS_PREFIX)
    # interior tiles (fully visible, in bounds): no element-wise mask
    acc, m_i, l_i = _fwd_inner(acc, m_i, l_i, q, pos_q, k_ptrs, v_ptrs, kpm_ptr, pos_ptr, offs_m, 0, mid, seq_k, diag,
                               prefix_end, origin, qk_scale2, slope2, stride_kn, stride_vn, stride_kpm_s, stride_pos_s,
                               BLOCK_N, False, IS_CAUSAL, HAS_ALIBI, HAS_KPM, HAS_POS, HAS_PREFIX,
                               COLUMN_ALIBI, DOT_PRECISION)
    # diagonal and last partial tiles: causal mask and key bounds
    acc, m_i, l_i = _fwd_inner(acc, m_i, l_i, q, pos_q, k_ptrs, v_ptrs, kpm_ptr, pos_ptr, offs_m, mid, hi, seq_k, diag,
                               prefix_end, origin, qk_scale2, slope2, stride_kn, stride_vn, stride_kpm_s, stride_pos_s,
                               BLOCK_N, True, IS_CAUSAL, HAS_ALIBI, HAS_KPM, HAS_POS, HAS_PREFIX,
                               COLUMN_ALIBI, DOT_PRECISION)

    # rows that saw no key: l = 0 -> output 0 and LSE = +inf (so the backward recomputes P = 0)
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("inf"),
                   m_i + tl.math.log2(l_safe) - _column_shift(offs_m, diag, origin, slope2, COLUMN_ALIBI))
    tl.store(Lse + bh.to(tl.int64) * seq_q + offs_m, lse, mask=offs_m < seq_q)
    o_ptrs = _tile(Out, b, h, offs_m, offs_d, stride_ob, stride_oh, stride_om, stride_od)
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=(offs_m < seq_q)[:, None])


@triton.jit
def _bwd_preprocess(Out, dOut, Delta,
                    stride_ob, stride_oh, stride_om, stride_od,
                    stride_dob, stride_doh, stride_dom, stride_dod,
                    n_heads, seq_q, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """Delta[b, h, i] = sum_d dO[b, h, i, d] * O[b, h, i, d] in fp32 (the softmax backward's row term)."""
    bh = tl.program_id(1)
    b = bh // n_heads
    h = bh % n_heads
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = (offs_m < seq_q)[:, None]
    o = tl.load(_tile(Out, b, h, offs_m, offs_d, stride_ob, stride_oh, stride_om, stride_od), mask=row_ok, other=0.0)
    do = tl.load(_tile(dOut, b, h, offs_m, offs_d, stride_dob, stride_doh, stride_dom, stride_dod),
                 mask=row_ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + bh.to(tl.int64) * seq_q + offs_m, delta, mask=offs_m < seq_q)


@triton.jit
def _bwd_kv_inner(dk, dv, k, v, pos_k, q_ptrs, do_ptrs, lse_ptr, delta_ptr, kpm_ptr, pos_ptr, offs_n, lo, hi,
                  seq_q, seq_k, diag, prefix_end, origin, qk_scale2, slope2, stride_qm, stride_dom, stride_kpm_s,
                  stride_pos_s, BLOCK_M: tl.constexpr, MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
                  HAS_ALIBI: tl.constexpr, HAS_KPM: tl.constexpr, HAS_POS: tl.constexpr, HAS_PREFIX: tl.constexpr,
                  COLUMN_ALIBI: tl.constexpr, DOT_PRECISION: tl.constexpr, TRANSPOSED_DKDV: tl.constexpr):
    """Accumulate dK, dV (BLOCK_N, D) of one key block over query blocks [lo, hi)."""
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        if MASK:
            row_ok = offs_m < seq_q
            q = tl.load(q_ptrs + start_m * stride_qm, mask=row_ok[:, None], other=0.0)
            do = tl.load(do_ptrs + start_m * stride_dom, mask=row_ok[:, None], other=0.0)
            # +inf LSE for rows past Sq makes their recomputed P exactly 0
            lse = tl.load(lse_ptr + offs_m, mask=row_ok, other=float("inf"))
            delta = tl.load(delta_ptr + offs_m, mask=row_ok, other=0.0)
        else:
            q = tl.load(q_ptrs + start_m * stride_qm)
            do = tl.load(do_ptrs + start_m * stride_dom)
            lse = tl.load(lse_ptr + offs_m)
            delta = tl.load(delta_ptr + offs_m)
        lse += _column_shift(offs_m, diag, origin, slope2, COLUMN_ALIBI)
        pos_q = _positions(pos_ptr, offs_m + diag, seq_k, stride_pos_s, HAS_POS)
        if TRANSPOSED_DKDV:
            # the forward's scores laid out (BLOCK_N, BLOCK_M), as dK and dV consume them (the Triton tutorial's
            # form): P^T and dS^T come straight out of the recomputation, no computed tile is transposed
            st = _scores(q, k, offs_m, offs_n, pos_q, pos_k, seq_k, diag, prefix_end, origin, qk_scale2, slope2,
                         kpm_ptr, stride_kpm_s, MASK, IS_CAUSAL, HAS_ALIBI, HAS_KPM, HAS_POS, HAS_PREFIX,
                         COLUMN_ALIBI, DOT_PRECISION, TRANSPOSED=True)
            pt = tl.math.exp2(st - lse[None, :])  # P^T (BLOCK_N, BLOCK_M); 0 on masked pairs and empty rows
            dv += tl.dot(pt.to(do.dtype), do, input_precision=DOT_PRECISION)
            dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # dP^T (BLOCK_N, BLOCK_M)
            dst = pt * (dpt - delta[None, :])  # gradient w.r.t. the natural-log score (scale applied at the end)
            dk += tl.dot(dst.to(q.dtype), q, input_precision=DOT_PRECISION)
        else:  # the forward's layout (BLOCK_M, BLOCK_N), P and dS transposed for the products (A/B only)
            s = _scores(q, k, offs_m, offs_n, pos_q, pos_k, seq_k, diag, prefix_end, origin, qk_scale2, slope2,
                        kpm_ptr, stride_kpm_s, MASK, IS_CAUSAL, HAS_ALIBI, HAS_KPM, HAS_POS, HAS_PREFIX,
                        COLUMN_ALIBI, DOT_PRECISION)
            p = tl.math.exp2(s - lse[:, None])
            dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=DOT_PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=DOT_PRECISION)
    return dk, dv


@triton.autotune(configs=BWD_KV_CONFIGS, key=_TUNE_KEY + ["TRANSPOSED_DKDV"], prune_configs_by=_BWD_PRUNE)
@triton.jit
def _attn_bwd_kv(Q, K, V, dOut, Lse, Delta, dK, dV, Slopes, Kpm, Pos, Prefix,
                 stride_qb, stride_qh, stride_qm, stride_qd,
                 stride_kb, stride_kh, stride_kn, stride_kd,
                 stride_vb, stride_vh, stride_vn, stride_vd,
                 stride_dob, stride_doh, stride_dom, stride_dod,
                 stride_dkb, stride_dkh, stride_dkn, stride_dkd,
                 stride_dvb, stride_dvh, stride_dvn, stride_dvd,
                 stride_kpm_b, stride_kpm_s, stride_pos_b, stride_pos_s, stride_prefix,
                 n_heads, seq_q, seq_k, sm_scale, qk_scale2, Q_BUCKET, K_BUCKET,
                 HEAD_DIM: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr,
                 HAS_KPM: tl.constexpr, HAS_POS: tl.constexpr, HAS_PREFIX: tl.constexpr, COLUMN_ALIBI: tl.constexpr,
                 DOT_PRECISION: tl.constexpr, TRANSPOSED_DKDV: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    """One program per (key block of BLOCK_N rows, batch*head): dK and dV of that block."""
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    b = bh // n_heads
    h = bh % n_heads
    diag = seq_k - seq_q

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    key_ok = (offs_n < seq_k)[:, None]
    k = tl.load(_tile(K, b, h, offs_n, offs_d, stride_kb, stride_kh, stride_kn, stride_kd), mask=key_ok, other=0.0)
    v = tl.load(_tile(V, b, h, offs_n, offs_d, stride_vb, stride_vh, stride_vn, stride_vd), mask=key_ok, other=0.0)
    q_ptrs = _tile(Q, b, h, offs_m, offs_d, stride_qb, stride_qh, stride_qm, stride_qd)  # (BLOCK_M, D) at query block 0
    do_ptrs = _tile(dOut, b, h, offs_m, offs_d, stride_dob, stride_doh, stride_dom, stride_dod)
    lse_ptr = Lse + bh.to(tl.int64) * seq_q
    delta_ptr = Delta + bh.to(tl.int64) * seq_q
    kpm_ptr = Kpm + b.to(tl.int64) * stride_kpm_b
    pos_ptr = Pos + b.to(tl.int64) * stride_pos_b

    slope2 = _slope2(Slopes, h, HAS_ALIBI)
    prefix_end = _prefix_end(Prefix, b, stride_prefix, seq_k, HAS_PREFIX)
    pos_k = _positions(pos_ptr, offs_n, seq_k, stride_pos_s, HAS_POS)
    # column-form origin: this key block's middle key. Its bias row slope * (j - origin) is the same for every
    # query block; the far query rows get a large LSE shift instead, rounded like the distance form's bias.
    origin = start_n + BLOCK_N // 2

    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    full_end = seq_q // BLOCK_M * BLOCK_M  # query blocks before this one are entirely in bounds
    if IS_CAUSAL:
        # query i sees key j iff i >= j - diag: queries before `lo` see no key of this block, queries
        # from start_n + BLOCK_N - 1 - diag on see all of it
        lo = tl.maximum(start_n - diag, 0) // BLOCK_M * BLOCK_M
        see_all = start_n + BLOCK_N - 1 - diag
        if HAS_PREFIX:
            # a key block that begins inside the prefix is seen from query block 0 on; one whose keys (up
            # to Sk) all lie inside it is seen whole by every query: no causal mask anywhere
            lo = tl.where(start_n < prefix_end, 0, lo)
            see_all = tl.where(tl.minimum(start_n + BLOCK_N, seq_k) <= prefix_end, 0, see_all)
        diag_end = lo + tl.maximum(see_all - lo + BLOCK_M - 1, 0) // BLOCK_M * BLOCK_M
        diag_end = tl.minimum(diag_end, seq_q)
    else:
        lo = 0
        diag_end = 0
    # diagonal tiles: causal mask + bounds
    dk, dv = _bwd_kv_inner(dk, dv, k, v, pos_k, q_ptrs, do_ptrs, lse_ptr, delta_ptr, kpm_ptr, pos_ptr, offs_n,
                           lo, diag_end, seq_q, seq_k, diag, prefix_end, origin, qk_scale2, slope2,
                           stride_qm, stride_dom, stride_kpm_s, stride_pos_s,
                           BLOCK_M, True, IS_CAUSAL, HAS_ALIBI, HAS_KPM, HAS_POS, HAS_PREFIX,
                           COLUMN_ALIBI, DOT_PRECISION, TRANSPOSED_DKDV)
    # interior tiles: every query row in bounds and seeing every key (keys past Sk only feed dK/dV rows
    # that are never stored)
    dk, dv = _bwd_kv_inner(dk, dv, k, v, pos_k, q_ptrs, do_ptrs, lse_ptr, delta_ptr, kpm_ptr, pos_ptr, offs_n,
                           diag_end, full_end, seq_q, seq_k, diag, prefix_end, origin, qk_scale2, slope2,
                           stride_qm, stride_dom, stride_kpm_s, stride_pos_s,
                           BLOCK_M, False, IS_CAUSAL, HAS_ALIBI, HAS_KPM, HAS_POS, HAS_PREFIX,
                           COLUMN_ALIBI, DOT_PRECISION, TRANSPOSED_DKDV)
    # last partial query tile: bounds
    dk, dv = _bwd_kv_inner(dk, dv, k, v, pos_k, q_ptrs, do_ptrs, lse_ptr, delta_ptr, kpm_ptr, pos_ptr, offs_n,
                           tl.maximum(diag_end, full_end), seq_q, seq_q, seq_k, diag, prefix_end, origin, qk_scale2,
                           slope2,
                           stride_qm, stride_dom, stride_kpm_s, stride_pos_s,
                           BLOCK_M, True, IS_CAUSAL, HAS_ALIBI, HAS_KPM, HAS_POS, HAS_PREFIX,
                           COLUMN_ALIBI, DOT_PRECISION, TRANSPOSED_DKDV)

    dk *= sm_scale  # d(scale * q.k)/dk; the bias has no gradient
    tl.store(_tile(dK, b, h, offs_n, offs_d, stride_dkb, stride_dkh, stride_dkn, stride_dkd),
             dk.to(dK.dtype.element_ty), mask=key_ok)
    tl.store(_tile(dV, b, h, offs_n, offs_d, stride_dvb, stride_dvh, stride_dvn, stride_dvd),
             dv.to(dV.dtype.element_ty), mask=key_ok)


@triton.jit
def _bwd_q_inner(dq, q, pos_q, do, lse, delta, k_ptrs, v_ptrs, kpm_ptr, pos_ptr, offs_m, lo, hi, seq_k, diag,
                 prefix_end, origin, qk_scale2, slope2, stride_kn, stride_vn, stride_kpm_s, stride_pos_s,
                 BLOCK_N: tl.constexpr, MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr,
                 HAS_KPM: tl.constexpr, HAS_POS: tl.constexpr, HAS_PREFIX: tl.constexpr, COLUMN_ALIBI: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):
    """Accumulate dQ (BLOCK_M, D) of one query block over key blocks [lo, hi)."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if MASK:
            k = tl.load(k_ptrs + start_n * stride_kn, mask=(offs_n < seq_k)[:, None], other=0.0)
            v = tl.load(v_ptrs + start_n * stride_vn, mask=(offs_n < seq_k)[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs + start_n * stride_kn)
            v = tl.load(v_ptrs + start_n * stride_vn)
        pos_k = _positions(pos_ptr, offs_n, seq_k, stride_pos_s, HAS_POS)
        s = _scores(q, k, offs_m, offs_n, pos_q, pos_k, seq_k, diag, prefix_end, origin, qk_scale2, slope2,
                    kpm_ptr, stride_kpm_s, MASK, IS_CAUSAL, HAS_ALIBI, HAS_KPM, HAS_POS, HAS_PREFIX,
                    COLUMN_ALIBI, DOT_PRECISION)
        p = tl.math.exp2(s - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    return dq


@triton.autotune(configs=BWD_Q_CONFIGS, key=_TUNE_KEY, prune_configs_by=_BWD_PRUNE)
@triton.jit
def _attn_bwd_q(Q, K, V, dOut, Lse, Delta, dQ, Slopes, Kpm, Pos, Prefix,
                stride_qb, stride_qh, stride_qm, stride_qd,
                stride_kb, stride_kh, stride_kn, stride_kd,
                stride_vb, stride_vh, stride_vn, stride_vd,
                stride_dob, stride_doh, stride_dom, stride_dod,
                stride_dqb, stride_dqh, stride_dqm, stride_dqd,
                stride_kpm_b, stride_kpm_s, stride_pos_b, stride_pos_s, stride_prefix,
                n_heads, seq_q, seq_k, sm_scale, qk_scale2, Q_BUCKET, K_BUCKET,
                HEAD_DIM: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr,
                HAS_KPM: tl.constexpr, HAS_POS: tl.constexpr, HAS_PREFIX: tl.constexpr, COLUMN_ALIBI: tl.constexpr,
                DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program per (query block of BLOCK_M rows, batch*head): dQ of that block (same loop as forward)."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0) if IS_CAUSAL else tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // n_heads
    h = bh % n_heads
    start_m = pid_m * BLOCK_M
    diag = seq_k - seq_q

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seq_q
    q = tl.load(_tile(Q, b, h, offs_m, offs_d, stride_qb, stride_qh, stride_qm, stride_qd),
                mask=row_ok[:, None], other=0.0)
    do = tl.load(_tile(dOut, b, h, offs_m, offs_d, stride_dob, stride_doh, stride_dom, stride_dod),
                 mask=row_ok[:, None], other=0.0)
    lse = tl.load(Lse + bh.to(tl.int64) * seq_q + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(Delta + bh.to(tl.int64) * seq_q + offs_m, mask=row_ok, other=0.0)
    k_ptrs = _tile(K, b, h, offs_n, offs_d, stride_kb, stride_kh, stride_kn, stride_kd)
    v_ptrs = _tile(V, b, h, offs_n, offs_d, stride_vb, stride_vh, stride_vn, stride_vd)
    kpm_ptr = Kpm + b.to(tl.int64) * stride_kpm_b
    pos_ptr = Pos + b.to(tl.int64) * stride_pos_b

    slope2 = _slope2(Slopes, h, HAS_ALIBI)
    prefix_end = _prefix_end(Prefix, b, stride_prefix, seq_k, HAS_PREFIX)
    pos_q = _positions(pos_ptr, offs_m + diag, seq_k, stride_pos_s, HAS_POS)
    origin = start_m + diag + BLOCK_M // 2  # as in the forward (its BLOCK_M may differ: only the LSE is shared)
    lse += _column_shift(offs_m, diag, origin, slope2, COLUMN_ALIBI)  # +inf (empty or past Sq) stays +inf

    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    # the forward's key ranges
    mid, hi = _key_range(start_m, seq_k, diag, prefix_end, BLOCK_M, BLOCK_N, IS_CAUSAL, HAS_PREFIX)
    dq = _bwd_q_inner(dq, q, pos_q, do, lse, delta, k_ptrs, v_ptrs, kpm_ptr, pos_ptr, offs_m, 0, mid, seq_k, diag,
                      prefix_end, origin, qk_scale2, slope2, stride_kn, stride_vn, stride_kpm_s, stride_pos_s,
                      BLOCK_N, False, IS_CAUSAL, HAS_ALIBI, HAS_KPM, HAS_POS, HAS_PREFIX, COLUMN_ALIBI, DOT_PRECISION)
    dq = _bwd_q_inner(dq, q, pos_q, do, lse, delta, k_ptrs, v_ptrs, kpm_ptr, pos_ptr, offs_m, mid, hi, seq_k, diag,
                      prefix_end, origin, qk_scale2, slope2, stride_kn, stride_vn, stride_kpm_s, stride_pos_s,
                      BLOCK_N, True, IS_CAUSAL, HAS_ALIBI, HAS_KPM, HAS_POS, HAS_PREFIX, COLUMN_ALIBI, DOT_PRECISION)
    dq *= sm_scale
    tl.store(_tile(dQ, b, h, offs_m, offs_d, stride_dqb, stride_dqh, stride_dqm, stride_dqd),
             dq.to(dQ.dtype.element_ty), mask=row_ok[:, None])


# ----------------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------------
def _bucket(n: int) -> int:
    """Power-of-two bucket of a length, for the autotune key (at least 64)."""
    return max(64, triton.next_power_of_2(max(n, 1)))


def _fwd_buckets(seq_q: int, seq_k: int):
    """(Q_BUCKET, K_BUCKET) of a forward call. Decoding (Sq <= DECODE_MAX_Q, one query tile) is keyed as
    (DECODE_MAX_Q, 0), whatever the cache length: a generation grows Sk by one per step, and keying on its
    power-of-two bucket re-tuned (compiling and timing every configuration, seconds each time) at Sk = 64,
    128, ..., 2048 in the middle of decoding. A single-tile decode program streams the whole cache at memory
    speed whatever Sk is, so the best tile should not depend on it (untimed). K_BUCKET 0 also selects the
    decode configurations in `_prune`."""
    if seq_q <= DECODE_MAX_Q:
        return DECODE_MAX_Q, 0
    return _bucket(seq_q), _bucket(seq_k)


def _flags(q, alibi_slopes, key_padding_mask, positions, prefix_end):
    """Common launch arguments: slopes / key-mask / positions / prefix pointers (or dummies) and their flags."""
    has_alibi = alibi_slopes is not None
    slopes = (alibi_slopes.to(device=q.device, dtype=torch.float32).contiguous() if has_alibi
              else torch.empty(1, device=q.device, dtype=torch.float32))
    has_kpm = key_padding_mask is not None
    if has_kpm:
        # (B, Sk), 1 = real key: a bool mask is reinterpreted as uint8 in place (no copy per call / layer)
        kpm = key_padding_mask.to(device=q.device, dtype=torch.bool).view(torch.uint8)
    else:
        kpm = torch.empty(1, 1, device=q.device, dtype=torch.uint8)
    # int32 or int64 as given (read with their strides, no copy); dummies when absent
    has_pos = positions is not None
    pos = positions if has_pos else torch.empty(1, 1, device=q.device, dtype=torch.int32)
    has_prefix = prefix_end is not None
    prefix = prefix_end if has_prefix else torch.empty(1, device=q.device, dtype=torch.int32)
    # fp32 dot products would default to TF32 on GPU; ask for IEEE so fp32 means fp32 (fp16/bf16: default)
    precision = "ieee" if q.dtype == torch.float32 else None
    return slopes, has_alibi, kpm, has_kpm, pos, has_pos, prefix, has_prefix, precision


def _check_index_tensor(name, t, shape, what, device):
    """positions / prefix_end: an int32/int64 tensor of the given shape on q's device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor {what} = {shape}, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must be {what} = {shape}, got {tuple(t.shape)}")
    if t.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be int32 or int64, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but q is on {device}")


def _check(q, k, v, alibi_slopes, key_padding_mask, causal=True, positions=None, prefix_end=None):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be (batch, heads, seq, head_dim)")
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    if k.shape != v.shape or k.shape[0] != B or k.shape[1] != H or k.shape[3] != D:
        raise ValueError(f"shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match")
    if D not in (16, 32, 64, 128):
        raise ValueError(f"head_dim {D} not supported (16, 32, 64 or 128)")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q, k, v must share one dtype among fp16/bf16/fp32, got {q.dtype}, {k.dtype}, {v.dtype}")
    if alibi_slopes is not None and tuple(alibi_slopes.shape) != (H,):
        raise ValueError(f"alibi_slopes must be ({H},), got {tuple(alibi_slopes.shape)}")
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (B, Sk):
        raise ValueError(f"key_padding_mask must be (batch, seq_k) = {(B, Sk)}, "
                         f"got {tuple(key_padding_mask.shape)}")
    if positions is not None:
        _check_index_tensor("positions", positions, (B, Sk), "(batch, seq_k)", q.device)
        if Sq > Sk:  # queries take the last Sq key positions: there are not enough
            raise ValueError(f"positions needs seq_q <= seq_k (queries use the last seq_q key positions), "
                             f"got seq_q {Sq} > seq_k {Sk}")
    if prefix_end is not None:
        if not causal:
            raise ValueError("prefix_end only applies with causal=True (with causal=False every key is visible)")
        _check_index_tensor("prefix_end", prefix_end, (B,), "(batch,)", q.device)


def _column(causal, has_alibi, has_pos, has_prefix):
    """Whether a launch uses the column form of ALiBi: plain causal attention on key indices only."""
    return COLUMN_ALIBI and causal and has_alibi and not has_pos and not has_prefix


def _forward(q, k, v, alibi_slopes, causal, key_padding_mask, softmax_scale, positions, prefix_end):
    """Launch the forward: (out, lse), lse the (B, H, Sq) fp32 base-2 row LSE of the distance form
    (+inf for rows that see no key)."""
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    slopes, has_alibi, kpm, has_kpm, pos, has_pos, prefix, has_prefix, precision = _flags(
        q, alibi_slopes, key_padding_mask, positions, prefix_end)
    # Output laid out as (B, Sq, H, D) in memory and returned as a (B, H, Sq, D) view: the model's
    # next step, out.transpose(1, 2).reshape(B, Sq, H * D), is then free
    out = torch.empty(B, Sq, H, D, device=q.device, dtype=q.dtype).transpose(1, 2)
    lse = torch.empty(B, H, Sq, device=q.device, dtype=torch.float32)  # base-2 row LSE
    if out.numel() > 0:
        grid = lambda meta: (triton.cdiv(Sq, meta["BLOCK_M"]), B * H)  # noqa: E731
        _attn_fwd[grid](q, k, v, out, lse, slopes, kpm, pos, prefix,
                        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *kpm.stride(), *pos.stride(),
                        prefix.stride(0), H, Sq, Sk, scale * LOG2E, *_fwd_buckets(Sq, Sk),
                        HEAD_DIM=D, IS_CAUSAL=causal, HAS_ALIBI=has_alibi, HAS_KPM=has_kpm,
                        HAS_POS=has_pos, HAS_PREFIX=has_prefix,
                        COLUMN_ALIBI=_column(causal, has_alibi, has_pos, has_prefix), DOT_PRECISION=precision)
    return out, lse


def _backward(dout, q, k, v, out, lse, alibi_slopes, causal, key_padding_mask, softmax_scale, positions,
              prefix_end):
    """Launch the three backward kernels: (dq, dk, dv), contiguous, in the inputs' dtype."""
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    slopes, has_alibi, kpm, has_kpm, pos, has_pos, prefix, has_prefix, precision = _flags(
        q, alibi_slopes, key_padding_mask, positions, prefix_end)
    dq = torch.empty(B, H, Sq, D, device=q.device, dtype=q.dtype)
    dk = torch.empty(B, H, Sk, D, device=k.device, dtype=k.dtype)
    dv = torch.empty(B, H, Sk, D, device=v.device, dtype=v.dtype)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    dout = dout.to(q.dtype)
    delta = torch.empty_like(lse)
    pre_block = 32 if _INTERPRET else 128
    _bwd_preprocess[(triton.cdiv(Sq, pre_block), B * H)](out, dout, delta, *out.stride(), *dout.stride(),
                                                         H, Sq, HEAD_DIM=D, BLOCK_M=pre_block)
    # the LSE in memory is the distance form's, so the backward picks its form independently of the forward
    common = dict(HEAD_DIM=D, IS_CAUSAL=causal, HAS_ALIBI=has_alibi, HAS_KPM=has_kpm, HAS_POS=has_pos,
                  HAS_PREFIX=has_prefix, COLUMN_ALIBI=_column(causal, has_alibi, has_pos, has_prefix),
                  DOT_PRECISION=precision)
    masks = (*kpm.stride(), *pos.stride(), prefix.stride(0))
    grid_kv = lambda meta: (triton.cdiv(Sk, meta["BLOCK_N"]), B * H)  # noqa: E731
    _attn_bwd_kv[grid_kv](q, k, v, dout, lse, delta, dk, dv, slopes, kpm, pos, prefix,
                          *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *dv.stride(),
                          *masks, H, Sq, Sk, scale, scale * LOG2E, _bucket(Sq), _bucket(Sk),
                          TRANSPOSED_DKDV=TRANSPOSED_DKDV, **common)
    grid_q = lambda meta: (triton.cdiv(Sq, meta["BLOCK_M"]), B * H)  # noqa: E731
    _attn_bwd_q[grid_q](q, k, v, dout, lse, delta, dq, slopes, kpm, pos, prefix,
                        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dq.stride(),
                        *masks, H, Sq, Sk, scale, scale * LOG2E, _bucket(Sq), _bucket(Sk), **common)
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------------
# The kernel as one PyTorch custom op (forward and backward each one opaque op): torch.compile and FSDP's
# tracing see `recgpt::flash_attn_alibi_fwd` / `_bwd` with their fake (shape-only) versions instead of
# tracing into Triton launches, autotuners and Python control flow.
# ----------------------------------------------------------------------------------------------------
@torch.library.custom_op("recgpt::flash_attn_alibi_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, alibi_slopes: Optional[torch.Tensor], causal: bool,
            key_padding_mask: Optional[torch.Tensor], softmax_scale: Optional[float],
            positions: Optional[torch.Tensor], prefix_end: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out (B, H, Sq, D) with (B, Sq, H, D) memory layout, lse (B, H, Sq) fp32); see `flash_attn_alibi`."""
    return _forward(q, k, v, alibi_slopes, causal, key_padding_mask, softmax_scale, positions, prefix_end)


@_fwd_op.register_fake
def _fwd_fake(q, k, v, alibi_slopes, causal, key_padding_mask, softmax_scale, positions, prefix_end):
    B, H, Sq, D = q.shape
    return q.new_empty(B, Sq, H, D).transpose(1, 2), q.new_empty(B, H, Sq, dtype=torch.float32)


@torch.library.custom_op("recgpt::flash_attn_alibi_bwd", mutates_args=())
def _bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
            lse: torch.Tensor, alibi_slopes: Optional[torch.Tensor], causal: bool,
            key_padding_mask: Optional[torch.Tensor], softmax_scale: Optional[float], positions: Optional[torch.Tensor],
            prefix_end: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) from the upstream gradient and the forward's saved output and LSE."""
    return _backward(dout, q, k, v, out, lse, alibi_slopes, causal, key_padding_mask, softmax_scale, positions,
                     prefix_end)


@_bwd_op.register_fake
def _bwd_fake(dout, q, k, v, out, lse, alibi_slopes, causal, key_padding_mask, softmax_scale, positions, prefix_end):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _op_setup_context(ctx, inputs, output):
    q, k, v, alibi_slopes, causal, key_padding_mask, softmax_scale, positions, prefix_end = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, alibi_slopes, key_padding_mask, positions, prefix_end)
    ctx.causal, ctx.softmax_scale = causal, softmax_scale
    ctx.mark_non_differentiable(lse)


def _op_backward(ctx, dout, _dlse):
    q, k, v, out, lse, alibi_slopes, key_padding_mask, positions, prefix_end = ctx.saved_tensors
    dq, dk, dv = _bwd_op(dout, q, k, v, out, lse, alibi_slopes, ctx.causal, key_padding_mask, ctx.softmax_scale,
                         positions, prefix_end)
    return dq, dk, dv, None, None, None, None, None, None


_fwd_op.register_autograd(_op_backward, setup_context=_op_setup_context)


class _FlashAttnALiBi(torch.autograd.Function):
    """The same forward and backward as a plain autograd.Function: what `flash_attn_alibi` called before the
    custom op (torch.compile traces into it). Kept as the eager reference the op is tested against."""

    @staticmethod
    def forward(ctx, q, k, v, alibi_slopes, causal, key_padding_mask, softmax_scale, positions=None, prefix_end=None):
        out, lse = _forward(q, k, v, alibi_slopes, causal, key_padding_mask, softmax_scale, positions, prefix_end)
        ctx.save_for_backward(q, k, v, out, lse, alibi_slopes, key_padding_mask, positions, prefix_end)
        ctx.flags = (causal, softmax_scale)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, alibi_slopes, key_padding_mask, positions, prefix_end = ctx.saved_tensors
        causal, softmax_scale = ctx.flags
        grads = _backward(dout, q, k, v, out, lse, alibi_slopes, causal, key_padding_mask, softmax_scale,
                          positions, prefix_end)
        return grads + (None,) * 6  # alibi_slopes, causal, key_padding_mask, softmax_scale, positions, prefix_end


def flash_attn_alibi(q, k, v, alibi_slopes=None, *, causal=True, key_padding_mask=None, softmax_scale=None,
                     positions=None, prefix_end=None):
    """Flash attention with in-kernel ALiBi; the same function as `attention.reference.attention_reference`.

    q (B, H, Sq, D), k/v (B, H, Sk, D) in fp16/bf16 (fp32 works too), any strides; alibi_slopes (H,) fp32
    or None; causal bottom-right aligned (query i sees key j iff j <= i + Sk - Sq); key_padding_mask
    (B, Sk) bool with True = real key, or None; softmax_scale defaults to 1/sqrt(D).
    positions (B, Sk) int32/int64 or None: ALiBi positions of the keys, queries taking the last Sq of them
    (needs Sq <= Sk); the bias is then -slope_h * |pos_q - pos_k| (else the index distance).
    prefix_end (B,) int32/int64 or None, causal only: keys j < prefix_end[b] are visible to every query of
    batch row b (GLM Part A / prefix LM); the mask stays index based.
    Returns (B, H, Sq, D) in q's dtype (a view of a (B, Sq, H, D)-contiguous buffer). Differentiable in
    q, k and v; rows that see no key are 0 with zero gradients. One custom op (`recgpt::flash_attn_alibi_fwd`,
    its backward `recgpt::flash_attn_alibi_bwd`).
    """
    _check(q, k, v, alibi_slopes, key_padding_mask, causal, positions, prefix_end)
    scale = None if softmax_scale is None else float(softmax_scale)
    out, _ = _fwd_op(q, k, v, alibi_slopes, bool(causal), key_padding_mask, scale, positions, prefix_end)
    return out
