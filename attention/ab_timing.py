"""A/B timings for the choices in attention/flash_alibi.py that were made without a GPU (issue 15):

    python -m attention.ab_timing                             # one GPU, bf16, 32 heads x 128: a few minutes
    python -m attention.ab_timing --seqs 2048 --out out/ab.md # also writes the table
    TRITON_INTERPRET=1 python -m attention.ab_timing --smoke  # CPU: every case once at a tiny shape, no timing

1. ALiBi form: `COLUMN_ALIBI` True (slope * (j - origin) per key) against False (the distance tile), causal
   forward and forward+backward at batch x 32 heads x seq x 128, bf16 (FlashAttention's 16k-token batches).
2. Autotune pruning: the best time of the pruned sets (`_prune`, `_prune_fwd`) against the best of every
   configuration of the dtype (pruning may only save tuning time; it must not lose the fastest config).
3. Decoding (Sq = 1, 10 beams, cache 2048): per-call time through the custom op (`flash_attn_alibi`), the
   autograd.Function it replaced and the bare launch (`_forward`), under no_grad; and how many forward autotune
   entries decoding against caches of 100, 1000 and 3000 keys creates (expected: one).
4. dK/dV layout: `TRANSPOSED_DKDV` True ((key, query) tiles, no computed tile transposed) against False (the
   forward's layout, P and dS transposed), causal forward+backward at section 1's shapes; the layout is in the
   dK/dV kernel's autotune key, so each arm tunes its own configuration.
Times are means from triton.testing.do_bench (ms).
"""
import argparse
import pathlib
import time

import torch

import attention.flash_alibi as fa
from model.mpt import alibi_slopes


def bench(fn, smoke):
    if smoke:
        fn()
        return float("nan")
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100)


def inputs(B, H, Sq, Sk, D, dtype, device, grad=True):
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(B, H, s, D, generator=g).to(device, dtype).requires_grad_(grad) for s in (Sq, Sk, Sk))
    return q, k, v, torch.randn(B, H, Sq, D, generator=g).to(device, dtype)


def fwd_bwd(q, k, v, do, slopes):
    def run():
        out = fa.flash_attn_alibi(q, k, v, slopes)
        torch.autograd.grad(out, (q, k, v), do)
    return run


