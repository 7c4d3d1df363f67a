"""Process group from torchrun's environment, FSDP2 sharding, sharded weight loading, seeding.

The model file knows nothing of this (torchtitan's split): `build_sharded_model` builds MPT on `meta`, applies
`parallelize` (activation checkpointing per block, `fully_shard` per block, then the root), allocates only the
local shards with `to_empty`, then fills them one full tensor at a time from rank 0 (from scratch: MPT's init on
rank 0's CPU; or a checkpoint, ours or HF's layout, read shard by shard). Rank 0 holds the source's current shard
(or, from scratch, the CPU model it initialises); every rank, rank 0 included, holds at most one full tensor at a
time besides its local shards: the buffer `distribute_tensor` scatters from (the largest, MPT-7B's embedding, is
0.4 GB in fp32).

Works the same with 1 process (plain `python train.py`: a world of one, gloo or nccl) and under
`torchrun --nproc_per_node N` / multi-node, so every path is the one the tests exercise.
"""
import contextlib
import datetime
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from model.checkpoint import expected_shapes, iter_checkpoint, read_config
from model.config import MPTConfig
from model.lora import adapter_tensors, add_lora, initial_adapter_tensors
from model.mpt import MPT, build_model


@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mesh: object

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(backend: str = None, timeout_minutes: int = 30) -> Dist:
    """Initialise the default process group from torchrun's RANK/WORLD_SIZE/LOCAL_RANK (or a world of one)."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if not dist.is_initialized():
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout,
                                    device_id=device if device.type == "cuda" else None)
        else:  # plain `python train.py`: a world of one without any network rendezvous
            if world != 1:
                raise RuntimeError("WORLD_SIZE > 1 but no MASTER_ADDR: launch with torchrun")
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("dp",))
    return Dist(rank, world, local_rank, device, mesh)


def teardown(ok: bool = True):
    """Barrier + destroy (a gloo worker can abort at exit after DCP otherwise); no barrier after an error, where
    the other ranks may never arrive."""
    if dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(cfg):
    """The run's process lifetime, shared by train.py and finetune.py: set up the process group, seed, and
    tear down on the way out (with a barrier only after success: after an error other ranks may never arrive)."""
    d = setup(cfg.parallel.backend)
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    try:
        yield d
    except BaseException:
        teardown(ok=False)
        raise
    teardown()


def seed_rngs(seed: int):
    """Seed python's, numpy's and torch's (all devices) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_everything(seed: int, deterministic: bool = False):
    seed_rngs(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def parallelize(model: MPT, mesh, mixed_precision: str = "bf16", activation_checkpointing: bool = False,
                reshard_after_forward: bool = True, compile: bool = False) -> MPT:
    """Activation checkpointing per block -> optional compile per block -> fully_shard per block -> root.

    mixed_precision "bf16": the sharded master parameters stay fp32 (so LION's +-lr steps are not rounded away,
    spec/performance.md 6.3), all-gathered compute copies are bf16, gradients are reduce-scattered in fp32.
    "fp32": everything fp32. Gradients are *summed* across ranks (divide factor 1): the loss is already
    normalised by the global count of valid tokens (training/loop.py).
    """
    if mixed_precision == "bf16":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    elif mixed_precision == "fp32":
        mp = MixedPrecisionPolicy()
    else:
        raise ValueError(f"parallel.mixed_precision = {mixed_precision!r}: must be 'bf16' or 'fp32'")
    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        # the recomputation must draw the forward's dropout masks again, or the gradients are those of other masks;
        # saving and restoring the RNG state costs a little, so only models with dropout pay it
        c = model.config
        stochastic = max(c.emb_pdrop, c.resid_pdrop, c.attn_pdrop) > 0 or any(
            isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())  # LoRA's adapter dropout too
        for i, block in enumerate(model.blocks):
            model.blocks[i] = checkpoint_wrapper(block, preserve_rng_state=stochastic)
    if compile:
        for i, block in enumerate(model.blocks):
            model.blocks[i] = torch.compile(block)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    gloo = dist.get_backend() == "gloo"
    for module in model.modules():  # the setting is per FSDP unit, not inherited
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            if gloo:  # gloo has no PREMUL_SUM: plain SUM (the factor is 1 anyway)
                module.set_force_sum_reduction_for_comms(True)
    return model


def canonical_name(name: str) -> str:
    """State-dict name without wrapper prefixes (activation checkpointing, torch.compile)."""
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")


@torch.no_grad()
def fill_from_rank0(model, full_tensors, shapes: dict, rank: int):
    """Copy full tensors, available on rank 0 only, into the sharded parameters, one tensor at a time.

    full_tensors: on rank 0 an iterator of (canonical name, tensor); ignored on the other ranks. Names are sent in
    the model's own order, so every rank issues the same collectives. The other ranks allocate an empty full-size
    buffer for each tensor in turn (the scatter's argument), freed before the next: one full tensor at a time.
    """
    local = {canonical_name(n): p for n, p in model.state_dict().items()}
    if rank == 0:
        # a lazy source (_ShardsOnDemand) reads a safetensors shard when first asked for one of its tensors
        pending = full_tensors if isinstance(full_tensors, dict) else dict(full_tensors)
    for name, target in local.items():
        if rank == 0:
            try:
                full = pending.pop(name)
            except KeyError:
                raise KeyError(f"weights source lacks tensor '{name}'") from None
        else:
            full = torch.empty(shapes[name])
        full = full.to(device=target.device, dtype=target.dtype)
        if isinstance(target, DTensor):
            target.copy_(distribute_tensor(full, target.device_mesh, target.placements, src_data_rank=0))
        else:
            if dist.is_initialized() and dist.get_world_size() > 1:
                dist.broadcast(full, src=0)
            target.copy_(full)
        del full


class _ShardsOnDemand(dict):
    """name -> tensor of a checkpoint (ours or HF's layout), read through model.checkpoint.iter_checkpoint (names,
    shapes and completeness checked there): the next shard is read only when a requested name is not loaded yet."""

    def __init__(self, model_dir, config: MPTConfig, verify: str = "full"):
        super().__init__()
        self._shards = iter_checkpoint(model_dir, config, verify=verify)

    def pop(self, name):
        while not dict.__contains__(self, name):
            try:
                _, tensors = next(self._shards)
            except StopIteration:
                raise KeyError(name) from None
            self.update(tensors)
        return dict.pop(self, name)

    def finish(self) -> None:
        """Read what is left (an HF layout's tied lm_head, say): the checks at the end of the checkpoint run."""
        for _ in self._shards:
            pass


def build_sharded_model(config: MPTConfig, d: Dist, pcfg, init_from=None, seed: int = 0, compile=False,
                        verify: str = "full", lora=None) -> MPT:
    """Meta build -> LoRA adapters (when `lora`, the run config's `lora` section, is enabled) -> parallelize ->
    to_empty -> weights from scratch (seeded MPT init) or a checkpoint (ours or HF's layout), and the adapters' init
    (A Kaiming-uniform from `seed`, B zero). `pcfg`: the run config's `parallel` section.

    With LoRA the base is frozen and, under mixed_precision bf16, stored in bf16 (FSDP2 needs one dtype among a
    unit's *trainable* parameters only): 2 bytes per frozen parameter instead of a 4-byte fp32 master that never
    changes. The adapters keep fp32 masters like any trained parameter. The adapters go in before sharding and
    checkpointing wrappers, so their names are the plain `blocks.0.attn.Wqkv.lora_A.weight`.

    Afterwards every rank's global generators are seeded with seed + rank: the weights came from the shared seed
    (one init on rank 0, scattered), but stochastic ops such as dropout must draw different masks on each rank,
    or every rank's slice of the global batch would share them."""
    with torch.device("meta"):
        model = MPT(config)
    adapters = {}  # LoRA: {name: shape} of the adapter tensors, filled after the base's
    if lora is not None and lora.enabled:
        add_lora(model, lora.rank, lora.alpha, lora.dropout, lora.targets,
                 base_dtype=torch.bfloat16 if pcfg.mixed_precision == "bf16" else None)
        adapters = {name: tuple(t.shape) for name, t in adapter_tensors(model.state_dict()).items()}
    parallelize(model, d.mesh, pcfg.mixed_precision, pcfg.activation_checkpointing, pcfg.reshard_after_forward,
                compile)
    model.to_empty(device=d.device)
    shapes = dict(expected_shapes(config), **adapters)
    source = None  # rank 0 only
    if init_from is not None:
        if d.is_main:
            if expected_shapes(read_config(init_from)) != expected_shapes(config):
                raise ValueError(f"model.init_from = {init_from}: its config has different shapes from the "
                                 f"model config of this run")
            source = _ShardsOnDemand(init_from, config, verify)
    elif d.is_main:
        source = build_model(config, device="cpu", seed=seed).state_dict()  # MPT's init on rank 0's CPU
    if adapters and d.is_main:  # the source dict (or its lazy reader) hands them out beside the base tensors
        source.update(initial_adapter_tensors(model, torch.Generator().manual_seed(seed)))
    fill_from_rank0(model, source, shapes, d.rank)
    if isinstance(source, _ShardsOnDemand):
        source.finish()
    seed_rngs(seed + d.rank)
    return model
