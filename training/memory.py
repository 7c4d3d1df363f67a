"""Per-GPU memory estimate for a training config under FSDP2 FULL_SHARD, before launching.

    python -m training.memory configs/train/recgpt-7b-pretrain.yaml --gpus 8 --gpu-mem 40 [--section.key=value]

Arithmetic from ../shared/spec/performance.md section 6 (GB = 1e9 bytes; the "gpu-mem" capacity is in GB too):
- sharded state: fp32 master weights + fp32 gradients + LION momentum = 12 bytes/param / n_gpus (the same with
  mixed_precision bf16, which keeps fp32 master shards, and with fp32);
- in flight: two blocks' all-gathered compute params (current + prefetch), one block's unsharded gradient, the root
  unit (wte + norm_f) gathered plus its gradient, in the compute dtype (2 bytes bf16, 4 fp32);
- activations per layer, per sequence (Korthikanti et al. 2022 without dropout masks): 34*s*h in 16-bit units
  (x2 for fp32), O included, plus the attention path's own (`attention_memory`, by attn_impl). All three paths are
  fused kernels that keep no (heads, s, s) scores, only the fp32 row log-sum-exp (4*heads*s bytes per layer):
  - triton: our flash kernel, ALiBi in registers;
  - flex: torch.compile(flex_attention) on CUDA, ALiBi as a score_mod, one BlockMask of a few KB for all layers;
  - torch: SDPA's memory-efficient kernel given the materialised ALiBi + mask bias in the compute dtype, built once
    per forward and shared by every layer: heads*s^2 elements (2 bytes bf16, 4 fp32) per sequence, counted once,
    for every sequence of the micro-batch (with padding; an unpadded batch shares one). Before SDPA took bf16
    (attention_reference's docstring), bf16 ran the explicit softmax, which stores 6*heads*s^2 bytes per layer
    (fp32 probabilities and their bf16 copy): 25.8 GB per 2048-token sequence for MPT-7B.
  With per-block activation checkpointing each layer keeps only its input (2*s*h bytes) plus one block's
  activations during recompute;
- logits and cross-entropy: bf16 logits + fp32 copy + fp32 gradient = 10 bytes per (token, vocab entry);
- CUDA context, NCCL buffers and allocator slack: 2 GB (the spec's 1-3 GB estimate).
With LoRA (`--lora.enabled=true`, model/lora.py) the base is frozen: stored in the compute dtype (bf16: 2 bytes/param,
sharded), no gradients, no optimizer state; the adapters (r * (in + out) per adapted Linear) carry fp32 master +
gradient + LION momentum = 12 bytes each; the in-flight gradients are one block's adapters; activations are the
same (the backward still needs every input gradient), plus, with adapter dropout, each adapted Linear's dropped
input and its mask (7*s*h elements and bytes per layer for the four targets of a block, in + in + in + 4*in).
These are estimates: measure with the training log's `mem` column (max reserved) on the real GPU.
"""
import argparse
import dataclasses
import sys

from config import cli
from model.config import MPTConfig
from model.lora import adapter_parameter_count
from training.config import load_config
from training.loop import model_config

GB = 1e9


def block_params(c: MPTConfig) -> int:
    return (c.num_params() - c.vocab_size * c.d_model - c.d_model * (1 if c.no_bias else 2)) // c.n_layers


ATTENTION_PATHS = {
    "triton": "Triton flash kernel, ALiBi in registers: per layer the output and row LSE only",
    "flex": "FlexAttention compiled (CUDA), ALiBi as a score_mod: per layer the output and row LSE only",
    "torch": "SDPA (memory-efficient kernel) given a {dtype} (batch, heads, s, s) ALiBi + mask bias shared by all "
             "layers: per layer the output and row LSE",
}


def attention_memory(c: MPTConfig, seq_len: int, micro_batch: int, cbytes: int) -> tuple[str, float, float]:
    """(description, bytes per layer beyond the 34*s*h activations, bytes shared by all layers) of c.attn_impl."""
    lse = 4 * c.n_heads * seq_len * micro_batch  # fp32 row log-sum-exp, saved for the backward by every fused kernel
    shared = 0.0
    if c.attn_impl == "torch":
        shared = cbytes * c.n_heads * seq_len ** 2 * micro_batch  # the bias, one per sequence when padded
    return ATTENTION_PATHS[c.attn_impl].format(dtype="bf16" if cbytes == 2 else "fp32"), lse, shared


