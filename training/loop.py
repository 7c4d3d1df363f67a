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

import config as config_lib
from config import dump, to_dict
from model.checkpoint import read_config
from model.config import MPTConfig
from model.lora import trainable_parameters
from output import OutputLock, OutputLocked, partial_dir, remove_partials, replace_dir
from output.provenance import write_environment
from training import checkpoint as ckpt
from training.config import LoraSection, unsafe_changes
from training.data import IGNORE_INDEX, GlobalBatchSampler
from training.distributed import build_sharded_model
from training.lion import Lion
from training.metrics import Logger, Throughput, env_summary, fmt_duration, memory_stats
from training.schedule import check_schedule, lr_multiplier


# the keys that decide what a set of weights computes: a named config given beside init_from must agree on them
ARCHITECTURE_KEYS = ("d_model", "n_heads", "n_layers", "expansion_ratio", "vocab_size", "no_bias", "norm_eps",
                     "logit_scale", "alibi", "alibi_bias_max", "clip_qkv", "qk_ln", "softmax_scale")


def model_config(cfg) -> MPTConfig:
    """The run's model: init_from's config (model.name / model.config, when also given, must describe the same
    architecture: it is what training.memory estimates before the checkpoint exists), else the named config."""
    m = cfg.model
    known = {f.name for f in dataclasses.fields(MPTConfig)}
    for key in m.overrides:  # a typo, or `{attn_impl:torch}` (YAML: one key "attn_impl:torch"), named: no TypeError
        if key not in known:
            raise ValueError(f"model.overrides: {key!r} is not a model config key (model/config.py MPTConfig)")
    named = None
    if m.config is not None:
        named, what = MPTConfig.from_yaml(m.config), f"model.config = {m.config}"
    elif m.name is not None:
        named, what = MPTConfig.from_name(m.name), f"model.name = {m.name}"
    if named is not None and m.overrides:  # the name with its overrides is what the run describes
        named, what = dataclasses.replace(named, **m.overrides), f"{what} with model.overrides"
    if m.init_from is not None:
        config = read_config(m.init_from)
        if named is not None:
            differ = [f"{k}: {getattr(named, k)!r} vs {getattr(config, k)!r}" for k in ARCHITECTURE_KEYS
                      if getattr(named, k) != getattr(config, k)]
            if differ:
                raise ValueError(f"{what} does not describe the model in model.init_from = {m.init_from} ("
                                 + "; ".join(differ) + "): fix one, or leave the name out")
    elif named is not None:
        config = named
    else:
        raise ValueError("no model: set model.init_from (a checkpoint), model.name (configs/model/<name>.yaml) or "
                         "model.config (a model YAML)")
    return dataclasses.replace(config, **m.overrides) if m.overrides else config


def loss_sum_and_count(model, batch: dict, device) -> tuple:
    """Sum of next-token cross-entropy over valid targets, and their count, for one micro-batch."""
    ids = batch["input_ids"].to(device, non_blocking=True)
    labels = batch["labels"].to(device, non_blocking=True)
    mask = batch.get("attention_mask")
    mask = mask.to(device, non_blocking=True) if mask is not None else None
    # blank infilling (training/infilling.py): a bidirectional Part A, ALiBi positions and intra ids per token
    extra = {k: batch[k].to(device, non_blocking=True) for k in ("positions", "prefix_end", "intra_positions")
             if k in batch}
    logits = model(ids, attention_mask=mask, **extra)  # (B, S, V) fp32
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


def check_vocabulary(cfg, config: MPTConfig) -> None:
    """The data's token ids must fit the model's embedding: the build's meta.json records its tokenizer's size (a
    larger one would end in an index error inside the embedding, far from its cause)."""
    if cfg.data.synthetic or cfg.data.path is None:
        return
    from data.formats.packed import read_meta

    meta_path, meta = read_meta(cfg.data.path)
    tok = meta.get("tokenizer") or {}
    n = tok.get("vocab_size")
    if n is not None and n > config.vocab_size:
        raise ValueError(f"{meta_path}: the data's tokenizer has {n:,} tokens ({tok.get('path')}), more than the "
                         f"model's vocab_size {config.vocab_size:,}: the data was built for another model")
    if cfg.data.eos_id is not None and cfg.data.eos_id >= config.vocab_size:
        raise ValueError(f"data.eos_id = {cfg.data.eos_id} is not a token of the model (vocab_size "
                         f"{config.vocab_size:,})")


