"""Throughput, MFU and memory, plus the console / JSONL / wandb logger.

MFU (llm-foundry's and torchtitan's convention, ../shared/spec/performance.md section 2):

    FLOPs per trained token = 6 * N + 12 * n_layers * d_model * S
    MFU = tokens/s per device * FLOPs per token / peak FLOP/s of the device

- N counts the tied wte once (MPTConfig.num_params()), S is the sequence length of the batch (padding counts as
  processed tokens, as in all these formulas); 12*L*d*S is the full (not causal-halved) attention.
- With activation checkpointing the recompute is not counted (that would be HFU).
- The peak is looked up by device name (dense bf16, no sparsity) in PEAK_FLOPS below; a device not in the table
  gets no MFU unless `log.peak_flops` is set. CPUs have no entry.
"""
import json
import math
import os
import pathlib
import resource
import time

import torch

import config as config_lib

# dense bf16 peak FLOP/s per device (spec/performance.md section 1; the same values as Composer's table)
PEAK_FLOPS = [
    # (substring of torch.cuda.get_device_name(), peak)
    ("A100", 312e12),
    ("H100 80GB HBM3", 989.5e12),  # H100 SXM5 reports itself as "NVIDIA H100 80GB HBM3"
    ("H100 SXM", 989.5e12),
    ("H200", 989.5e12),
]


def device_peak_flops(device: torch.device, override=None):
    if override:
        return float(override)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_FLOPS:
        if key in name:
            return peak
    return None


def flops_per_token(config, seq_len: int) -> float:
    return 6 * config.num_params() + 12 * config.n_layers * config.d_model * seq_len


def memory_stats(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"mem_alloc_gib": torch.cuda.max_memory_allocated(device) / 2**30,
                "mem_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30}
    # CPU: peak resident set size of this process (ru_maxrss is KiB on Linux)
    return {"mem_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Logger:
    """Rank 0 writes console lines, out_dir/metrics.jsonl and (when enabled) wandb; other ranks are silent."""

    def __init__(self, cfg, is_main: bool):
        self.is_main = is_main
        self.wandb = None
        self.jsonl = None
        if not is_main:
            return
        out = pathlib.Path(cfg.run.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(out / "metrics.jsonl", "a")
        mode = cfg.log.wandb
        if mode not in ("disabled", "offline", "online"):
            raise ValueError(f"log.wandb = {mode!r}: must be disabled, offline or online")
        if mode != "disabled":
            import wandb  # only imported when asked for

            self.wandb = wandb.init(project=cfg.log.wandb_project, name=cfg.run.name, mode=mode,
                                    dir=str(out), config=config_lib.to_dict(cfg))

    def cut_back(self, step: int) -> int:
        """Keep the records of steps <= `step` (a resume redoes the later ones) -> how many were removed."""
        if not self.is_main:
            return 0
        self.jsonl.close()
        path = pathlib.Path(self.jsonl.name)
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        path.write_text("".join(kept))
        self.jsonl = open(path, "a")
        return len(lines) - len(kept)

    def print(self, *args):
        if self.is_main:
            print(*args, flush=True)

    def log(self, record: dict, line: str = None):
        if not self.is_main:
            return
        if line:
            print(line, flush=True)
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record.get("step"))

    def close(self):
        if self.jsonl:
            self.jsonl.close()
        if self.wandb is not None:
            self.wandb.finish()


class Throughput:
    """Tokens/s per device and MFU over the steps since the last report (wall time measured after a sync)."""

    def __init__(self, config, device, world_size: int, peak_override=None):
        self.config, self.device, self.world = config, device, world_size
        self.peak = device_peak_flops(device, peak_override)
        self.reset()

    def reset(self):
        self._sync()
        self.t0, self.tokens, self.flops = time.perf_counter(), 0, 0.0

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def add(self, global_tokens: int, seq_len: int):
        """`global_tokens` positions (padding included: it is computed) of sequences `seq_len` long, over all devices;
        a step whose micro-batches differ in length adds each."""
        self.tokens += global_tokens
        self.flops += global_tokens * flops_per_token(self.config, seq_len)

    def report(self) -> dict:
        self._sync()
        dt = time.perf_counter() - self.t0
        tps = self.tokens / dt / self.world if dt > 0 else float("nan")  # per device
        out = {"tokens_per_s_per_device": tps, "seconds": dt}
        flops = self.flops / dt / self.world if dt > 0 else float("nan")  # per device and second
        out["tflops_per_device"] = flops / 1e12
        out["mfu"] = flops / self.peak if self.peak else None
        return out


def env_summary(device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    return f"torch {torch.__version__}, device {name}"
