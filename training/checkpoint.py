"""Sharded training checkpoints with torch.distributed.checkpoint (DCP), and the final model export.

    <out_dir>/checkpoints/
      step-00000100/               a complete checkpoint (the only kind resume ever reads)
        .metadata, __*_*.distcp    DCP: model + optimizer, each rank writing its own shards
        rank-00000.pt ...          per-rank RNG states (python, numpy, torch, cuda)
        train_state.json           step, tokens seen, data position (world-size independent), world size
        config.yaml                the resolved run config
        COMPLETE                   written last, after every rank has finished
      step-00000200.partial/       a save in progress (or one a crash interrupted): never read, removed on the next save

A save writes into `step-N.partial/`, all ranks meet at a barrier, then rank 0 writes COMPLETE and renames the folder
to `step-N` (an atomic rename on one filesystem). `latest()` only accepts folders named step-N that hold COMPLETE,
so a crash mid-save can never leave a checkpoint that resume picks up. After a save the oldest complete checkpoints
beyond `keep_last` are deleted.

Model and optimizer state go through DCP's `get_state_dict`/`set_state_dict`, which reshard on load: a checkpoint
written by 8 ranks loads on 4, 2 or 1. Only trainable parameters are saved (DCP's ignore_frozen_params): with LoRA
the checkpoint holds the adapters and their optimizer state, not the frozen base (13 GB at 7B, unchanged since
model.init_from, which a resume reads again and whose path the config check holds fixed). RNG states are per rank;
on a different world size ranks without a saved state are reseeded from (seed, step, rank) and a warning says so.
"""
import json
import pathlib
import random
import re
import shutil
import warnings
from typing import Optional

import numpy as np
import torch
import yaml
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from config.cli import DiskFull
from training.distributed import canonical_name, seed_rngs

MARKER = "COMPLETE"
# what a checkpoint saves of the model: the trained parameters (all of them, or LoRA's adapters)
TRAINABLE = StateDictOptions(ignore_frozen_params=True)
STEP_RE = re.compile(r"^step-(\d+)$")


def step_dir(root, step: int) -> pathlib.Path:
    return pathlib.Path(root) / f"step-{step:08d}"


def is_complete(path: pathlib.Path) -> bool:
    return (path / MARKER).is_file() and (path / ".metadata").is_file()