class NonFiniteLoss(ValueError):
    """The training loss became NaN or inf: the run stops, naming the step, the batch and the last checkpoint."""


def check_resumable(cfg, path, log, task: str) -> None:
    """A resume continues the saved run only: any difference in a key outside SAFE_TO_CHANGE (training/config.py)
    stops it, naming the keys, unless checkpoint.allow_changes lists them."""
    saved = ckpt.saved_config(path)
    if saved is None:
        raise SystemExit(f"[{task}] {path} has no config.yaml, so resuming cannot check that it is the same run")
    now = to_dict(cfg)
    if "lora" not in saved:  # saved before the lora section existed: that run trained every parameter
        saved["lora"] = to_dict(LoraSection())
    unsafe = unsafe_changes(saved, now, cfg.checkpoint.allow_changes)
    if unsafe:
        keys = [c.split(":")[0] for c in unsafe]
        raise SystemExit(f"[{task}] {path} was saved by a run with a different config: " + "; ".join(unsafe)
                         + f". Resuming would silently continue another run. Use a new run.out_dir, or accept the "
                         f"change with --checkpoint.allow_changes=[{','.join(keys)}]")
    allowed = unsafe_changes(saved, now, ["*"]) or [f"{k}: {a!r} -> {b!r}" for k, a, b in
                                                     config_lib.differences(saved, now)]
    if allowed:
        log.print(f"[{task}] resuming with config changes: " + "; ".join(allowed))


@torch.no_grad()
def validation_loss(model, dataset, make_batch, micro_batch: int, limit: int, d) -> float:
    """Mean next-token loss over every valid target of the first `limit` examples of the held-out split (all of
    them when limit is 0), always the same examples in file order. Rank r takes examples r, r + W, ...; the count
    is cut to a multiple of W so every rank runs the same number of forwards (FSDP's collectives)."""
    n = len(dataset) if not limit else min(limit, len(dataset))
    n -= n % d.world_size
    if n == 0:
        raise ValueError(f"the validation split has {len(dataset)} examples, fewer than the {d.world_size} ranks")
    mine = list(range(d.rank, n, d.world_size))
    was_training = model.training
    model.eval()  # no dropout
    total = torch.zeros((), dtype=torch.float64, device=d.device)
    count = torch.zeros((), dtype=torch.float64, device=d.device)
    for j in range(0, len(mine), micro_batch):
        loss_sum, n_valid = loss_sum_and_count(model, make_batch(dataset, mine[j:j + micro_batch]), d.device)
        total += loss_sum.double()
        count += n_valid.double()
    dist.all_reduce(total)
    dist.all_reduce(count)
    model.train(was_training)
    return float(total / count)


def run(cfg, d, dataset, make_batch, seq_len: int, task: str, valid=None):
    """Everything after the data: model, optimizer, resume, loop, validation, checkpoints, export. Returns the
    last record. `valid`: the build's held-out split (same kind as `dataset`), or None.

    Rank 0 holds the lock of run.out_dir (output/) for the whole run: a second training into the same folder stops
    before it touches anything; the other ranks learn the outcome from rank 0."""
    lock = OutputLock(cfg.run.out_dir, f"{task} ({cfg.run.name})") if d.is_main and not cfg.benchmark.enabled else None
    refused = None
    if lock is not None:
        try:
            lock.__enter__()
        except OutputLocked as e:
            refused = e
    flag = torch.tensor([refused is not None], dtype=torch.int32, device=d.device)
    dist.broadcast(flag, src=0)
    if refused is not None:
        raise refused
    if flag.item():
        raise OutputLocked(f"rank 0 could not lock {cfg.run.out_dir} (its message names the holder)")
    try:
        return _run(cfg, d, dataset, make_batch, seq_len, task, valid)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


