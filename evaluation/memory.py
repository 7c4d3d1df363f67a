"""What one evaluation generate call holds in GPU memory, before it runs: the arithmetic that evaluate.py logs before
decoding, docs/evaluation_memory.md tabulates and a GPU check compares with torch.cuda.max_memory_allocated.

    positions = cache_positions(n_prompts=8, longest_prompt=1920, num_beams=10, max_new_tokens=128)  # 163,760
    est = generation_memory(n_layers=32, d_model=4096, vocab_size=50432, rows=80, length=2047, bytes_per_element=2,
                            weight_bytes=6_649_286_656 * 2)   # {"kv_cache", "weights", "logits", "total"} in bytes
    python -m evaluation.memory --gpu-gib 39.4 --prompt-tokens 1920 --num-beams 10 --max-new-tokens 128
    python -m evaluation.memory --gpu-gib 79.2 --prompt-tokens 1920 --num-beams 1 --max-new-tokens 16 --attn-impl torch

The arithmetic (model/mpt.py KVCache, evaluation/generate.py Decoder):
- A generate call over n prompts, left padded to the longest (L tokens), with K beams (K = 1 for greedy and
  sampling) and up to T new tokens allocates one KV cache of rows x length positions: rows = n x K,
  length = L + T - 1 (the last new token is never fed back). That product is `cache_positions`, the unit of
  evaluate.py's `generate_token_budget` (--token-budget). Beam search allocates it once, at n x K rows: the prompts
  run once on its first n rows and are spread into their beams in place.
- KV cache = 2 (keys and values) x n_layers x rows x length x d_model x bytes per element (the model's dtype: 2 for
  bf16 / fp16, 4 for fp32). MPT-7B in bf16: 2 x 32 x 4096 x 2 = 524,288 bytes = 0.5 MiB a position. The cache's
  int64 key-position table (8 bytes a position, < 0.002% of it at 7B) is left out.
- weights = parameters x bytes per element (MPT-7B: 6,649,286,656 x 2 = 13.3 GB = 12.4 GiB in bf16).
- logits = rows x vocab x 4 bytes: the model returns fp32 logits of each row's last position.
- the prefill (`prefill_bytes`, a rough upper estimate, logged beside): the n x L prompt tokens' activations inside
  one block, about 10 x d_model elements a token (the residual, the norm's output, the MLP's 4 x d_model
  up-projection and its GELU: 80 KiB a token at 7B in bf16), and with attn_impl torch (model/mpt.py: SDPA given a
  materialised ALiBi + padding bias, built once per forward and held through it) that bias, n x heads x L^2 elements
  in the compute dtype. The Triton kernel (attn_impl triton, on CUDA) and FlexAttention (flex) store none. Greedy and
  sampling run about the whole budget through the prefill as prompt tokens, beam search a num_beams-th of it.
Not counted at all, so leave headroom (`token_budget_for`'s `headroom_bytes`): beam search's two or three more
rows x vocab fp32 tensors (log-softmax, the candidates' totals), one layer's filled cache part while beams are
reordered (rows x length x d_model x bytes), the CUDA context and the allocator's slack.
"""
import argparse
import sys

GIB = 2 ** 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def cache_positions(n_prompts: int, longest_prompt: int, num_beams: int, max_new_tokens: int) -> int:
    """KV-cache positions (rows x length) of one generate call: n_prompts x num_beams rows of
    longest_prompt + max_new_tokens - 1 positions."""
    return n_prompts * num_beams * (longest_prompt + max_new_tokens - 1)


def kv_bytes_per_position(n_layers: int, d_model: int, bytes_per_element: int) -> int:
    """Keys and values of every layer at one position of one row."""
    return 2 * n_layers * d_model * bytes_per_element


def generation_memory(n_layers: int, d_model: int, vocab_size: int, rows: int, length: int, bytes_per_element: int,
                      weight_bytes: int = 0) -> dict:
    """Bytes of one generate call's KV cache (rows x length positions), the weights and the fp32 logits buffer."""
    kv = kv_bytes_per_position(n_layers, d_model, bytes_per_element) * rows * length
    logits = rows * vocab_size * 4
    return {"kv_cache": kv, "weights": weight_bytes, "logits": logits, "total": kv + weight_bytes + logits}


def prefill_bytes(n_prompts: int, longest_prompt: int, d_model: int, n_heads: int, bytes_per_element: int,
                  materialised_bias: bool) -> int:
    """Rough upper estimate of the prefill's transient memory (module doc): 10 x d_model activations a prompt token,
    plus the n x heads x L^2 attention bias when attention takes a materialised one (attn_impl torch)."""
    bias = n_prompts * n_heads * longest_prompt ** 2 if materialised_bias else 0
    return (n_prompts * longest_prompt * 10 * d_model + bias) * bytes_per_element