def flag_ab(flag, seqs, H, D, dtype, device, slopes, smoke, modes):
    """For each seq: (seq, batch, {(value, mode): ms}) with the module switch fa.<flag> True then False (left True);
    mode "fwd" times the forward under no_grad, "both" forward+backward. Causal, 16k-token batches."""
    for S in seqs:
        B = max(1, 16384 // S) if not smoke else 1
        q, k, v, do = inputs(B, H, S, S, D, dtype, device)
        row = {}
        for value in (True, False):
            setattr(fa, flag, value)
            if "fwd" in modes:
                with torch.no_grad():
                    row[value, "fwd"] = bench(lambda: fa.flash_attn_alibi(q, k, v, slopes), smoke)
            if "both" in modes:
                row[value, "both"] = bench(fwd_bwd(q, k, v, do, slopes), smoke)
        setattr(fa, flag, True)
        yield S, B, row


def best_time(kernel):
    """The tuned kernel's best timing in ms (nan when its key had a single config, so nothing was timed)."""
    timings = getattr(kernel, "configs_timings", None) or {}
    return min((t[0] if isinstance(t, (list, tuple)) else t for t in timings.values()), default=float("nan"))


def retune(kernels, prune):
    for kernel, fn in zip(kernels, prune):
        kernel.cache.clear()
        kernel.configs_timings = {}  # stale timings would be reported for a key that now has one config
        kernel.early_config_prune = fn


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqs", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--smoke", action="store_true", help="tiny shapes, one call per case, no timing (CPU check)")
    p.add_argument("--out", type=pathlib.Path, default=None)
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if args.smoke else torch.bfloat16  # the interpreter cannot do bf16
    H, D = (2, 16) if args.smoke else (args.heads, 128)
    seqs = [40] if args.smoke else args.seqs
    slopes = alibi_slopes(H).to(device)
    lines = [f"# flash_alibi A/B ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU smoke'}), "
             f"{H} heads x {D}, {dtype}", ""]

    lines += ["## 1. ALiBi form (ms)", "",
              "| seq | batch | column fwd | distance fwd | column fwd+bwd | distance fwd+bwd |",
              "|---:|---:|---:|---:|---:|---:|"]
    for S, B, row in flag_ab("COLUMN_ALIBI", seqs, H, D, dtype, device, slopes, args.smoke, ("fwd", "both")):
        lines.append(f"| {S} | {B} | {row[True, 'fwd']:.3f} | {row[False, 'fwd']:.3f} | {row[True, 'both']:.3f} "
                     f"| {row[False, 'both']:.3f} |")

    lines += ["", "## 2. Pruned vs full autotune sets (best config, ms)", ""]
    kernels = (fa._attn_fwd, fa._attn_bwd_kv, fa._attn_bwd_q)
    if args.smoke or not hasattr(fa._attn_fwd, "early_config_prune"):
        lines.append("(skipped: one interpreter config)")
    else:
        def dtype_only(configs, named_args, **kwargs):  # the launch's whole family, unpruned
            return fa._config_family(configs, named_args)
        pruned = tuple(k.early_config_prune for k in kernels)
        for S in seqs:
            B = max(1, 16384 // S)
            q, k, v, do = inputs(B, H, S, S, D, dtype, device)
            for name, prune in (("pruned", pruned), ("full", (dtype_only,) * 3)):
                retune(kernels, prune)
                fwd_bwd(q, k, v, do, slopes)()  # tunes all three kernels
                best = "; ".join(f"{kern.base_fn.__name__}: {kern.best_config} ({best_time(kern):.3f})"
                                 for kern in kernels)
                lines.append(f"- seq {S}, {name}: fwd+bwd {bench(fwd_bwd(q, k, v, do, slopes), False):.3f} ms; {best}")
        retune(kernels, pruned)

    lines += ["", "## 3. Decoding, Sq = 1, 10 beams (ms per call, no_grad)", ""]
    before = {key for key in getattr(fa._attn_fwd, "cache", {}) if key[1] == 0}  # decode keys: K_BUCKET 0
    Sk = 40 if args.smoke else 2048
    q, k, v, _ = inputs(10, H, 1, Sk, D, dtype, device, grad=False)
    calls = {"custom op": lambda: fa.flash_attn_alibi(q, k, v, slopes),
             "autograd.Function": lambda: fa._FlashAttnALiBi.apply(q, k, v, slopes, True, None, None, None, None),
             "bare launch": lambda: fa._forward(q, k, v, slopes, True, None, None, None, None)}
    with torch.no_grad():
        for name, fn in calls.items():
            fn()
            if args.smoke:
                lines.append(f"- {name}: ran")
                continue
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(200):
                fn()
            torch.cuda.synchronize()
            lines.append(f"- {name}: {(time.perf_counter() - t) / 200 * 1e3:.4f} ms wall per call "
                         f"(do_bench: {bench(fn, False):.4f})")
        for Sk in (100, 1000, 3000) if not args.smoke else (20, 70):
            q, k, v, _ = inputs(10, H, 1, Sk, D, dtype, device, grad=False)
            fa.flash_attn_alibi(q, k, v, slopes)
        after = {key for key in getattr(fa._attn_fwd, "cache", {}) if key[1] == 0}
        lines.append(f"- forward autotune entries added by decoding at 4 cache lengths: {len(after - before)}")

    lines += ["", "## 4. dK/dV layout (ms)", "", "| seq | batch | transposed fwd+bwd | forward's layout fwd+bwd |",
              "|---:|---:|---:|---:|"]
    for S, B, row in flag_ab("TRANSPOSED_DKDV", seqs, H, D, dtype, device, slopes, args.smoke, ("both",)):
        lines.append(f"| {S} | {B} | {row[True, 'both']:.3f} | {row[False, 'both']:.3f} |")

    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
