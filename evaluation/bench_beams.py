"""Beam-search throughput at MPT-7B's shape on one GPU: random weights, random Beauty-length prompts.

    python -m evaluation.bench_beams                                   # MPT-7B shape, bf16, Triton attention, CUDA
    python -m evaluation.bench_beams --out out/beams.md                # also writes the table (.md) and numbers (.json)
    python -m evaluation.bench_beams --device cpu --dtype float32 --attn-impl torch --n-layers 2 --d-model 64 \
        --n-heads 4 --vocab 512 --prompts 2 --min-len 8 --max-len 12 --num-beams 4 --max-new-tokens 4   # CPU smoke

What evaluate.py's next-item task does per batch (evaluation/generate.py `generate`: 10 beams, 10 returned, the
prompts of a batch decoded as one (prompts x beams) call on the KV cache), on `--prompts` random prompts of
`--min-len`..`--max-len` tokens (Amazon Beauty's prompts are about 150-400 tokens), sorted by length and cut into
batches of `--batch-size` prompts. The weights are MPT's random init in `--dtype`: the speed of a decode step does
not depend on the values, only on the shapes (with random weights EOS is rarely drawn, so every beam runs the whole
`--max-new-tokens`, the most expensive case).

Validated before anything is timed, on the first batch:
- determinism: a second run gives the same tokens and scores for every returned sequence;
- the cache: every returned sequence of the first prompt is scored again by one plain forward over prompt + tokens
  (no cache, no beams); its log-prob must match the search's `Generation.logprob` within `--tolerance` nats per
  generated token (bf16 rounding of two different computation orders gives ~0.01-0.05; a wrong cache, mask or beam
  reordering gives several nats per token, the gap between the chosen token and a random one).
Timing: the whole prompt set `--repeats` times after the validation (which doubles as the warm-up: Triton's
autotuning and compilation); the median counts. prompts/s = prompts / that time. Peak memory:
torch.cuda.max_memory_allocated over the timed runs (weights included); the weights alone beside it.
"""
import argparse
import json
import math
import pathlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mpt-7b", help="configs/model/<name>.yaml giving the shape (default mpt-7b)")
    p.add_argument("--n-layers", type=int, default=None, help="override the model's layer count")
    p.add_argument("--d-model", type=int, default=None)
    p.add_argument("--n-heads", type=int, default=None)
    p.add_argument("--vocab", type=int, default=None)
    p.add_argument("--attn-impl", default="triton", help="the model's attn_impl (triton: our kernel; torch)")
    p.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    p.add_argument("--device", default="cuda")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--min-len", type=int, default=150)
    p.add_argument("--max-len", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")
    p.add_argument("--num-beams", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--eos", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--tolerance", type=float, default=0.25, help="re-scored log-prob, max |difference| per token")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, default=None, help="Markdown file; the .json is written beside it")
    args = p.parse_args(argv)
    if not 1 <= args.min_len <= args.max_len:
        p.error(f"need 1 <= --min-len ({args.min_len}) <= --max-len ({args.max_len})")
    return args


def build(args):
    import dataclasses

    from model.config import MPTConfig
    from model.mpt import build_model

    config = MPTConfig.from_name(args.model)
    changes = {k: v for k, v in (("n_layers", args.n_layers), ("d_model", args.d_model), ("n_heads", args.n_heads),
                                 ("vocab_size", args.vocab)) if v is not None}
    config = dataclasses.replace(config, attn_impl=args.attn_impl, **changes)
    model = build_model(config, device=args.device, dtype=DTYPES[args.dtype], seed=args.seed).eval()
    return config, model


def random_prompts(args, vocab: int) -> list:
    g = torch.Generator().manual_seed(args.seed + 1)
    lengths = torch.randint(args.min_len, args.max_len + 1, (args.prompts,), generator=g).tolist()
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lengths]


def batches(prompts: list, batch_size: int) -> list:
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    return [[prompts[i] for i in order[j:j + batch_size]] for j in range(0, len(order), batch_size)]


@torch.no_grad()
def rescore(model, prompt: list, tokens: list, device) -> float:
    """Sum of log-probs of `tokens` after `prompt` from one plain forward (no cache)."""
    ids = torch.tensor([prompt + tokens], device=device)
    logits = model(ids)[0, len(prompt) - 1:len(prompt) - 1 + len(tokens)].float()  # (n, V)
    return float(F.log_softmax(logits, -1).gather(1, torch.tensor(tokens, device=device)[:, None]).sum())


