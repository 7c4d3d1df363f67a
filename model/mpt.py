"""The MPT decoder (MPT-7B, RecGPT-7B) in one file.

Numerically the same model as llm-foundry's MPT and transformers' MptForCausalLM (facts and sources in
../shared/spec/mpt.md):
- token embedding `wte` tied to the output head (logits = LN_f(x) @ wte.T, times logit_scale if set);
- pre-LayerNorm blocks x += attn(LN1(x)); x += ffn(LN2(x)), no biases anywhere when `no_bias`;
- fused Wqkv whose rows are [Q | K | V], each "(head, head_dim)", optional clip_qkv and qk_ln;
- ALiBi with MPT's slopes (non-power-of-two head counts included), no positional embedding;
- causal + key-padding masks, so left-padded batches work in generation and right-padded ones in training;
- FFN up_proj -> exact (erf) GELU -> down_proj;
- a preallocated KV cache for incremental decoding (beam search reorders it with `KVCache.reorder`);
- llm-foundry's initialisation for training from scratch (`init_weights`).

Attention is chosen by `config.attn_impl`, one function computed three ways (tests/test_kernels.py,
tests/test_flex_attention.py):
- "torch": attention/reference.py, SDPA given a materialised (B or 1, H, S, S) ALiBi + mask bias in the compute
  dtype, built once per forward (the explicit fp32 softmax only in float64); any device. Accuracy of the bf16 bias:
  attention_reference's docstring;
- "triton": our flash kernel (attention/flash_alibi.py), ALiBi in registers; CUDA (without it, the "torch" path);
- "flex": torch's FlexAttention (attention/flex.py), ALiBi as a score_mod and the masks as a BlockMask built once
  per forward; compiled on CUDA, eager and inference-only on the CPU.

Build without allocating, then materialise once:
    with torch.device("meta"):
        model = MPT(cfg)
    model.to_empty(device="cuda"); model.init_weights()      # from scratch, or model.load.load_model(...)
"""
import functools
import logging
import math
import os
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from attention.flex import FlexBias, flex_attn_alibi, flex_bias
from attention.reference import AttentionBias, attention_bias, attention_reference
from model.config import MPTConfig

log = logging.getLogger(__name__)


def alibi_slopes(n_heads: int, alibi_bias_max: float = 8.0) -> torch.Tensor:
    """MPT's ALiBi slopes (H,) in fp32: 2^(-k * bias_max / Hp) for k = 1..Hp, Hp = next power of two.

    For a head count that is not a power of two, MPT keeps the odd-indexed slopes then the even-indexed
    ones and takes the first n_heads (llm-foundry gen_slopes; e.g. 6 heads -> 2^-2, 2^-4, 2^-6, 2^-8, 2^-1, 2^-3).
    """
    n_pow2 = 2 ** math.ceil(math.log2(n_heads))
    exponents = torch.arange(1, n_pow2 + 1, dtype=torch.float32) * (alibi_bias_max / n_pow2)
    slopes = 1.0 / torch.pow(2.0, exponents)
    if n_pow2 != n_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:n_heads]
    return slopes


