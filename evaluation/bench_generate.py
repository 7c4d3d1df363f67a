"""Our beam search against transformers' `generate` on the same tiny random MPT and prompts (CPU).

    python -m evaluation.bench_generate                       # tiny: d_model 64, 2 layers, vocab 512
    python -m evaluation.bench_generate --d-model 256 --n-layers 4 --vocab 4096

Both decode the same left-padded batch with num_beams=10, num_return_sequences=10, do_sample=False, EOS and
max_new_tokens; the outputs are checked to be identical (tokens, and scores within 1e-4) before any time
is reported. Times are the median of --repeats runs after one warm-up; prints a Markdown table row.
"""
import argparse
import statistics
import tempfile
import time

import torch

from output.provenance import cpu_name


def build_pair(d_model, n_layers, n_heads, vocab, seed=0):
    """A random transformers MptForCausalLM and our converted copy."""
    import pathlib

    import transformers

    from model.checkpoint import load_model
    from model.convert import convert_from_hf

    torch.manual_seed(seed)
    cfg = transformers.MptConfig(d_model=d_model, n_heads=n_heads, n_layers=n_layers, vocab_size=vocab, max_seq_len=512)
    hf = transformers.MptForCausalLM(cfg).eval()
    tmp = pathlib.Path(tempfile.mkdtemp())
    hf.save_pretrained(tmp / "hf")
    convert_from_hf(tmp / "hf", tmp / "ours")
    return hf, load_model(tmp / "ours").eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--min-len", type=int, default=20)
    p.add_argument("--max-len", type=int, default=60)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--num-beams", type=int, default=10)
    p.add_argument("--eos", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from evaluation.generate import GenerationConfig, generate, left_pad

    hf, ours = build_pair(args.d_model, args.n_layers, args.n_heads, args.vocab)
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(args.min_len, args.max_len + 1, (args.prompts,), generator=g).tolist()
    prompts = [torch.randint(1, args.vocab, (n,), generator=g).tolist() for n in lengths]
    K, pad = args.num_beams, 1
    ids, mask = left_pad(prompts, pad)
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, num_beams=K, num_return_sequences=K,
                           eos_token_id=args.eos, pad_token_id=pad)

    def run_hf():
        with torch.no_grad():
            return hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.max_new_tokens, do_sample=False,
                               num_beams=K, num_return_sequences=K, eos_token_id=args.eos, pad_token_id=pad,
                               output_scores=True, return_dict_in_generate=True)

    def run_ours():
        return generate(ours, prompts, cfg)

    # identical outputs first
    ref, out = run_hf(), run_ours()
    P = ids.shape[1]
    width = ref.sequences.shape[1] - P
    mine = torch.tensor([(o.tokens + [pad] * width)[:width] for per in out for o in per])
    same_tokens = torch.equal(mine, ref.sequences[:, P:])
    score_diff = (torch.tensor([o.score for per in out for o in per]) - ref.sequences_scores).abs().max().item()
    if not same_tokens or score_diff > 1e-4:
        raise SystemExit(f"outputs differ: tokens equal {same_tokens}, max score difference {score_diff:.2e}")

    def timed(fn):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    t_hf, t_ours = timed(run_hf), timed(run_ours)
    n = args.prompts
    print(f"machine: {cpu_name()}, torch.set_num_threads({args.threads}), torch {torch.__version__}")
    print("| model | prompts (tokens) | beams / returned | new tokens | transformers prompts/s | ours prompts/s "
          "| speed-up | identical outputs |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    print(f"| d{args.d_model} L{args.n_layers} H{args.n_heads} V{args.vocab} | {n} ({args.min_len}-{args.max_len}) "
          f"| {K} / {K} | <= {args.max_new_tokens} | {n / t_hf:.2f} | {n / t_ours:.2f} | {t_hf / t_ours:.2f}x "
          f"| yes (max score diff {score_diff:.1e}) |")


if __name__ == "__main__":
    main()