def validate(model, batch: list, cfg, device, tolerance: float) -> dict:
    """Determinism and the re-scoring check on one batch (module docstring); raises SystemExit when either fails."""
    from evaluation.generate import generate

    first, second = generate(model, batch, cfg), generate(model, batch, cfg)
    flat = [(g.tokens, g.score) for per in first for g in per]
    if flat != [(g.tokens, g.score) for per in second for g in per]:
        raise SystemExit("validation failed: two runs of the same batch returned different sequences or scores")
    worst = 0.0
    for g in first[0]:
        ref = rescore(model, batch[0], g.tokens, device)
        worst = max(worst, abs(ref - g.logprob) / len(g.tokens))
    if not worst <= tolerance:
        raise SystemExit(f"validation failed: the search's log-probs differ from a plain forward's by {worst:.3g} "
                         f"nats per token (> {tolerance}): the KV cache, the mask or the beam reordering is wrong")
    return {"identical_reruns": True, "rescore_max_diff_per_token": worst, "returned": len(flat)}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    from output.provenance import cpu_name

    return f"cpu ({cpu_name()})"


def markdown(r: dict) -> str:
    head = (f"Device: {r['device']}; torch {r['torch']}; model {r['model']} with random weights, {r['params']:,} "
            f"parameters, {r['dtype']}, attn_impl {r['attn_impl']}")
    table = ("| model | prompts (tokens) | batch | beams / returned | new tokens | prompts/s | s / batch | peak GiB "
             "| weights GiB | checks |\n|---|---|---:|---|---:|---:|---:|---:|---:|---|\n"
             f"| L{r['n_layers']} d{r['d_model']} H{r['n_heads']} V{r['vocab']} | {r['prompts']} "
             f"({r['min_len']}-{r['max_len']}) | {r['batch_size']} | {r['num_beams']} / {r['num_beams']} "
             f"| <= {r['max_new_tokens']} | {r['prompts_per_s']:.2f} | {r['seconds_per_batch']:.3f} "
             f"| {r['peak_gib']:.1f} | {r['weights_gib']:.1f} | reruns identical; re-scored log-probs within "
             f"{r['rescore_max_diff_per_token']:.3f} nats/token |")
    return f"{head}\n\n{table}\n"


def main(argv=None):
    args = parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("evaluation.bench_beams needs a CUDA GPU for --device cuda (none found); on the CPU pass --device cpu "
                 "--dtype float32 --attn-impl torch and a small shape (see --help)")
    from evaluation.generate import GenerationConfig, generate

    t0 = time.perf_counter()
    config, model = build(args)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"model {args.model}: {config.num_params():,} parameters, {config.n_layers} layers, {args.dtype}, "
          f"attn_impl {config.attn_impl}, on {device_name(args.device)}; built in {time.perf_counter() - t0:.1f}s",
          flush=True)
    prompts = random_prompts(args, config.vocab_size)
    groups = batches(prompts, args.batch_size)
    K = args.num_beams
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, num_beams=K, num_return_sequences=K,
                           eos_token_id=args.eos, pad_token_id=0)

    t0 = time.perf_counter()
    checks = validate(model, groups[0], cfg, args.device, args.tolerance)
    print(f"validated in {time.perf_counter() - t0:.1f}s: two runs identical, re-scored log-probs within "
          f"{checks['rescore_max_diff_per_token']:.3g} nats/token", flush=True)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        sync()
        t = time.perf_counter()
        for group in groups:
            generate(model, group, cfg)
        sync()
        times.append(time.perf_counter() - t)
    seconds = statistics.median(times)
    result = {
        "device": device_name(args.device), "torch": torch.__version__, "model": args.model,
        "params": config.num_params(), "n_layers": config.n_layers, "d_model": config.d_model,
        "n_heads": config.n_heads, "vocab": config.vocab_size, "dtype": args.dtype, "attn_impl": config.attn_impl,
        "prompts": args.prompts, "min_len": args.min_len, "max_len": args.max_len, "batch_size": args.batch_size,
        "num_beams": K, "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "seconds": seconds,
        "prompts_per_s": args.prompts / seconds, "seconds_per_batch": seconds / len(groups),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else math.nan, "weights_gib": weights / 2**30,
        **checks,
    }
    text = markdown(result)
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return result


if __name__ == "__main__":
    main()
