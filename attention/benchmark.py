"""Attention benchmark: our Triton flash attention with ALiBi against FlexAttention, PyTorch and FlashAttention-2.

    python -m attention.benchmark                          # batch x 16 heads x seq x 128, bf16, causal
    python -m attention.benchmark --seqs 2048 --heads 32   # MPT-7B's attention shape
    python -m attention.benchmark --out out/attention.md   # also writes the table (.md) and the numbers (.json)

For each sequence length (512 ... 8192, batch = tokens // seq so every row does the same number of
tokens, FlashAttention's benchmark convention) it runs, in one process on one GPU:
- `sdpa+bias`: torch's scaled_dot_product_attention given the materialised fp32 ALiBi bias + causal
  mask cast to bf16, i.e. `attention_reference(..., sdpa=True)` (bias construction included, as the
  model pays for it);
- `reference`: the explicit PyTorch math of `attention_reference` (fp32 scores and softmax);
- `triton`: `attention.flash_alibi.flash_attn_alibi` (bias computed in registers);
- `flex`: `attention.flex.flex_attn_alibi` (torch's FlexAttention with the ALiBi score_mod; same signature as
  the Triton kernel), when that module imports; its compilation happens in the validation call, before timing,
  and its FlexBias (score_mod + BlockMask) is built once per shape outside the timed calls, as the model builds
  one per forward for all its layers;
- `fa2`: `flash_attn.flash_attn_func(..., causal=True, alibi_slopes=...)`, when flash_attn is importable
  (it takes (B, S, H, D) tensors; they are prepared outside the timed region).
An implementation that cannot be imported is listed as unavailable, with the reason, and skipped.

Every implementation's output is first validated against the reference (fp32 math on the upcast bf16
inputs, on the first batch row and first 4 heads to bound memory): its max error must be at most 2x that
of the reference run in bf16, plus 1e-3. An implementation that fails is reported, not timed.

FLOPs (FlashAttention-2's convention, ../shared/spec/performance.md section 4), counting only the
unmasked work: f = 4 * B * H * S^2 * D, halved for causal attention (the exact number of visible
query/key pairs, S(S+1)/2, is within 1/S of S^2/2); forward = f, backward = 2.5 f, forward+backward
= 3.5 f. TFLOP/s = that count / measured time. Times are means from `triton.testing.do_bench` (which
flushes L2 between repetitions). Peak memory is torch.cuda.max_memory_allocated during one
forward+backward, minus what was allocated before it (q, k, v, dO): the attention's own working memory.
An implementation that runs out of memory prints "OOM" for that size; one that raises anything else prints
"ERROR: " and the exception, and the others go on.

`--out FILE.md` writes the same Markdown (GPU name, versions and shape in its header) to FILE.md and the
numbers to FILE.json ({"meta": ..., "rows": [...]}); both are rewritten after every row, so a run that is
stopped part way leaves the rows it finished.
"""
import argparse
import json
import pathlib
import sys

import torch

from attention.reference import attention_reference
from model.mpt import alibi_slopes as mpt_slopes

IMPLS = ("sdpa+bias", "reference", "triton", "flex", "fa2")
RATIO_BASES = ("sdpa+bias", "flex", "fa2")  # triton / each of these
HEADER = ("| seq | batch | impl | fwd ms | fwd TFLOP/s | bwd ms | bwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s "
          "| peak MiB |\n|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")


def make_impl(name, slopes, causal):
    """name -> (fn(q, k, v) on (B, H, S, D) tensors, None), or (None, why) when unavailable. FA2 gets (B, S, H, D)."""
    if name == "sdpa+bias":
        return (lambda q, k, v: attention_reference(q, k, v, slopes, causal=causal, sdpa=True)), None
    if name == "reference":
        return (lambda q, k, v: attention_reference(q, k, v, slopes, causal=causal)), None
    if name == "triton":
        from attention.flash_alibi import flash_attn_alibi

        return (lambda q, k, v: flash_attn_alibi(q, k, v, slopes, causal=causal)), None
    if name == "flex":
        try:
            from attention.flex import flex_attn_alibi, flex_bias
        except ImportError as e:  # the module, or torch's flex_attention, is missing
            return None, f"attention.flex is not importable ({type(e).__name__}: {e})"
        biases = {}  # (Sq, Sk) -> FlexBias, built once per shape: the model builds one per forward for all layers

        def flex(q, k, v):
            shape = (q.shape[2], k.shape[2])
            if shape not in biases:
                biases[shape] = flex_bias(slopes, *shape, causal=causal, device=q.device)
            return flex_attn_alibi(q, k, v, bias=biases[shape])

        return flex, None
    if name == "fa2":
        try:
            from flash_attn import flash_attn_func
        except ImportError as e:
            return None, f"flash_attn is not importable ({type(e).__name__}: {e})"
        return (lambda q, k, v: flash_attn_func(q, k, v, causal=causal, alibi_slopes=slopes)), None
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


# ---------------------------------------------------------------------------------------------------------
# the tables: one row dict per (seq, impl); the printed lines and --out's files come from the same functions


def format_row(r: dict) -> str:
    """One Markdown row: timed ("ok"), or "WRONG" (failed validation) / "OOM" with empty time columns."""
    head = f"| {r['seq']} | {r['batch']} | {r['impl']} |"
    if r["status"] == "WRONG":
        return (f"{head} WRONG: max error {r['max_err']:.3g} > 2 x bf16 reference error {r['ref_err']:.3g} + 1e-3 "
                "| | | | | | |")
    if r["status"] != "ok":
        return f"{head} {r['status']} | | | | | | |"
    return (f"{head} {r['fwd_ms']:.3f} | {r['fwd_tflops']:.1f} | {r['bwd_ms']:.3f} | {r['bwd_tflops']:.1f} "
            f"| {r['fwd_bwd_ms']:.3f} | {r['fwd_bwd_tflops']:.1f} | {r['peak_mib']:.0f} |")


