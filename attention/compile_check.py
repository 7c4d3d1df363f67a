"""Ahead-of-time compile check of the Triton flash-attention kernels, for GPUs this machine does not have.

    python -m attention.compile_check                            # sm_80 and sm_90, bf16, head dim 128, every case
    python -m attention.compile_check --targets 90 --cases train --configs first        # one config per family
    python -m attention.compile_check --dtypes bf16 fp16 fp32 --head-dims 64 128 --out out/cc.md --json out/cc.json

Why: CI and most sessions have no GPU, and the CPU tests run the kernels under Triton's interpreter, which accepts
code the compiler rejects and says nothing of registers, spills or shared memory. This compiles every configuration
the autotuner could pick, for each target, through Triton's own pipeline down to ptxas (shipped in the triton
wheel): no GPU and no driver needed.

How: each case calls the kernel's own launch code (`flash_alibi._forward` / `_backward`) on CPU tensors laid out as
the model lays them out (q, k, v as views of the fused QKV projection; decoding's keys as a slice of the KV cache's
buffer), with the four kernels swapped for recorders, so nothing runs. Each recorded launch is then specialised by
Triton's own binder for the target, as `JITFunction.run` would at that launch (dtypes, 16-byte alignment,
divisibility by 16, integers equal to 1 made constants), and compiled once per configuration of its family
(`flash_alibi._config_family`). The binder and `_pack_args` are Triton internals: checked with triton 3.6 (the
device image's) and 3.9 (requirements.txt's).

Cases (the model's uses of the kernel, batch 2 x --heads heads):
  train    causal, ALiBi in its column form, 2,048 positions (a packed row): the forward and the backward's kernels
  padded   causal + key-padding mask, 1,999 positions (a left-padded batch: evaluation's prefill, padded fine-tuning):
           fwd + bwd
  decode   one query against the first 1,999 positions of a 2,048-position KV cache, with the padding mask: the
           forward's decode tiles
  infill   causal + explicit ALiBi positions + a bidirectional prefix, 1,999 positions (blank infilling): fwd + bwd
The lengths differ on purpose: the JIT compiles an integer divisible by 16 apart from one that is not.

Reported per configuration and target: registers per thread, spill stores and loads (ptxas -v), dynamic shared
memory against the target's per-block limit (a configuration over it is skipped by the autotuner at run time: not an
error), and whether `_prune` keeps it on that target. Exit status 1 when a configuration fails to compile.
"""
import argparse
import contextlib
import dataclasses
import io
import json
import os
import pathlib
import re
import sys
import time
import warnings

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature  # the binder JITFunction.run uses: Triton internal

import attention.flash_alibi as fa

# (name, max dynamic shared memory per block in bytes with the opt-in, as the autotuner meets it)
TARGETS = {80: ("sm_80 (A100)", 163 * 1024), 86: ("sm_86 (A10, RTX 30)", 99 * 1024),
           89: ("sm_89 (L4, L40, RTX 40)", 99 * 1024), 90: ("sm_90 (H100, H200)", 227 * 1024)}
# keys per case: 2,048 and a length not divisible by 16, which the JIT compiles as another variant
CASES = {"train": 2048, "padded": 1999, "decode": 1999, "infill": 1999}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
KERNELS = ("_attn_fwd", "_bwd_preprocess", "_attn_bwd_kv", "_attn_bwd_q")


@dataclasses.dataclass
class Launch:
    """One kernel launch as `_forward` / `_backward` made it, recorded instead of run."""
    case: str
    kernel: str
    launcher: object  # the module's kernel: a triton Autotuner, or a plain JITFunction (_bwd_preprocess)
    args: tuple
    kwargs: dict

    @property
    def jit(self):
        return self.launcher.fn if hasattr(self.launcher, "configs") else self.launcher  # an Autotuner wraps it

    def configs(self, which: str):
        """The configurations to compile: the launch's family (all, or its first); [None] without an autotuner."""
        if not hasattr(self.launcher, "configs"):
            return [None]
        family = fa._config_family(self.launcher.configs, self.named_args())
        return family if which == "all" else family[:1]

    def named_args(self) -> dict:
        return {**dict(zip(self.jit.arg_names, self.args)), **self.kwargs}


class _Recorder:
    def __init__(self, name, launcher, case, launches):
        self.name, self.launcher, self.case, self.launches = name, launcher, case, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(Launch(self.case, self.name, self.launcher, args, kwargs))
        return launch


