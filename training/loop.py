"""The training loop shared by train.py and finetune.py (written once; the entry points only differ in data).

One optimizer step (nanoGPT / torchtitan order):
    set lr from the schedule -> this rank's micro-batches -> count valid tokens over all micro-batches and ranks ->
    per micro-batch: forward, loss_sum / global_valid_tokens, backward (FSDP2 reduce-scatters and *sums* the
    gradients, divide factor 1) -> clip the global grad norm -> LION step -> log -> maybe checkpoint.

Loss normalisation: the objective of a step is the mean cross-entropy over every real (label != -100) target
token of the global batch, whatever the split into micro-batches and ranks: each micro-batch contributes
sum(CE) / (valid tokens of the whole global batch), and gradients are summed across ranks. That is exactly the
full-batch gradient (tests/test_training.py checks it with uneven valid-token counts). llm-foundry's fine-tuning
(microbatch 1) instead averaged per-sample means (spec/recgpt.md 9.2, unverified); ours is the per-token mean.
"""
import dataclasses
import math
import pathlib
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

from model.checkpoint import read_config
from model.config import MPTConfig
from training import checkpoint as ckpt
from training.config import dump
from training.data import IGNORE_INDEX, GlobalBatchSampler
from training.distributed import build_sharded_model
from training.lion import Lion
from training.metrics import Logger, Throughput, env_summary, fmt_duration, memory_stats
from training.schedule import check_schedule, lr_multiplier


def model_config(cfg) -> MPTConfig:
    m = cfg.model
    if m.init_from is not None:
        config = read_config(m.init_from)
    elif m.config is not None:
        config = MPTConfig.from_yaml(m.config)
    else:
        config = MPTConfig.from_name(m.name)
    return dataclasses.replace(config, **m.overrides) if m.overrides else config


def loss_sum_and_count(model, batch: dict, device) -> tuple:
    """Sum of next-token cross-entropy over valid targets, and their count, for one micro-batch."""
    ids = batch["input_ids"].to(device, non_blocking=True)
    labels = batch["labels"].to(device, non_blocking=True)
    mask = batch.get("attention_mask")
    mask = mask.to(device, non_blocking=True) if mask is not None else None
    logits = model(ids, attention_mask=mask)  # (B, S, V) fp32
    targets = labels[:, 1:]  # position i predicts token i + 1
    loss_sum = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, (targets != IGNORE_INDEX).sum()