def _run(cfg, d, dataset, make_batch, seq_len: int, task: str, valid):
    log = Logger(cfg, d.is_main)
    config = model_config(cfg)
    if seq_len > config.max_seq_len:
        raise ValueError(f"data sequence length {seq_len} exceeds the model's max_seq_len {config.max_seq_len} "
                         f"(set data.seq_len)")
    check_vocabulary(cfg, config)
    bench = cfg.benchmark.enabled
    export_dtype = getattr(torch, str(cfg.checkpoint.export_dtype), None)
    if not isinstance(export_dtype, torch.dtype):
        raise ValueError(f"checkpoint.export_dtype = {cfg.checkpoint.export_dtype!r}: not a torch dtype "
                         f"(e.g. bfloat16, float32)")
    log.print(f"[{task}] {env_summary(d.device)}, world size {d.world_size}")
    log.print(f"[{task}] resolved config:\n{dump(cfg)}")

    # model, sharded ----------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    lora = cfg.lora if cfg.lora.enabled else None
    model = build_sharded_model(config, d, cfg.parallel, init_from=cfg.model.init_from, seed=cfg.run.seed,
                                compile=cfg.train.compile, verify=cfg.model.verify, lora=lora)
    log.print(f"[{task}] model: {config.num_params():,} parameters, {config.n_layers} layers, d_model "
              f"{config.d_model}; weights from {cfg.model.init_from or 'scratch (seed %d)' % cfg.run.seed} "
              f"in {time.perf_counter() - t0:.1f}s")
    trainable, total = trainable_parameters(model)
    log.print(f"[{task}] trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"
              + (f"; LoRA rank {lora.rank}, alpha {lora.alpha:g}, dropout {lora.dropout:g} on "
                 f"{', '.join(lora.targets)}, the base frozen"
                 + (" in bf16" if cfg.parallel.mixed_precision == "bf16" else "") if lora else ""))
    o = cfg.optim
    # only what trains: LION's momentum for the adapters alone under LoRA
    optimizer = Lion([p for p in model.parameters() if p.requires_grad], lr=o.lr, betas=tuple(o.betas),
                     weight_decay=o.weight_decay, decay_mode=o.decay_mode, foreach=o.foreach)

    # data and schedule ---------------------------------------------------------------------------------------
    t = cfg.train
    lengths = None
    if cfg.data.micro_batches_by_length:
        lengths = getattr(dataset, "lengths", None)
        if lengths is None:
            raise ValueError(f"data.micro_batches_by_length = true, but {task}'s examples have no lengths (packed "
                             f"pre-training rows are all one length): set it for finetune.py only")
    sampler = GlobalBatchSampler(len(dataset), t.global_batch_size, t.micro_batch_size, d.rank, d.world_size,
                                 cfg.run.seed, cfg.data.shuffle, lengths)
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
    out_dir = pathlib.Path(cfg.run.out_dir)
    ckpt_root = out_dir / "checkpoints"
    step, tokens_seen, best = 0, 0, None
    resume = None if bench else cfg.checkpoint.resume
    path = ckpt.latest(ckpt_root) if resume == "auto" else resume
    if path is not None:
        check_resumable(cfg, path, log, task)
        state = ckpt.load(path, model, optimizer, d.rank, d.world_size, cfg.run.seed)
        step, tokens_seen, best = int(state["step"]), int(state["tokens_seen"]), state.get("best")
        sampler.load_state_dict(state["data"])
        log.print(f"[{task}] resumed from {path} at step {step} (written by {state['world_size']} ranks)")
        dropped = log.cut_back(step)  # the killed segment's later steps are redone: one record per step
        if dropped:
            log.print(f"[{task}] metrics.jsonl: {dropped} records after step {step} (from the interrupted run) removed")
    if d.is_main and not bench:
        config_lib.save(cfg, out_dir / "config.yaml")  # the config of the run's latest segment
        write_environment(out_dir)  # and its code, packages and machine (output/provenance.py)
    finished = not bench and step >= max_steps
    exported = not cfg.checkpoint.export_final or ckpt.is_exported(out_dir / "model")
    if finished and not cfg.checkpoint.reexport and exported:
        raise SystemExit(f"[{task}] {out_dir} holds a finished run (step {step} of {max_steps}"
                         + (f", model in {out_dir / 'model'}" if cfg.checkpoint.export_final else "") + "): nothing "
                         "to do. Use another run.out_dir, --checkpoint.reexport=true to export the model again, or "
                         "more steps with --train.max_steps=N --checkpoint.allow_changes=[train.max_steps].")
    if finished:
        log.print(f"[{task}] the run had finished at step {step}; exporting its final model again")

    def save(step):
        train_state = {"step": step, "tokens_seen": tokens_seen, "data": sampler.state_dict(),
                       "world_size": d.world_size, "task": task, "best": best}
        t_save = time.perf_counter()
        path = ckpt.save(ckpt_root, step, model, optimizer, train_state, dump(cfg), d.rank, cfg.checkpoint.keep_last)
        log.print(f"[{task}] saved {path} in {time.perf_counter() - t_save:.1f}s")

    def export(step, out, metrics):
        """Written into a temporary sibling and renamed into place whole (output/): never a mix of two exports."""
        tmp = partial_dir(out)
        if d.is_main:
            remove_partials(out)
        ckpt.export_model(model, config, tmp, export_dtype, d.rank, lora=lora, base_model=cfg.model.init_from)
        if d.is_main:
            ckpt.copy_tokenizer(cfg.data.path, tmp)
            ckpt.write_export_card(cfg, task, metrics, config, tmp)
            replace_dir(tmp, out)
        log.print(f"[{task}] exported the model of step {step} to {out} ({cfg.checkpoint.export_dtype})")

    def validate(step) -> dict:
        """Validation loss; a new best is exported to out_dir/model-best (when eval.export_best)."""
        nonlocal best
        t_val = time.perf_counter()
        loss = validation_loss(model, valid, make_batch, t.micro_batch_size, cfg.eval.batches * t.global_batch_size,
                               d)
        rec = {"step": step, "val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "tokens_seen": tokens_seen}
        improved = best is None or loss < best["val_loss"]
        log.log(rec, f"[{task}] step {step} | val loss {loss:.4f} | val ppl {rec['val_ppl']:.2f}"
                + (" | best so far" if improved else f" | best {best['val_loss']:.4f} at step {best['step']}")
                + f" | {time.perf_counter() - t_val:.1f}s")
        if improved:
            best = {"step": step, "val_loss": loss}
            if cfg.eval.export_best:
                export(step, out_dir / "model-best", dict(rec, **{"step": step}))
        return rec

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
        # positions computed, padding included, over every process (each holds as many rows of its own lengths):
        # micro-batches padded to their own longest row differ in length
        for mb in micro_batches:
            rows, seq = mb["input_ids"].shape
            tokens_seen += rows * seq * d.world_size
            throughput.add(rows * seq * d.world_size, seq)
        record = {"step": step, "loss": out["loss"], "lr": lr, "grad_norm": out["grad_norm"],
                  "valid_tokens": out["valid_tokens"], "tokens_seen": tokens_seen, "data_s": t_data}
        if not math.isfinite(out["loss"]):
            raise NonFiniteLoss(
                f"loss is {out['loss']} at step {step} (its global batch: examples "
                f"{sampler.global_indices(step - 1)[:8].tolist()}... of {cfg.data.path or 'synthetic data'}); the last "
                f"complete checkpoint is {ckpt.latest(ckpt_root) or 'none'}: resume from it with a smaller optim.lr, "
                f"optim.grad_clip, or a fix to the data")
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
        if valid is not None and cfg.eval.interval and step % cfg.eval.interval == 0 and step < max_steps:
            validate(step)
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
        else:  # the run is at max_steps: reached now, or finished before and asked to export again
            final = dict(record or {"step": step, "tokens_seen": tokens_seen})
            if valid is not None and cfg.eval.interval and step > start_step:
                final.update({k: v for k, v in validate(step).items() if k.startswith("val_")})
            if step > start_step:
                save(step)
            if cfg.checkpoint.export_final:
                export(step, out_dir / "model", dict(final, best=best))
    log.close()
    return record