def case_inputs(case: str, dtype: torch.dtype, head_dim: int, heads: int) -> dict:
    """`_forward`'s arguments for one case, laid out as the model lays them out (model/mpt.py)."""
    B, S, H, D = 2, CASES[case], heads, head_dim
    q_len = 1 if case == "decode" else S
    qkv = torch.empty(B, q_len, 3 * H * D, dtype=dtype)  # the fused Wqkv output; its values never matter
    q, k, v = (t.view(B, q_len, H, D).transpose(1, 2) for t in qkv.chunk(3, dim=-1))  # (B, H, q_len, D) views
    slopes = torch.ones(H, dtype=torch.float32)
    kpm = positions = prefix_end = None
    if case in ("padded", "decode"):
        kpm = torch.ones(B, S, dtype=torch.bool)
        kpm[0, : S // 4] = False  # a left-padded row
    if case == "decode":  # KVCache: (layers, rows, H, max_len, D) buffers, read through [layer, :, :, :end]
        cache = torch.empty(2, 1, B, H, 2048, D, dtype=dtype)
        k, v = cache[0, 0, :, :, :S], cache[1, 0, :, :, :S]
    if case == "infill":
        positions = torch.arange(S, dtype=torch.int64).repeat(B, 1)  # KVCache keeps positions as int64
        prefix_end = torch.full((B,), S // 2, dtype=torch.int64)
    return dict(q=q, k=k, v=v, alibi_slopes=slopes, causal=True, key_padding_mask=kpm, softmax_scale=None,
                positions=positions, prefix_end=prefix_end)


def record(case: str, dtype: torch.dtype, head_dim: int, heads: int) -> list:
    """The launches of one forward (+ backward, except decoding) of a case."""
    launches = []
    real = {name: getattr(fa, name) for name in KERNELS}
    try:
        for name in KERNELS:
            setattr(fa, name, _Recorder(name, real[name], case, launches))
        x = case_inputs(case, dtype, head_dim, heads)
        out, lse = fa._forward(**x)
        if case != "decode":
            fa._backward(torch.empty_like(x["q"]), x["q"], x["k"], x["v"], out, lse, x["alibi_slopes"], x["causal"],
                         x["key_padding_mask"], x["softmax_scale"], x["positions"], x["prefix_end"])
    finally:
        for name in KERNELS:
            setattr(fa, name, real[name])
    return launches


def compile_one(launch: Launch, config, capability: int) -> dict:
    """Compile one launch with one configuration for one target, as the JIT would; ptxas's numbers."""
    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    jit = launch.jit
    binder = create_function_from_signature(jit.signature, jit.params, backend)  # what JITFunction.run binds with
    kwargs = {**launch.kwargs, **(config.all_kwargs() if config is not None else {})}
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = jit._pack_args(backend, kwargs, bound, specialization, options)
    log = io.StringIO()
    t0 = time.monotonic()
    try:
        with contextlib.redirect_stdout(log):  # ptxas -v's report (knobs.nvidia.dump_ptxas_log) is printed
            kernel = triton.compile(ASTSource(jit, signature, constexprs, attrs), target=target,
                                    options=options.__dict__)
    except Exception as e:  # a compile error is this tool's finding: reported, and the run goes on
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"}
    text = log.getvalue()
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    if regs is None or spills is None:
        raise RuntimeError(f"no ptxas -v report for {launch.kernel} on sm_{capability}: {text[-500:]!r}")
    # integer arguments the binder turned into constants (== 1): the unit strides, as at a real launch
    constants = sorted(jit.arg_names[path[0]] for path in constexprs
                       if not jit.params[path[0]].is_constexpr)
    return {"regs": int(regs.group(1)), "spill_stores": int(spills.group(1)), "spill_loads": int(spills.group(2)),
            "shared": int(kernel.metadata.shared), "seconds": round(time.monotonic() - t0, 2),
            "specialised_to_1": constants}


def kept_by_prune(launch: Launch, config, capability: int) -> bool:
    """Whether the kernel's autotune pruning keeps `config` on a GPU of this capability."""
    prune = getattr(launch.launcher, "early_config_prune", None)
    if config is None or prune is None:
        return True
    real = fa._capability
    fa._capability = lambda device: divmod(capability, 10)
    try:
        kept = prune(fa._config_family(launch.launcher.configs, launch.named_args()), launch.named_args())
    finally:
        fa._capability = real
    return config in kept


def tile(launch: Launch, config) -> str:
    if config is None:
        return f"{launch.kwargs['BLOCK_M']} rows (fixed)"
    return (f"{config.kwargs['BLOCK_M']} x {config.kwargs['BLOCK_N']}, {config.num_warps} warps, "
            f"{config.num_stages} stages")


def markdown(rows: list, meta: dict) -> str:
    targets = meta["targets"]
    head = ["case", "dtype", "D", "kernel", "tile (M x N, warps, stages)"]
    for cap in targets:
        head += [f"sm_{cap} regs", f"sm_{cap} spill st/ld B", f"sm_{cap} smem KiB", f"sm_{cap} _prune"]
    lines = [f"# Triton kernel compile check: triton {meta['triton']}, torch {meta['torch']}", "",
             "Compiled ahead of time through Triton's pipeline and ptxas (no GPU): "
             + "; ".join(f"{TARGETS[c][0]} shared memory limit {TARGETS[c][1] // 1024} KiB per block" for c in targets)
             + f". Batch 2 x {meta['heads']} heads; keys: "
             + ", ".join(f"{c} {n}" for c, n in CASES.items()) + ". `over` = above the limit: the autotuner skips it "
             "at run time. `kept` / `dropped` = the kernel's `_prune` on that target.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * 5 + "---:|---:|---:|---|" * len(targets)]
    for r in rows:
        cells = [r["case"], r["dtype"], str(r["head_dim"]), r["kernel"], r["tile"]]
        for cap in targets:
            t = r["targets"][str(cap)]
            if "error" in t:
                cells += ["FAILED", t["error"][:80].replace("|", "/"), "", ""]
                continue
            over = " over" if t["shared"] > TARGETS[cap][1] else ""
            cells += [str(t["regs"]), f"{t['spill_stores']}/{t['spill_loads']}", f"{t['shared'] / 1024:.1f}{over}",
                      "kept" if t["kept"] else "dropped"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", summary(rows, targets)]
    return "\n".join(lines) + "\n"


def summary(rows: list, targets: list) -> str:
    results = [(r, cap, r["targets"][str(cap)]) for r in rows for cap in targets]
    failed = [(r, cap) for r, cap, t in results if "error" in t]
    spilling = [(r, cap) for r, cap, t in results if "error" not in t and t["spill_stores"] > 0]
    over = [(r, cap) for r, cap, t in results if "error" not in t and t["shared"] > TARGETS[cap][1]]
    return (f"{len(results)} compilations ({len(rows)} launch configurations x {len(targets)} targets): "
            f"{len(failed)} failed, {len(spilling)} spill registers to local memory, {len(over)} over the shared-memory "
            "limit.")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    p.add_argument("--targets", type=int, nargs="+", default=[80, 90], choices=sorted(TARGETS))
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--dtypes", nargs="+", default=["bf16"], choices=sorted(DTYPES))
    p.add_argument("--head-dims", type=int, nargs="+", default=[128], choices=[16, 32, 64, 128])
    p.add_argument("--heads", type=int, default=32, help="heads per launch (MPT-7B: 32)")
    p.add_argument("--configs", choices=["all", "first"], default="all",
                   help="every configuration of each launch's family, or only its first")
    p.add_argument("--out", type=pathlib.Path, default=None, help="also write the Markdown table here")
    p.add_argument("--json", type=pathlib.Path, default=None, help="and every number here ({meta, rows})")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":  # flash_alibi then holds interpreter kernels and one fixed config
        p.error("compiles the real kernels: run it without TRITON_INTERPRET=1")
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")  # triton 3.9's notice; default kept

    triton.knobs.compilation.always_compile = True  # a cache hit would skip ptxas and its report
    triton.knobs.nvidia.dump_ptxas_log = True
    rows = []
    for dtype_name in args.dtypes:
        for head_dim in args.head_dims:
            for case in args.cases:
                for launch in record(case, DTYPES[dtype_name], head_dim, args.heads):
                    for config in launch.configs(args.configs):
                        row = {"case": case, "dtype": dtype_name, "head_dim": head_dim, "kernel": launch.kernel,
                               "tile": tile(launch, config), "targets": {}}
                        for cap in args.targets:
                            result = compile_one(launch, config, cap)
                            if "error" not in result:
                                result["kept"] = kept_by_prune(launch, config, cap)
                            row["targets"][str(cap)] = result
                        rows.append(row)
                        print(f"{case:7s} {dtype_name} D{head_dim} {launch.kernel:16s} {row['tile']:34s} "
                              + "  ".join(f"sm_{c}: " + (t["error"] if "error" in t else
                                                         f"{t['regs']} regs, spill {t['spill_stores']} B, "
                                                         f"{t['shared'] / 1024:.0f} KiB")
                                          for c, t in zip(args.targets, row["targets"].values())), flush=True)
    meta = {"triton": triton.__version__, "torch": torch.__version__, "targets": args.targets, "heads": args.heads}
    text = markdown(rows, meta)
    print("\n" + text)
    for path, content in ((args.out, text), (args.json, json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            print(f"wrote {path}")
    return 1 if any("error" in t for r in rows for t in r["targets"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
