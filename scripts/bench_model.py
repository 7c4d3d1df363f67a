"""Our MPT against transformers' MptForCausalLM, same weights, side by side on this machine.

    python scripts/bench_model.py                      # mpt-50m, batch 4 x 512 tokens, fp32, CPU
    python scripts/bench_model.py --batch 2 --seq 1024 --reps 5

For each implementation and mode (forward under no_grad; forward + backward of the LM loss) a fresh
subprocess builds the model, checks that both implementations give the same logits on the benchmark batch,
runs one warm-up and `--reps` timed repetitions, and reports the median tokens/s and the peak resident
memory the workload added (VmHWM after resetting it through /proc/self/clear_refs, minus the RSS before
the workload). The subprocesses alternate ours / reference, round after round, so drifting machine load
hits both alike. Prints a Markdown table with ours/reference ratios.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def build_pair(config_name, seed=0):
    """(ours, reference) holding identical random weights."""
    import torch
    import transformers

    from model.config import MPTConfig
    from model.mpt import build_model

    cfg = MPTConfig.from_name(config_name)
    if cfg.expansion_ratio != 4 or not cfg.no_bias or cfg.alibi_bias_max != 8:
        sys.exit(f"{config_name}: MptForCausalLM hard-codes expansion 4, no bias, alibi_bias_max 8")
    ours = build_model(cfg, seed=seed).eval()
    ref = transformers.MptForCausalLM(transformers.MptConfig(
        d_model=cfg.d_model, n_heads=cfg.n_heads, n_layers=cfg.n_layers, vocab_size=cfg.vocab_size,
        max_seq_len=cfg.max_seq_len, layer_norm_epsilon=cfg.norm_eps)).eval()
    missing = ref.load_state_dict({"transformer." + k: v for k, v in ours.state_dict().items()}, strict=False)
    assert set(missing.missing_keys) <= {"lm_head.weight"} and not missing.unexpected_keys, missing
    ref.tie_weights()
    return ours, ref, torch


def worker(args):
    ours, ref, torch = build_pair(args.config)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, ours.config.vocab_size, (args.batch, args.seq), generator=g)
    with torch.no_grad():  # validate before timing: same logits
        diff = (ours(ids[:1, :128]) - ref(ids[:1, :128]).logits).abs().max().item()
    if diff > 1e-4:
        sys.exit(f"implementations disagree: max |logit diff| {diff}")
    model = ours if args.impl == "ours" else ref
    del ours, ref

    def run():
        if args.mode == "forward":
            with torch.no_grad():
                out = model(ids)
                out = out if torch.is_tensor(out) else out.logits
        else:
            out = model(ids)
            out = out if torch.is_tensor(out) else out.logits
            loss = torch.nn.functional.cross_entropy(out[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
            del out
            loss.backward()
            model.zero_grad(set_to_none=True)

    run()  # warm-up
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM so the peak below is the workload's
    before = _rss_kib("VmRSS")
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": times, "peak_mib": (_rss_kib("VmHWM") - before) / 1024}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="mpt-50m")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="alternating subprocess rounds per measurement")
    p.add_argument("--worker", nargs=2, metavar=("IMPL", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.impl, args.mode = args.worker
        return worker(args)

    import platform

    import torch

    results = {}
    for _ in range(args.rounds):
        for mode in ("forward", "forward+backward"):
            for impl in ("ours", "reference"):
                cmd = [sys.executable, __file__, "--worker", impl, mode, "--config", args.config,
                       "--batch", str(args.batch), "--seq", str(args.seq), "--reps", str(args.reps)]
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if out.returncode != 0:
                    sys.exit(f"worker {impl} {mode} failed:\n{out.stderr[-3000:]}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                entry = results.setdefault((mode, impl), {"seconds": [], "peak_mib": []})
                entry["seconds"] += r["seconds"]
                entry["peak_mib"].append(r["peak_mib"])

    tokens = args.batch * args.seq
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"model {args.config}, batch {args.batch} x seq {args.seq} = {tokens} tokens, fp32, "
          f"{args.rounds} rounds x {args.reps} reps (median); {cpu}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| mode | ours tokens/s | MptForCausalLM tokens/s | speed ratio (ours/ref) | ours peak MiB | ref peak MiB |")
    print("|---|---|---|---|---|---|")
    for mode in ("forward", "forward+backward"):
        o, r = results[(mode, "ours")], results[(mode, "reference")]
        o_tps, r_tps = tokens / statistics.median(o["seconds"]), tokens / statistics.median(r["seconds"])
        print(f"| {mode} | {o_tps:,.0f} | {r_tps:,.0f} | {o_tps / r_tps:.2f}x | {max(o['peak_mib']):,.0f} | "
              f"{max(r['peak_mib']):,.0f} |")


if __name__ == "__main__":
    main()