def describe(est: dict, dtype: str) -> str:
    """One line, in GiB."""
    line = (f"KV cache {est['kv_cache'] / GIB:.2f} GiB + weights {est['weights'] / GIB:.2f} GiB + logits "
            f"{est['logits'] / GIB:.2f} GiB = {est['total'] / GIB:.2f} GiB ({dtype})")
    if "prefill" in est:
        line += f"; the prefill adds up to {est['prefill'] / GIB:.2f} GiB while the prompts run"
    return line


def token_budget_for(gpu_bytes: float, n_layers: int, d_model: int, n_heads: int, vocab_size: int,
                     bytes_per_element: int, weight_bytes: int, prompt_tokens: int, num_beams: int, max_new_tokens: int,
                     headroom_bytes: float = 0, materialised_bias: bool = False) -> int:
    """The token budget (KV-cache positions) of the most rows that fit in gpu_bytes - headroom beside the weights, for
    prompts of prompt_tokens: a row costs its cache positions, its logits and a num_beams-th of its prompt's prefill."""
    length = prompt_tokens + max_new_tokens - 1
    per_row = (kv_bytes_per_position(n_layers, d_model, bytes_per_element) * length + vocab_size * 4
               + prefill_bytes(1, prompt_tokens, d_model, n_heads, bytes_per_element, materialised_bias) / num_beams)
    return max(0, int((gpu_bytes - headroom_bytes - weight_bytes) // per_row)) * length


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mpt-7b", help="a named model config (configs/model/NAME.yaml); default mpt-7b")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPE_BYTES), help="default bfloat16")
    p.add_argument("--prompt-tokens", type=int, required=True, help="the longest prompt of a batch, in tokens")
    p.add_argument("--num-beams", type=int, default=10, help="1 for greedy or sampling; default 10")
    p.add_argument("--max-new-tokens", type=int, default=128, help="default 128 (next_item)")
    p.add_argument("--prompts", type=int, default=8, help="prompts in the batch to estimate; default 8 (--batch-size)")
    p.add_argument("--gpu-gib", type=float, default=None, help="the GPU's memory in GiB (torch.cuda."
                   "get_device_properties(0).total_memory / 2**30: A100-40GB 39.4, 80 GB cards 79.2): print the "
                   "token budget that fits")
    p.add_argument("--headroom-gib", type=float, default=4.0, help="kept free for what the estimate leaves out "
                   "(module doc); default 4")
    p.add_argument("--attn-impl", default="triton", choices=("triton", "flex", "torch"), help="torch: the "
                   "prefill materialises the attention bias (module doc); default triton")
    args = p.parse_args(argv)
    from model.config import MPTConfig

    c = MPTConfig.from_name(args.model)
    b = DTYPE_BYTES[args.dtype]
    length = args.prompt_tokens + args.max_new_tokens - 1
    rows = args.prompts * args.num_beams
    est = generation_memory(c.n_layers, c.d_model, c.vocab_size, rows, length, b, c.num_params() * b)
    est["prefill"] = prefill_bytes(args.prompts, args.prompt_tokens, c.d_model, c.n_heads, b, args.attn_impl == "torch")
    per_position = kv_bytes_per_position(c.n_layers, c.d_model, b)
    print(f"{args.model}: {per_position:,} bytes of KV cache a position ({args.dtype})")
    print(f"{args.prompts} prompts x {args.num_beams} beams = {rows} rows x {length} positions = "
          f"{cache_positions(args.prompts, args.prompt_tokens, args.num_beams, args.max_new_tokens):,} positions: "
          + describe(est, args.dtype))
    if args.gpu_gib is not None:
        budget = token_budget_for(args.gpu_gib * GIB, c.n_layers, c.d_model, c.n_heads, c.vocab_size, b,
                                  c.num_params() * b, args.prompt_tokens, args.num_beams, args.max_new_tokens,
                                  args.headroom_gib * GIB, args.attn_impl == "torch")
        one = cache_positions(1, args.prompt_tokens, args.num_beams, args.max_new_tokens)
        print(f"fits {args.gpu_gib:g} GiB with {args.headroom_gib:g} GiB headroom: --token-budget {budget:,} "
              f"({budget // one if one else 0} such prompt(s) a batch)" + ("" if budget >= one else
                                                                         "; a prompt this long runs alone, over it"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