def estimate(c: MPTConfig, gpus: int, micro_batch: int, seq_len: int, mixed_precision: str = "bf16",
             activation_checkpointing: bool = False, lora=None) -> dict:
    """Bytes per GPU by item (and "params"); `lora`: the run config's lora section when LoRA is on, else None."""
    N, L, h, s, b = c.num_params(), c.n_layers, c.d_model, seq_len, micro_batch
    cbytes = 2 if mixed_precision == "bf16" else 4  # compute dtype
    blk = block_params(c)
    root = N - L * blk
    act_unit = cbytes / 2  # the 34*s*h figure is in 16-bit units
    _, attn_per_layer, attn_shared = attention_memory(c, s, b, cbytes)
    per_layer = 34 * s * b * h * act_unit + attn_per_layer
    if lora is not None and lora.dropout > 0:  # each adapter's dropped input (compute dtype) and its bool mask
        widths = {"Wqkv": h, "out_proj": h, "up_proj": h, "down_proj": c.expansion_ratio * h}
        per_layer += sum(widths[t] for t in lora.targets) * s * b * (cbytes + 1)
    if activation_checkpointing:
        activations = L * 2 * s * b * h * act_unit + per_layer
    else:
        activations = L * per_layer
    if lora is not None:
        n_adapters = adapter_parameter_count(c, lora.rank, lora.targets)
        out = {
            "params": N,
            "trainable (LoRA) params": n_adapters,
            f"frozen base weights ({'bf16' if cbytes == 2 else 'fp32'}, sharded)": cbytes * N / gpus,
            "adapters: fp32 master + grads + LION (sharded)": 12 * n_adapters / gpus,
            "gathered params: 2 blocks + root": (2 * blk + root) * cbytes + 2 * n_adapters / L * cbytes,
            "unsharded grads: 1 block's adapters": n_adapters / L * 4,
            "activations": activations,
            f"attention bias ({c.attn_impl}; shared by all layers)": attn_shared,
            "logits + cross-entropy": b * s * c.vocab_size * 10,
            "CUDA context, NCCL, allocator slack": 2 * GB,
        }
        out["total"] = sum(v for k, v in out.items() if "params" not in k or k.startswith("gathered"))
        return out
    out = {
        "params": N,
        "master weights (fp32, sharded)": 4 * N / gpus,
        "gradients (fp32, sharded)": 4 * N / gpus,
        "LION momentum (fp32, sharded)": 4 * N / gpus,
        "gathered params: 2 blocks + root": (2 * blk + root) * cbytes,
        "unsharded grads: 1 block + root": (blk + root) * cbytes,
        "activations": activations,
        f"attention bias ({c.attn_impl}; shared by all layers)": attn_shared,
        "logits + cross-entropy": b * s * c.vocab_size * 10,
        "CUDA context, NCCL, allocator slack": 2 * GB,
    }
    out["total"] = sum(v for k, v in out.items() if k != "params")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="a training YAML (configs/train/*.yaml); --section.key=value overrides follow")
    p.add_argument("--gpus", type=int, required=True, help="number of GPUs the model is sharded over")
    p.add_argument("--gpu-mem", type=float, required=True, help="capacity of one GPU in GB (e.g. 40, 80, 141)")
    p.add_argument("--micro-batch", type=int, default=None, help="default: train.micro_batch_size of the config")
    args, overrides = p.parse_known_args(argv)
    cfg = load_config(args.config, overrides)
    if cfg.model.init_from is None or _has_config(cfg.model.init_from):
        c = model_config(cfg)
    elif cfg.model.name is not None or cfg.model.config is not None:
        # the checkpoint is not there yet: the named model config has the same shapes (model_config checks it)
        c = model_config(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_from=None)))
        print(f"(model.init_from {cfg.model.init_from} not found: using model.name {cfg.model.name!r} / "
              f"model.config {cfg.model.config!r})")
    else:
        raise SystemExit(f"model.init_from {cfg.model.init_from} not found and no model.name to estimate from")
    seq_len = cfg.data.seq_len or c.max_seq_len
    mb = args.micro_batch or cfg.train.micro_batch_size
    print(f"{args.config}: {c.num_params():,} parameters, {c.n_layers} layers, d_model {c.d_model}, vocab "
          f"{c.vocab_size}, attn_impl {c.attn_impl}; micro-batch {mb} x {seq_len} tokens, "
          f"{cfg.parallel.mixed_precision}, {args.gpus} GPUs of {args.gpu_mem:g} GB")
    lora = cfg.lora if cfg.lora.enabled else None
    if lora is not None:
        n = adapter_parameter_count(c, lora.rank, lora.targets)
        print(f"LoRA rank {lora.rank} on {', '.join(lora.targets)}: {n:,} trainable parameters "
              f"({100 * n / c.num_params():.2f}%), the base frozen")
    cbytes = 2 if cfg.parallel.mixed_precision == "bf16" else 4
    print(f"attention (attn_impl {c.attn_impl}): {attention_memory(c, seq_len, mb, cbytes)[0]}")
    rows = {ac: estimate(c, args.gpus, mb, seq_len, cfg.parallel.mixed_precision, ac, lora) for ac in (False, True)}
    print(f"{'per GPU':48s} {'no act. ckpt':>14s} {'act. ckpt':>14s}")
    for key in rows[False]:
        if key.endswith("params") and not key.startswith("gathered"):
            continue
        a, b = rows[False][key] / GB, rows[True][key] / GB
        print(f"{key:48s} {a:11.2f} GB {b:11.2f} GB")
    for ac in (False, True):
        total = rows[ac]["total"] / GB
        verdict = "fits" if total <= args.gpu_mem else "does NOT fit"
        print(f"{'with' if ac else 'without'} activation checkpointing: {total:.2f} GB of {args.gpu_mem:g} GB "
              f"-> {verdict}")
    return rows


def _has_config(path) -> bool:
    import pathlib

    from model.checkpoint import CONFIG_NAME, HF_CONFIG_NAME

    return any((pathlib.Path(path) / name).is_file() for name in (CONFIG_NAME, HF_CONFIG_NAME))


if __name__ == "__main__":
    sys.exit(cli.run(main))
