"""Attention benchmark: our Triton flash attention with ALiBi against PyTorch and FlashAttention-2.

    python -m attention.benchmark                          # batch x 16 heads x seq x 128, bf16, causal
    python -m attention.benchmark --seqs 2048 --heads 32   # MPT-7B's attention shape

For each sequence length (512 ... 8192, batch = tokens // seq so every row does the same number of
tokens, FlashAttention's benchmark convention) it runs, in one process on one GPU:
- `sdpa+bias`: torch's scaled_dot_product_attention given the materialised fp32 ALiBi bias + causal
  mask cast to bf16, i.e. `attention_reference(..., sdpa=True)` (bias construction included, as the
  model pays for it);
- `reference`: the explicit PyTorch math of `attention_reference` (fp32 scores and softmax);
- `triton`: `attention.flash_alibi.flash_attn_alibi` (bias computed in registers);
- `fa2`: `flash_attn.flash_attn_func(..., causal=True, alibi_slopes=...)`, when flash_attn is importable
  (it takes (B, S, H, D) tensors; they are prepared outside the timed region).

Every implementation's output is first validated against the reference (fp32 math on the upcast bf16
inputs, on the first batch row and first 4 heads to bound memory): its max error must be at most 2x that
of the reference run in bf16, plus 1e-3. An implementation that fails is reported, not timed.

FLOPs (FlashAttention-2's convention, ../shared/spec/performance.md section 4), counting only the
unmasked work: f = 4 * B * H * S^2 * D, halved for causal attention (the exact number of visible
query/key pairs, S(S+1)/2, is within 1/S of S^2/2); forward = f, backward = 2.5 f, forward+backward
= 3.5 f. TFLOP/s = that count / measured time. Times are means from `triton.testing.do_bench` (which
flushes L2 between repetitions). Peak memory is torch.cuda.max_memory_allocated during one
forward+backward, minus what was allocated before it (q, k, v, dO): the attention's own working memory.
An implementation that runs out of memory prints "OOM" for that size.
"""
import argparse
import sys

import torch

from attention.reference import attention_reference
from model.mpt import alibi_slopes as mpt_slopes

IMPLS = ("sdpa+bias", "reference", "triton", "fa2")


def make_impl(name, slopes, causal):
    """name -> fn(q, k, v) on (B, H, S, D) tensors, or None when unavailable. FA2 gets (B, S, H, D)."""
    if name == "sdpa+bias":
        return lambda q, k, v: attention_reference(q, k, v, slopes, causal=causal, sdpa=True)
    if name == "reference":
        return lambda q, k, v: attention_reference(q, k, v, slopes, causal=causal)
    if name == "triton":
        from attention.flash_alibi import flash_attn_alibi

        return lambda q, k, v: flash_attn_alibi(q, k, v, slopes, causal=causal)
    if name == "fa2":
        try:
            from flash_attn import flash_attn_func
        except ImportError:
            return None
        return lambda q, k, v: flash_attn_func(q, k, v, causal=causal, alibi_slopes=slopes)
    raise ValueError(name)


def validate(name, fn, q, k, v, slopes, causal, n_check_heads=4):
    """Max error of fn's output on (batch 0, first heads) vs fp32 reference, and the bf16 reference's error."""
    h = min(n_check_heads, q.shape[1])
    with torch.no_grad():
        args = (q, k, v) if name != "fa2" else tuple(t.transpose(1, 2) for t in (q, k, v))
        out = fn(*args)
        if name == "fa2":
            out = out.transpose(1, 2)
        out = out[:1, :h].float()
        sub = [t[:1, :h] for t in (q, k, v)]
        exact = attention_reference(*(t.float() for t in sub), slopes[:h], causal=causal)
        low = attention_reference(*sub, slopes[:h], causal=causal).float()
    err, ref_err = (out - exact).abs().max().item(), (low - exact).abs().max().item()
    return err, ref_err, err <= 2 * ref_err + 1e-3