def header_lines(meta: dict) -> list:
    return [
        f"GPU: {meta['gpu']}; torch {meta['torch']}, triton {meta['triton']}; bf16, "
        f"{'causal' if meta['causal'] else 'non-causal'}, heads {meta['heads']}, head dim {meta['head_dim']}, "
        f"batch = {meta['tokens']} // seq",
        f"FLOPs: fwd = 4*B*H*S^2*D{' / 2' if meta['causal'] else ''}, bwd = 2.5 x fwd, fwd+bwd = 3.5 x fwd; "
        "peak = extra memory of one fwd+bwd beyond q, k, v, dO",
        *[f"({name}: not available, {why})" for name, why in meta.get("unavailable", {}).items()],
    ]


def ratio_tables(rows: list) -> list:
    """Markdown blocks of triton / base TFLOP/s per seq, for each base with timed rows beside triton's."""
    ok = {(r["seq"], r["impl"]): r for r in rows if r["status"] == "ok"}
    seqs = list(dict.fromkeys(r["seq"] for r in rows))
    blocks = []
    for base in RATIO_BASES:
        common = [s for s in seqs if (s, "triton") in ok and (s, base) in ok]
        if not common:
            continue
        lines = [f"Ratio triton / {base} (TFLOP/s; > 1 means triton is faster)", "", "| seq | fwd | bwd | fwd+bwd |",
                 "|---:|---:|---:|---:|"]
        for s in common:
            t, b = ok[s, "triton"], ok[s, base]
            lines.append(f"| {s} | " + " | ".join(f"{t[k] / b[k]:.2f}" for k in ("fwd_tflops", "bwd_tflops",
                                                                                  "fwd_bwd_tflops")) + " |")
        blocks.append("\n".join(lines))
    return blocks


def markdown(meta: dict, rows: list) -> str:
    """The whole report: header, one row per (seq, impl), then the ratio tables."""
    parts = ["\n".join(header_lines(meta)), "\n".join([HEADER, *(format_row(r) for r in rows)]), *ratio_tables(rows)]
    return "\n\n".join(parts) + "\n"


def write_results(path, meta: dict, rows: list) -> None:
    """FILE.md (the Markdown report) and FILE.json (the same numbers) beside it."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(meta, rows))
    path.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--tokens", type=int, default=16384, help="batch = tokens // seq (default 16k)")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--non-causal", action="store_true", help="full attention instead of causal")
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--warmup", type=int, default=25, help="do_bench warmup, ms")
    parser.add_argument("--rep", type=int, default=100, help="do_bench repetition time, ms")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="write the Markdown table to this file and the numbers to the same name with .json")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.suffix == ".json":
        parser.error("--out names the Markdown file (e.g. out/attention.md); the .json is written beside it")
    return args


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("attention.benchmark needs a CUDA GPU (none found); the kernel's CPU tests are in "
                 "tests/test_kernels.py (pytest, under TRITON_INTERPRET=1).")
    import triton

    causal = not args.non_causal
    dtype, device = torch.bfloat16, "cuda"
    H, D = args.heads, args.head_dim
    slopes = mpt_slopes(H).to(device)
    impls, unavailable = {}, {}
    for name in args.impls:
        fn, why = make_impl(name, slopes, causal)
        if fn is None:
            unavailable[name] = why
        else:
            impls[name] = fn
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "causal": causal, "heads": H, "head_dim": D, "tokens": args.tokens, "unavailable": unavailable}

    print("\n".join(header_lines(meta)))
    print()
    print(HEADER)
    rows = []
    for seq in args.seqs:
        B = max(1, args.tokens // seq)
        g = torch.Generator(device=device).manual_seed(seq)
        q, k, v, do = (torch.randn(B, H, seq, D, device=device, dtype=dtype, generator=g) for _ in range(4))
        fwd_flops = 4 * B * H * seq * seq * D / (2 if causal else 1)
        for name, fn in impls.items():
            row = {"seq": seq, "batch": B, "impl": name}
            try:
                err, ref_err, ok = validate(name, fn, q, k, v, slopes, causal)
                row.update(max_err=err, ref_err=ref_err)
                if not ok:
                    row["status"] = "WRONG"
                else:
                    fwd_ms, bwd_ms, fb_ms, peak = measure(name, fn, q, k, v, do, args.warmup, args.rep)
                    row.update(status="ok", fwd_ms=fwd_ms, bwd_ms=bwd_ms, fwd_bwd_ms=fb_ms, peak_mib=peak,
                               fwd_tflops=fwd_flops / fwd_ms / 1e9, bwd_tflops=2.5 * fwd_flops / bwd_ms / 1e9,
                               fwd_bwd_tflops=3.5 * fwd_flops / fb_ms / 1e9)
            except torch.cuda.OutOfMemoryError:
                row["status"] = "OOM"
            except Exception as e:  # noqa: BLE001  (one implementation's crash, e.g. a compile error, is its row)
                row["status"] = "ERROR: " + f"{type(e).__name__}: {e}".replace("|", "/").replace("\n", " ")[:200]
            rows.append(row)
            print(format_row(row), flush=True)
            if args.out is not None:
                write_results(args.out, meta, rows)
            torch.cuda.empty_cache()
        del q, k, v, do

    for block in ratio_tables(rows):
        print(f"\n{block}")
    if args.out is not None:
        write_results(args.out, meta, rows)
        print(f"\nwrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