class KVCache:
    """Keys and values of every layer, preallocated to `max_len` positions: (B, H, max_len, D) each, and the
    ALiBi position of every key, (B, max_len): a blank-infilling prompt's keys are not at their indices.

    `length` positions are filled. The model writes a step's new keys for every layer, then advances
    `length` once. The attention mask handed to the model covers all `length + new` key positions, so
    left-padded prompts keep their pad keys masked for the whole generation.
    """

    def __init__(self, config: MPTConfig, batch_size: int, max_len: int, device=None, dtype=torch.float32,
                 capacity: int = None):
        if max_len > config.max_seq_len:
            raise ValueError(f"KV cache of {max_len} positions exceeds the model config key "
                             f"max_seq_len={config.max_seq_len}")
        # `capacity` rows allocated (beam search: prompts x beams), the first batch_size in use: growing to them
        # (prompts spread into their beams) gathers in place, with no second cache
        rows = max(capacity or 0, batch_size)
        shape = (config.n_layers, rows, config.n_heads, max_len, config.head_dim)
        # empty, not zeros: positions past `length` are never read, and at 7B with beams this is tens of GB
        self._keys = torch.empty(shape, device=device, dtype=dtype)
        self._values = torch.empty(shape, device=device, dtype=dtype)
        self._positions = torch.empty((rows, max_len), device=device, dtype=torch.int64)
        self.keys, self.values = self._keys[:, :batch_size], self._values[:, :batch_size]
        self.positions = self._positions[:batch_size]
        self.explicit_positions = False  # positions are recorded only once a call gives them (blank infilling)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, H, S_new, D) after the filled positions; return all keys/values so far."""
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def reorder(self, index: torch.Tensor):
        """Beam search: row b becomes old row index[b] (index may repeat rows, drop them, or change the count).

        Only the filled positions are gathered, one layer at a time. Within the allocated rows (`capacity`: beams
        reordered, finished prompts dropped, prompts spread into beams set aside for them) the gather is in place,
        and the extra memory is one layer's filled part (at 7B with 10 beams the cache itself is tens of GB; rows
        dropped stay allocated until the cache is). Beyond them, a cache of the new size is allocated beside.
        """
        n, rows = self.length, index.numel()
        if rows > self._keys.shape[1]:
            shape = (self._keys.shape[0], rows) + self._keys.shape[2:]
            self._keys, self._values = (torch.empty(shape, device=self._keys.device, dtype=self._keys.dtype)
                                        for _ in range(2))
        for old, new in zip((self.keys, self.values), (self._keys, self._values)):
            for layer in range(old.shape[0]):
                new[layer, :rows, :, :n] = old[layer, :, :, :n].index_select(0, index)  # (R, H, n, D)
        self.keys, self.values = self._keys[:, :rows], self._values[:, :rows]
        # key positions: carried only once recorded (blank infilling); (R, n), small, so a copy is fine
        positions = self.positions[:, :n].index_select(0, index) if self.explicit_positions else None
        if rows > self._positions.shape[0]:
            self._positions = torch.empty((rows, self.max_len), device=self._positions.device, dtype=torch.int64)
        self.positions = self._positions[:rows]
        if positions is not None:
            self.positions[:, :n] = positions


class AttentionInputs(NamedTuple):
    """What every layer's attention needs, built once per forward pass (all layers share positions and mask)."""
    slopes: torch.Tensor  # (H,) fp32
    key_padding_mask: Optional[torch.Tensor]  # (B, past + S) bool, True = real key; None = no padding
    bias: Optional[AttentionBias]  # "torch" path: the materialised ALiBi + mask bias; None on the others
    positions: Optional[torch.Tensor] = None  # (B, past + S) ALiBi positions of the keys; None = their indices
    prefix_end: Optional[torch.Tensor] = None  # (B,) keys before it are visible to every query; None = causal
    flex: Optional[FlexBias] = None  # "flex" path: ALiBi score_mod and BlockMask (slopes, positions, masks in it)


def attention(q, k, v, inputs: AttentionInputs, config: MPTConfig, dropout_p: float = 0.0):
    """The attention switch: (B, H, Sq, D) queries against (B, H, Sk, D) keys/values, causal (with an optional
    bidirectional prefix), ALiBi (on indices, or on given positions)."""
    if inputs.flex is not None:
        return flex_attn_alibi(q, k, v, softmax_scale=config.scale, bias=inputs.flex)
    if inputs.bias is None:
        from attention.flash_alibi import flash_attn_alibi

        extra = {}
        if inputs.positions is not None or inputs.prefix_end is not None:  # only then: the plain call stays as it was
            extra = {"positions": inputs.positions, "prefix_end": inputs.prefix_end}
        slopes = inputs.slopes
        if slopes.dtype != torch.float32:  # FSDP2's bf16 policy casts every float forward input, slopes included:
            slopes = _fp32_slopes(config.n_heads, config.alibi_bias_max, q.device)  # 0.8409 -> 0.8398 is not ALiBi
        return flash_attn_alibi(q, k, v, slopes, causal=True, key_padding_mask=inputs.key_padding_mask,
                                softmax_scale=config.scale, **extra)
    # SDPA with the bias in q's dtype (CUDA: the memory-efficient kernel, q.k and softmax in fp32, no stored scores).
    # In bf16 that rounds ALiBi to bf16, which moves the result less than the explicit path's own bf16 error (measured
    # at seq 2048: attention_reference's docstring) and saves its 6 bytes per score per layer. The explicit softmax
    # stays for float64, the tests' exact path
    return attention_reference(q, k, v, bias=inputs.bias, softmax_scale=config.scale,
                               sdpa=q.dtype != torch.float64, dropout_p=dropout_p)