def count_valid(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """Global L2 norm of all (sharded) gradients, clipped to max_norm when max_norm > 0."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)
    if isinstance(total, DTensor):  # sharded grads: a partial norm per rank -> the full norm
        total = total.full_tensor()
    if max_norm and max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], max_norm, total, foreach=True)
    return total


def accumulate_gradients(model, micro_batches: list, device) -> tuple:
    """Forward/backward every micro-batch of this rank, each scaled by 1 / (valid tokens of the global batch).

    Returns (global mean loss, global valid-token count); the gradients left in .grad (summed across ranks by
    FSDP) are those of the mean loss over all valid tokens of the global batch.
    """
    local = torch.tensor([sum(count_valid(mb) for mb in micro_batches)], dtype=torch.float64, device=device)
    dist.all_reduce(local)
    global_valid = float(local.item())
    if global_valid == 0:
        raise RuntimeError("a global batch without any target token (every label is -100): check the data")
    loss_total = torch.zeros((), dtype=torch.float64, device=device)
    for mb in micro_batches:
        loss_sum, _ = loss_sum_and_count(model, mb, device)
        (loss_sum / global_valid).backward()
        loss_total += loss_sum.detach().double()
        del loss_sum
    dist.all_reduce(loss_total)
    return loss_total.item() / global_valid, global_valid


def train_step(model, optimizer, micro_batches: list, device, grad_clip: float) -> dict:
    loss, global_valid = accumulate_gradients(model, micro_batches, device)
    grad_norm = clip_grad_norm(list(model.parameters()), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": loss, "grad_norm": float(grad_norm), "valid_tokens": global_valid}


def run(cfg, d, dataset, make_batch, seq_len: int, task: str):
    """Everything after the data: model, optimizer, resume, loop, checkpoints, export. Returns the last record."""
    log = Logger(cfg, d.is_main)
    config = model_config(cfg)
    if seq_len > config.max_seq_len:
        raise ValueError(f"data sequence length {seq_len} exceeds the model's max_seq_len {config.max_seq_len} "
                         f"(set data.seq_len)")
    bench = cfg.benchmark.enabled
    export_dtype = getattr(torch, str(cfg.checkpoint.export_dtype), None)
    if not isinstance(export_dtype, torch.dtype):
        raise ValueError(f"checkpoint.export_dtype = {cfg.checkpoint.export_dtype!r}: not a torch dtype "
                         f"(e.g. bfloat16, float32)")
    log.print(f"[{task}] {env_summary(d.device)}, world size {d.world_size}")
    log.print(f"[{task}] resolved config:\n{dump(cfg)}")

    # model, sharded ----------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    model = build_sharded_model(config, d, dict(cfg.parallel, compile=cfg.train.compile),
                                init_from=cfg.model.init_from, seed=cfg.run.seed)
    log.print(f"[{task}] model: {config.num_params():,} parameters, {config.n_layers} layers, d_model "
              f"{config.d_model}; weights from {cfg.model.init_from or 'scratch (seed %d)' % cfg.run.seed} "
              f"in {time.perf_counter() - t0:.1f}s")
    o = cfg.optim
    optimizer = Lion(model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay,
                     decay_mode=o.decay_mode, foreach=o.foreach)

    # data and schedule ---------------------------------------------------------------------------------------
    t = cfg.train
    sampler = GlobalBatchSampler(len(dataset), t.global_batch_size, t.micro_batch_size, d.rank, d.world_size,
                                 cfg.run.seed, cfg.data.shuffle)
    if bench:
        max_steps = cfg.benchmark.warmup_steps + cfg.benchmark.steps
    else:
        max_steps = t.max_steps if t.max_steps is not None else t.epochs * sampler.steps_per_epoch
    s = cfg.schedule
    check_schedule(s.name, s.t_warmup, max_steps, s.alpha_f)
    tokens_per_step = t.global_batch_size * seq_len
    log.print(f"[{task}] {len(dataset):,} examples, {sampler.steps_per_epoch:,} steps/epoch, {max_steps:,} steps; "
              f"global batch {t.global_batch_size} x {seq_len} = {tokens_per_step:,} tokens/step; micro-batch "
              f"{t.micro_batch_size}, accumulation {sampler.accumulation}, ranks {d.world_size}")

    # resume -----------------------------------------------------------------------------------------------
    ckpt_root = pathlib.Path(cfg.run.out_dir) / "checkpoints"
    step, tokens_seen = 0, 0
    resume = None if bench else cfg.checkpoint.resume
    path = ckpt.latest(ckpt_root) if resume == "auto" else resume
    if path is not None:
        state = ckpt.load(path, model, optimizer, d.rank, d.world_size, cfg.run.seed)
        step, tokens_seen = int(state["step"]), int(state["tokens_seen"])
        sampler.load_state_dict(state["data"])
        log.print(f"[{task}] resumed from {path} at step {step} (written by {state['world_size']} ranks)")
        changes = [c for c in ckpt.config_changes(path, dump(cfg)) if not c.startswith("checkpoint.resume")]
        if changes:  # allowed (e.g. more steps), but never silent: the run is no longer the saved one
            log.print(f"[{task}] WARNING: this config differs from the checkpoint's: " + "; ".join(changes))

    def save(step):
        train_state = {"step": step, "tokens_seen": tokens_seen, "data": sampler.state_dict(),
                       "world_size": d.world_size, "task": task}
        t_save = time.perf_counter()
        path = ckpt.save(ckpt_root, step, model, optimizer, train_state, dump(cfg), d.rank, cfg.checkpoint.keep_last)
        log.print(f"[{task}] saved {path} in {time.perf_counter() - t_save:.1f}s")

    # loop -------------------------------------------------------------------------------------------------
    model.train()
    throughput = Throughput(config, d.device, d.world_size, cfg.log.peak_flops)
    t_start, start_step, record = time.perf_counter(), step, None
    while step < max_steps:
        if bench and step == cfg.benchmark.warmup_steps:
            throughput.reset()
        lr = o.lr * lr_multiplier(step, s.name, s.t_warmup, max_steps, s.alpha_f)
        for group in optimizer.param_groups:
            group["lr"] = lr
        t_data = time.perf_counter()
        micro_batches = [make_batch(dataset, idx) for idx in sampler.next_step()]
        t_data = time.perf_counter() - t_data
        out = train_step(model, optimizer, micro_batches, d.device, o.grad_clip)
        step += 1
        batch_seq = micro_batches[0]["input_ids"].shape[1]
        step_tokens = t.global_batch_size * batch_seq
        tokens_seen += step_tokens
        throughput.add(step_tokens, batch_seq)
        record = {"step": step, "loss": out["loss"], "lr": lr, "grad_norm": out["grad_norm"],
                  "valid_tokens": out["valid_tokens"], "tokens_seen": tokens_seen, "data_s": t_data}
        if not math.isfinite(out["loss"]):
            raise FloatingPointError(f"loss is {out['loss']} at step {step}")
        if step % cfg.log.interval == 0 or step == max_steps or step == start_step + 1:
            if not (bench and step <= cfg.benchmark.warmup_steps):
                record.update(throughput.report())
                record.update(memory_stats(d.device))
                throughput.reset()
            elapsed = time.perf_counter() - t_start
            eta = elapsed / (step - start_step) * (max_steps - step)
            mfu = record.get("mfu")
            tps = record.get("tokens_per_s_per_device")
            mem = next((f"{v:.2f} GiB {k[4:-4]}" for k, v in record.items() if k.startswith("mem_")), "")
            line = (f"[{task}] step {step}/{max_steps} ({100 * step / max_steps:.1f}%) | loss {out['loss']:.4f} | "
                    f"lr {lr:.3e} | gnorm {out['grad_norm']:.3f} | "
                    + (f"tok/s/dev {tps:,.0f} | " if tps is not None else "")
                    + (f"mfu {100 * mfu:.1f}% | " if mfu is not None else "")
                    + (f"mem {mem} | " if mem else "")
                    + f"elapsed {fmt_duration(elapsed)} | eta {fmt_duration(eta)}")
            log.log(record, line)
        else:
            log.log(record)
        if not bench and cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0 and step < max_steps:
            save(step)
        if t.stop_after is not None and step >= t.stop_after and step < max_steps:
            log.print(f"[{task}] stopping after step {step} (train.stop_after)")
            break
    else:
        if bench:
            report = dict(record, task=task, world_size=d.world_size, device=env_summary(d.device),
                          micro_batch=t.micro_batch_size, seq_len=seq_len, params=config.num_params(),
                          mixed_precision=cfg.parallel.mixed_precision,
                          activation_checkpointing=cfg.parallel.activation_checkpointing,
                          attn_impl=config.attn_impl, timed_steps=cfg.benchmark.steps)
            if d.is_main:
                import json

                (pathlib.Path(cfg.run.out_dir) / "benchmark.json").write_text(json.dumps(report, indent=1) + "\n")
            log.print(f"[{task}] benchmark: {report}")
        elif step > start_step:  # the run reached max_steps now (not just resumed a finished run)
            save(step)
            if cfg.checkpoint.export_final:
                out = pathlib.Path(cfg.run.out_dir) / "model"
                ckpt.export_model(model, config, out, export_dtype, d.rank)
                if d.is_main:
                    ckpt.copy_tokenizer(cfg.data.path, out)
                    ckpt.write_export_card(cfg, task, record, config, out)
                log.print(f"[{task}] exported the final model to {out} ({cfg.checkpoint.export_dtype})")
    log.close()
    return record