def complete_checkpoints(root) -> list:
    """[(step, path)] of complete checkpoints under root, oldest first."""
    root = pathlib.Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_dir() and is_complete(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest(root):
    found = complete_checkpoints(root)
    return found[-1][1] if found else None


def _rng_state() -> dict:
    """The generators' states as tensors and numbers only, so that loading needs no pickle (weights_only=True)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict):
    p, n = state["python"], state["numpy"]
    random.setstate((p["version"], tuple(p["mt"].tolist()), p["gauss"]))
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _size(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def make_room(root: pathlib.Path, need: int, keep_last: int) -> None:
    """Before a save: when the disk has less free space than a checkpoint needs, delete the oldest complete
    checkpoints first (the newest always stays), or stop naming how much is needed (rank 0)."""
    complete = complete_checkpoints(root)
    while shutil.disk_usage(root).free < need and len(complete) > 1:
        step, old = complete.pop(0)
        print(f"[checkpoint] the disk of {root} is short: deleting {old.name} before saving", flush=True)
        shutil.rmtree(old, ignore_errors=True)
    free = shutil.disk_usage(root).free
    if free < need:
        raise DiskFull(root, need, free)


def save(root, step: int, model, optimizer, train_state: dict, config_yaml: str, rank: int, keep_last: int):
    root = pathlib.Path(root)
    final = step_dir(root, step)
    tmp = final.with_name(final.name + ".partial")
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob("*.partial"):  # left by a crash; never read
            shutil.rmtree(stale, ignore_errors=True)
    # room: about the size of the newest checkpoint (or of fp32 weights + LION's momentum before the first one)
    newest = latest(root)
    need = _size(newest) if newest is not None else 8 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    short = torch.zeros(1, dtype=torch.int32, device=next(model.parameters()).device)
    if rank == 0:
        try:
            make_room(root, int(need * 1.05), keep_last)
        except DiskFull as e:
            short += 1
            refusal = e
    dist.broadcast(short, src=0)  # every rank stops, not only rank 0
    if short.item():
        raise refusal if rank == 0 else DiskFull(root)
    model_sd, optim_sd = get_model_state_dict(model, options=TRAINABLE), get_optimizer_state_dict(model, optimizer)
    try:
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
        torch.save(_rng_state(), tmp / f"rank-{rank:05d}.pt")
    except Exception as e:  # DCP reports a full disk as a write-position mismatch: say what it was
        if shutil.disk_usage(root).free < need:
            raise DiskFull(tmp, need, shutil.disk_usage(root).free) from e
        raise
    dist.barrier()
    if rank == 0:
        (tmp / "train_state.json").write_text(json.dumps(train_state, indent=1) + "\n")
        (tmp / "config.yaml").write_text(config_yaml)
        (tmp / MARKER).write_text(f"step {step}\n")
        if final.exists():  # the same step saved by an earlier run: replaced only now that the new one is complete
            shutil.rmtree(final)
        tmp.rename(final)
        if keep_last and keep_last > 0:
            for _, old in complete_checkpoints(root)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load(path, model, optimizer, rank: int, world_size: int, seed: int) -> dict:
    """Restore model + optimizer (resharded to this world size) and this rank's RNG; return train_state."""
    path = pathlib.Path(path)
    if not is_complete(path):
        raise FileNotFoundError(f"checkpoint.resume = {path}: not a complete checkpoint (no {MARKER} or .metadata)")
    state = {"model": get_model_state_dict(model, options=TRAINABLE),
             "optim": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=str(path))  # every requested (trainable) tensor must be in the checkpoint
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=False))  # frozen ones: not in it
    set_optimizer_state_dict(model, optimizer, state["optim"])
    train_state = json.loads((path / "train_state.json").read_text())
    rng_file = path / f"rank-{rank:05d}.pt"
    rng = None
    if train_state["world_size"] == world_size and rng_file.is_file():
        try:
            rng = torch.load(rng_file, weights_only=True)  # tensors and numbers: never a pickle of anything else
        except Exception as e:  # noqa: BLE001  (a file written before the states were plain data, or a bad one)
            warnings.warn(f"{rng_file}: not readable as plain data ({type(e).__name__}); reseeding instead")
    if rng is not None:
        _set_rng_state(rng)
    else:
        if rank == 0 and train_state["world_size"] != world_size:
            warnings.warn(f"{path} was written by {train_state['world_size']} ranks, this run has {world_size}: "
                          f"RNG states are reseeded from (seed, step, rank); model, optimizer and data position "
                          f"are resharded exactly")
        seed_rngs(seed + 1_000_003 * int(train_state["step"]) + rank)
    return train_state


def saved_config(path) -> Optional[dict]:
    """The resolved run config saved in checkpoint `path` (None for a checkpoint without one)."""
    saved_file = pathlib.Path(path) / "config.yaml"
    return (yaml.safe_load(saved_file.read_text()) or {}) if saved_file.is_file() else None


def copy_tokenizer(data_path, out_dir) -> Optional[pathlib.Path]:
    """Put the data build's tokenizer beside an exported model (evaluate.py's default --tokenizer), so the
    model folder is self-contained. The build's meta.json names the file and its sha256; the copy in the
    build folder (a trained BPE) or the named path (e.g. GPT-NeoX's) is used when its hash matches."""
    from data.formats.packed import read_meta
    from data.formats.tokenizer import sha256_file

    meta_path, meta = read_meta(data_path)
    tok = meta.get("tokenizer") or {}
    if not tok.get("sha256"):  # a synthetic build (training/testing.py) has no tokenizer file
        return None
    for candidate in (meta_path.parent / "tokenizer.json", pathlib.Path(tok.get("path") or "")):
        if candidate.is_file() and sha256_file(candidate) == tok.get("sha256"):
            out = pathlib.Path(out_dir) / "tokenizer.json"
            shutil.copyfile(candidate, out)
            return out
    warnings.warn(f"{meta_path}: tokenizer {tok.get('path')!r} not found with sha256 {tok.get('sha256')}; "
                  f"the exported model has no tokenizer.json (pass --tokenizer to evaluate.py)")
    return None