@functools.lru_cache(maxsize=16)
def _fp32_slopes(n_heads: int, alibi_bias_max: float, device) -> torch.Tensor:
    return alibi_slopes(n_heads, alibi_bias_max).to(device)  # (H,) fp32


_warned_no_triton = False


def _triton_usable(x: torch.Tensor) -> bool:
    """The Triton kernel runs on CUDA, or on the CPU under TRITON_INTERPRET=1 (tests)."""
    global _warned_no_triton
    if x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1":
        return True
    if not _warned_no_triton:
        log.warning("attn_impl 'triton' needs CUDA; tensors are on %s, so attention runs on the PyTorch "
                    "path (same function, attention/reference.py)", x.device)
        _warned_no_triton = True
    return False


class Attention(nn.Module):
    def __init__(self, config: MPTConfig):
        super().__init__()
        self.config = config
        d, bias = config.d_model, not config.no_bias
        self.Wqkv = nn.Linear(d, 3 * d, bias=bias)
        self.out_proj = nn.Linear(d, d, bias=bias)
        if config.qk_ln:
            self.q_ln = nn.LayerNorm(d, eps=config.norm_eps, bias=bias)
            self.k_ln = nn.LayerNorm(d, eps=config.norm_eps, bias=bias)

    def forward(self, x, attn_inputs: AttentionInputs, kv_cache=None, layer=0):
        cfg = self.config
        B, S, _ = x.shape
        qkv = self.Wqkv(x)  # (B, S, 3 * d_model)
        if cfg.clip_qkv is not None:
            qkv = qkv.clamp(min=-cfg.clip_qkv, max=cfg.clip_qkv)
        q, k, v = qkv.chunk(3, dim=-1)  # each (B, S, d_model)
        if cfg.qk_ln:
            q, k = self.q_ln(q).to(v.dtype), self.k_ln(k).to(v.dtype)
        q, k, v = (t.view(B, S, cfg.n_heads, cfg.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, H, S, D)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # (B, H, past + S, D)
        dropout_p = cfg.attn_pdrop if self.training else 0.0
        y = attention(q, k, v, attn_inputs, cfg, dropout_p)  # (B, H, S, D)
        y = y.transpose(1, 2).reshape(B, S, cfg.d_model)
        return self.out_proj(y)


class FFN(nn.Module):
    def __init__(self, config: MPTConfig):
        super().__init__()
        hidden, bias = config.expansion_ratio * config.d_model, not config.no_bias
        self.up_proj = nn.Linear(config.d_model, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, config.d_model, bias=bias)

    def forward(self, x):
        return self.down_proj(F.gelu(self.up_proj(x), approximate="none"))


class Block(nn.Module):
    def __init__(self, config: MPTConfig):
        super().__init__()
        bias = not config.no_bias
        self.norm_1 = nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=bias)
        self.attn = Attention(config)
        self.norm_2 = nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=bias)
        self.ffn = FFN(config)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x, attn_inputs: AttentionInputs, kv_cache=None, layer=0):
        x = x + self.resid_dropout(self.attn(self.norm_1(x), attn_inputs, kv_cache, layer))
        return x + self.resid_dropout(self.ffn(self.norm_2(x)))