def measure(name, fn, q, k, v, do, warmup, rep):
    """(fwd ms, bwd ms, fwd+bwd ms, peak MiB) for one implementation; raises OutOfMemoryError."""
    from triton.testing import do_bench

    if name == "fa2":  # FA2's native layout, made outside the timed region
        q, k, v, do = (t.transpose(1, 2).contiguous() for t in (q, k, v, do))
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    grads = [q, k, v]

    def fwd():
        with torch.no_grad():
            return fn(q, k, v)

    def fwd_bwd():
        fn(q, k, v).backward(do)

    fwd_ms = do_bench(fwd, warmup=warmup, rep=rep)
    out = fn(q, k, v)
    bwd_ms = do_bench(lambda: out.backward(do, retain_graph=True), warmup=warmup, rep=rep, grad_to_none=grads)
    del out
    fwd_bwd_ms = do_bench(fwd_bwd, warmup=warmup, rep=rep, grad_to_none=grads)

    for t in grads:
        t.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fwd_bwd()
    torch.cuda.synchronize()
    peak_mib = (torch.cuda.max_memory_allocated() - before) / 2**20
    return fwd_ms, bwd_ms, fwd_bwd_ms, peak_mib


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--tokens", type=int, default=16384, help="batch = tokens // seq (default 16k)")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--non-causal", action="store_true", help="full attention instead of causal")
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--warmup", type=int, default=25, help="do_bench warmup, ms")
    parser.add_argument("--rep", type=int, default=100, help="do_bench repetition time, ms")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        sys.exit("attention.benchmark needs a CUDA GPU (none found); the kernel's CPU tests are in "
                 "tests/test_kernels.py (pytest, under TRITON_INTERPRET=1).")
    import triton

    causal = not args.non_causal
    dtype, device = torch.bfloat16, "cuda"
    H, D = args.heads, args.head_dim
    slopes = mpt_slopes(H).to(device)
    impls = {name: make_impl(name, slopes, causal) for name in args.impls}

    print(f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}; "
          f"bf16, {'causal' if causal else 'non-causal'}, heads {H}, head dim {D}, batch = {args.tokens} // seq")
    print(f"FLOPs: fwd = 4*B*H*S^2*D{' / 2' if causal else ''}, bwd = 2.5 x fwd, fwd+bwd = 3.5 x fwd; "
          "peak = extra memory of one fwd+bwd beyond q, k, v, dO")
    for name, fn in impls.items():
        if fn is None:
            print(f"({name}: not available, flash_attn is not importable)")
    print()
    print("| seq | batch | impl | fwd ms | fwd TFLOP/s | bwd ms | bwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | peak MiB |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    results = {}
    for seq in args.seqs:
        B = max(1, args.tokens // seq)
        g = torch.Generator(device=device).manual_seed(seq)
        q, k, v, do = (torch.randn(B, H, seq, D, device=device, dtype=dtype, generator=g) for _ in range(4))
        fwd_flops = 4 * B * H * seq * seq * D / (2 if causal else 1)
        for name, fn in impls.items():
            if fn is None:
                continue
            row = f"| {seq} | {B} | {name} |"
            try:
                err, ref_err, ok = validate(name, fn, q, k, v, slopes, causal)
                if not ok:
                    print(f"{row} WRONG: max error {err:.3g} > 2 x bf16 reference error {ref_err:.3g} + 1e-3 "
                          "| | | | | | |")
                    continue
                fwd_ms, bwd_ms, fb_ms, peak = measure(name, fn, q, k, v, do, args.warmup, args.rep)
            except torch.cuda.OutOfMemoryError:
                print(f"{row} OOM | | | | | | |")
                torch.cuda.empty_cache()
                continue
            results[seq, name] = (fwd_flops / fwd_ms / 1e9, 2.5 * fwd_flops / bwd_ms / 1e9,
                                  3.5 * fwd_flops / fb_ms / 1e9)
            tf = results[seq, name]
            print(f"{row} {fwd_ms:.3f} | {tf[0]:.1f} | {bwd_ms:.3f} | {tf[1]:.1f} | {fb_ms:.3f} | {tf[2]:.1f} "
                  f"| {peak:.0f} |", flush=True)
            torch.cuda.empty_cache()
        del q, k, v, do

    for base in ("sdpa+bias", "fa2"):
        seqs = [s for s in args.seqs if (s, "triton") in results and (s, base) in results]
        if not seqs:
            continue
        print(f"\nRatio triton / {base} (TFLOP/s; > 1 means triton is faster)\n")
        print("| seq | fwd | bwd | fwd+bwd |")
        print("|---:|---:|---:|---:|")
        for s in seqs:
            t, b = results[s, "triton"], results[s, base]
            print(f"| {s} | {t[0] / b[0]:.2f} | {t[1] / b[1]:.2f} | {t[2] / b[2]:.2f} |")


if __name__ == "__main__":
    main()