def write_export_card(cfg, task: str, record: dict, config, out_dir) -> pathlib.Path:
    """The exported model's card (model/card.py): its base model, the data build, the run, its last loss."""
    from data.formats.packed import read_meta
    from model.card import read_card, write_card

    base = cfg.model.init_from
    lineage = read_card(base).get("base_model") if base else None  # what the init_from model came from
    data = {"build": cfg.data.path}
    try:
        _, meta = read_meta(cfg.data.path)
        data.update(name=(meta.get("config") or {}).get("name"), fingerprint=meta.get("fingerprint"),
                    tokenizer_sha256=(meta.get("tokenizer") or {}).get("sha256"))
    except (FileNotFoundError, ValueError, TypeError):
        pass  # synthetic or benchmark data: the path is what there is
    training = {"task": task, "run": cfg.run.out_dir, "steps": record.get("step"),
                "tokens_seen": record.get("tokens_seen"), "global_batch_size": cfg.train.global_batch_size,
                "optimizer": f"LION lr {cfg.optim.lr}", "schedule": cfg.schedule.name}
    if base is not None:
        training["initialised_from"] = f"{base}" + (f" (itself from {lineage})" if lineage else "")
    if cfg.lora.enabled:
        training["lora"] = (f"rank {cfg.lora.rank}, alpha {cfg.lora.alpha:g}, dropout {cfg.lora.dropout:g} on "
                            f"{', '.join(cfg.lora.targets)}; merged into these weights; the adapter alone in "
                            f"{ADAPTER_DIR}/ (PEFT's format)")
    metrics = {}
    if record and "loss" in record:
        metrics["last_training_loss"] = round(float(record["loss"]), 4)
    if record and "val_loss" in record:
        metrics["validation_loss"] = round(float(record["val_loss"]), 4)
    if record and record.get("best"):
        metrics["best_validation_loss"] = f"{record['best']['val_loss']:.4f} at step {record['best']['step']}"
    return write_card(out_dir, config, base_model=(lineage or base) if base else None,
                      data={k: v for k, v in data.items() if v}, training=training, metrics=metrics or None,
                      dtype=str(cfg.checkpoint.export_dtype))


def is_exported(out_dir) -> bool:
    """An export is in place (exports are staged and renamed whole: training/loop.py); the card is written last."""
    return (pathlib.Path(out_dir) / "README.md").is_file()


ADAPTER_DIR = "adapter"  # with LoRA: <export>/adapter/, PEFT's format, beside the merged model


def export_model(model, config, out_dir, dtype: torch.dtype, rank: int, lora=None, base_model: str = None):
    """Gather the full state dict (to rank 0's CPU) and write our safetensors format (model/checkpoint.py).

    With LoRA (`lora`: the run config's enabled lora section) the model written is the merged one (W + alpha/r B A,
    in fp32, then `dtype`), and `out_dir/adapter/` holds the adapters alone in PEFT's format (fp32), for
    `PeftModel.from_pretrained` on transformers' MptForCausalLM of the base (`base_model`: model.init_from)."""
    from model.checkpoint import save_model
    from model.lora import adapter_tensors, merge_state_dict, save_adapter

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        sd = {canonical_name(k): v for k, v in sd.items()}
        if lora is not None:
            save_adapter(pathlib.Path(out_dir) / ADAPTER_DIR, adapter_tensors(sd), lora.rank, lora.alpha,
                         lora.dropout, lora.targets, base_model=str(base_model) if base_model else None)
            sd = merge_state_dict(sd, lora.alpha / lora.rank)
        save_model(sd, config, out_dir, dtype=dtype)
    del sd
    dist.barrier()