class MPT(nn.Module):
    """MPT causal LM. Parameter names equal the HF checkpoint's minus the `transformer.` prefix."""

    def __init__(self, config: MPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        # blank infilling: entity-local intra positions (RecSysLLM's 2D encoding), zero-initialised; absent = off
        self.wte_intra = nn.Embedding(config.intra_positions, config.d_model) if config.intra_positions else None
        self.emb_dropout = nn.Dropout(config.emb_pdrop)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm_f = nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=not config.no_bias)
        # ALiBi slopes stay fp32 whatever the model's dtype, so they are not a buffer that .to(bf16) would round
        self._slopes_by_device = {}

    def slopes(self, device) -> torch.Tensor:
        if device not in self._slopes_by_device:
            self._slopes_by_device[device] = alibi_slopes(self.config.n_heads, self.config.alibi_bias_max).to(device)
        return self._slopes_by_device[device]

    def forward(self, input_ids, attention_mask=None, kv_cache: KVCache = None, last_token_only=False,
                positions=None, prefix_end=None, intra_positions=None):
        """input_ids (B, S) -> logits (B, S, vocab) fp32 (or (B, 1, vocab) with last_token_only).

        attention_mask: (B, past + S) bool/int, 1 for real tokens, covering the cached positions too;
        None means no padding. With kv_cache, input_ids are the S new tokens after `kv_cache.length`.
        Blank infilling (docs/recsysllm.md; all None = the plain causal LM): positions (B, S) int, the ALiBi
        positions of the new tokens (default: their indices; the cache keeps them for later steps); prefix_end
        (B,) int, keys before this index (counting cached ones) are visible to every query (GLM's Part A);
        intra_positions (B, S) int, rows of the zero-initialised intra table (needs config.intra_positions).
        """
        B, S = input_ids.shape
        past = kv_cache.length if kv_cache is not None else 0
        if past + S > self.config.max_seq_len:
            raise ValueError(f"{past + S} positions (cached {past} + new {S}) exceed the model config key "
                             f"max_seq_len={self.config.max_seq_len}")
        if kv_cache is not None and past + S > kv_cache.max_len:
            raise ValueError(f"KV cache holds {kv_cache.max_len} positions; {past + S} needed")
        key_padding_mask = None
        if attention_mask is not None:
            if attention_mask.shape != (B, past + S):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected "
                                 f"(batch, cached + new) = {(B, past + S)}")
            key_padding_mask = attention_mask.bool()
            if bool(key_padding_mask.all()):
                key_padding_mask = None  # nothing padded: take the faster unmasked path

        x = self.wte(input_ids)  # (B, S, d_model)
        if intra_positions is not None:
            if self.wte_intra is None:
                raise ValueError("intra_positions given, but this model has no intra-position table (model config "
                                 "key intra_positions = 0): not a blank-infilling model")
            if intra_positions.shape != (B, S):
                raise ValueError(f"intra_positions has shape {tuple(intra_positions.shape)}; expected {(B, S)}")
            x = x + self.wte_intra(intra_positions)  # (B, S, d_model)
        x = self.emb_dropout(x)
        key_positions = self._key_positions(B, S, past, positions, kv_cache, x.device)  # (B, past + S) or None
        if prefix_end is not None and prefix_end.shape != (B,):
            raise ValueError(f"prefix_end has shape {tuple(prefix_end.shape)}; expected (batch,) = {(B,)}")
        slopes = self.slopes(x.device)  # (H,) fp32
        # what every layer's attention shares, built once here: the flex BlockMask + score_mod, or the torch path's
        # bias in the compute dtype (one tensor for all layers, not a cast per layer), or nothing for the kernel
        bias = flex = None
        impl = self.config.attn_impl
        if impl == "flex":
            flex = flex_bias(slopes, S, past + S, causal=True, key_padding_mask=key_padding_mask,
                             positions=key_positions, prefix_end=prefix_end, device=x.device)
        elif not (impl == "triton" and _triton_usable(x)):
            bias = attention_bias(slopes, S, past + S, causal=True, key_padding_mask=key_padding_mask, device=x.device,
                                  positions=key_positions, prefix_end=prefix_end, dtype=x.dtype)
        attn_inputs = AttentionInputs(slopes, key_padding_mask, bias, key_positions, prefix_end, flex)
        for i, block in enumerate(self.blocks):
            x = block(x, attn_inputs, kv_cache, i)
        if kv_cache is not None:
            kv_cache.length = past + S
        if last_token_only:
            x = x[:, -1:]
        x = self.norm_f(x)
        logits = F.linear(x, self.wte.weight)  # tied head: (B, S, vocab)
        if self.config.logit_scale is not None:
            logits = logits * self.config.logit_scale
        return logits.float()

    @staticmethod
    def _key_positions(B, S, past, positions, kv_cache, device):
        """The ALiBi positions of all keys of this call (cached + new), or None when every key is at its index (the
        plain path, untouched). The cache records the new tokens' positions for the steps that follow."""
        if positions is not None and positions.shape != (B, S):
            raise ValueError(f"positions has shape {tuple(positions.shape)}; expected (batch, new tokens) = {(B, S)}")
        new = positions.to(device=device, dtype=torch.int64) if positions is not None else (
            torch.arange(past, past + S, device=device).expand(B, S))
        explicit = positions is not None
        if kv_cache is None:
            return new if explicit else None
        if not (explicit or kv_cache.explicit_positions):
            return None  # the plain path: keys at their indices, nothing recorded (decoding's hot loop)
        if not kv_cache.explicit_positions:  # the first explicit call: the keys cached so far sit at their indices
            kv_cache.positions[:, :past] = torch.arange(past, device=device)
            kv_cache.explicit_positions = True
        kv_cache.positions[:, past:past + S] = new
        return kv_cache.positions[:, :past + S]

    def new_kv_cache(self, batch_size: int, max_len: int = None, capacity: int = None) -> KVCache:
        p = self.wte.weight
        return KVCache(self.config, batch_size, max_len or self.config.max_seq_len, device=p.device, dtype=p.dtype,
                       capacity=capacity)

    # initialisation (llm-foundry param_init_fns.generic_param_init_fn_) --------------------------
    @torch.no_grad()
    def init_weights(self, generator: torch.Generator = None):
        """MPT's init for training from scratch; call after `to_empty` when built on meta."""
        cfg = self.config

        def init_(w):
            if cfg.init_name == "normal_":
                return nn.init.normal_(w, 0.0, cfg.init_std, generator=generator)
            init = nn.init.kaiming_normal_ if cfg.init_name == "kaiming_normal_" else nn.init.kaiming_uniform_
            return init(w, a=cfg.init_gain, mode=cfg.fan_mode, nonlinearity=cfg.init_nonlinearity,
                        generator=generator)

        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                if name.endswith("Wqkv"):  # llm-foundry inits the fused matrix one head slice at a time
                    for rows in module.weight.split(cfg.head_dim, dim=0):
                        init_(rows)
                else:
                    init_(module.weight)
                if name.endswith(("out_proj", "down_proj")) and cfg.init_div_is_residual:
                    module.weight.div_(math.sqrt(2 * cfg.n_layers))  # residual branches start small
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding) and name == "wte_intra":
                module.weight.zero_()  # the extension starts as a no-op: the model's logits are the base model's
            elif isinstance(module, nn.Embedding):
                if cfg.emb_init_std is not None:
                    nn.init.normal_(module.weight, 0.0, cfg.emb_init_std, generator=generator)
                elif cfg.emb_init_uniform_lim is not None:
                    lim = cfg.emb_init_uniform_lim
                    nn.init.uniform_(module.weight, -lim, lim, generator=generator)
                else:
                    init_(module.weight)
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                if module.bias is not None:
                    module.bias.zero_()


def build_model(config: MPTConfig, device="cpu", dtype=torch.float32, init=True, seed=None) -> MPT:
    """Build on meta, then allocate once on `device` in `dtype`; initialise with MPT's init if asked."""
    with torch.device("meta"):
        model = MPT(config).to(dtype)  # free on meta
    model.to_empty(device=device)
    if init:
        generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        model.init_weights(generator)
    return model
