"""LION (EvoLved Sign Momentum), our own `torch.optim.Optimizer`.

Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms" (arXiv 2302.06675), the "Lion Optimizer"
algorithm box; facts in ../shared/spec/mpt.md section 15. Per parameter with a gradient g, momentum m,
learning rate lr_t and decoupled weight decay, in this order:

    1. theta <- theta * (1 - decay_t)                  decay of the pre-update weights
    2. c     <- beta1 * m + (1 - beta1) * g
    3. theta <- theta - lr_t * sign(c)                 sign(0) = 0, as torch.sign
    4. m     <- beta2 * m + (1 - beta2) * g

decay_t depends on `decay_mode`:
- "lr" (the paper, lucidrains' lion-pytorch default): decay_t = lr_t * weight_decay;
- "schedule" (llm-foundry's DecoupledLionW): decay_t = (lr_t / initial_lr) * weight_decay, so the decay follows the
  schedule factor rather than lr itself and at the peak lr the per-step shrink is exactly weight_decay. Converting:
  wd_schedule = peak_lr * wd_lr (RecGPT fine-tuning: 1e-7 at lr 1e-5 is 0.01 in the paper's convention).

The update is elementwise, so under FSDP2 it runs on each rank's local shard (`DTensor.to_local()`) with no
communication. `foreach=True` (default) updates all tensors of a group with torch._foreach_* kernels; it does the
same floating-point operations in the same order as the per-tensor path, so both give bit-identical results.
The only state is `exp_avg` (one tensor per parameter, half of AdamW's); `initial_lr` is kept in each group.
"""
import warnings
from typing import Callable, Optional

import torch
from torch.optim import Optimizer

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - torch without distributed
    DTensor = ()


def _local(t: torch.Tensor) -> torch.Tensor:
    """The rank-local shard of an FSDP2 DTensor (a view: in-place updates reach the parameter), else t."""
    return t.to_local() if isinstance(t, DTensor) else t


class Lion(Optimizer):
    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0,
                 decay_mode: str = "lr", foreach: Optional[bool] = None):
        if not lr > 0.0:
            raise ValueError(f"optim.lr = {lr}: LION needs a learning rate > 0")
        if len(betas) != 2 or not all(0.0 <= b <= 1.0 for b in betas):
            raise ValueError(f"optim.betas = {betas}: need two values in [0, 1]")
        if weight_decay < 0.0:
            raise ValueError(f"optim.weight_decay = {weight_decay}: must be >= 0")
        if decay_mode not in ("lr", "schedule"):
            raise ValueError(f"optim.decay_mode = {decay_mode!r}: must be 'lr' (paper) or 'schedule' (llm-foundry)")
        if decay_mode == "schedule" and weight_decay >= 1e-3:
            warnings.warn(f"optim.weight_decay = {weight_decay} with decay_mode 'schedule' shrinks the weights by "
                          f"that fraction every step at the peak lr; llm-foundry warns at >= 1e-3", stacklevel=2)
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, decay_mode=decay_mode,
                        foreach=foreach)
        super().__init__(params, defaults)
        for group in self.param_groups:
            group.setdefault("initial_lr", group["lr"])

    @torch.no_grad()
    def step(self, closure: Optional[Callable] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, moms = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lion does not support sparse gradients")
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(_local(p))
                grads.append(_local(p.grad))
                moms.append(_local(state["exp_avg"]))
            if not params:
                continue
            lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
            decay = lr * wd if group["decay_mode"] == "lr" else (lr / group["initial_lr"]) * wd
            foreach = group["foreach"]
            if foreach is None:  # default: the vectorised path whenever all tensors share a device
                foreach = len({t.device for t in params}) == 1
            (_lion_foreach if foreach else _lion_single)(params, grads, moms, lr, beta1, beta2, decay)
        return loss


def _lion_single(params, grads, moms, lr, beta1, beta2, decay):
    for p, g, m in zip(params, grads, moms):
        if decay != 0.0:
            p.mul_(1.0 - decay)
        c = m.mul(beta1).add_(g, alpha=1.0 - beta1)
        p.add_(c.sign_(), alpha=-lr)
        m.mul_(beta2).add_(g, alpha=1.0 - beta2)


def _lion_foreach(params, grads, moms, lr, beta1, beta2, decay):
    if decay != 0.0:
        torch._foreach_mul_(params, 1.0 - decay)
    c = torch._foreach_mul(moms, beta1)
    torch._foreach_add_(c, grads, alpha=1.0 - beta1)
    torch._foreach_sign_(c)
    torch._foreach_add_(params, c, alpha=-lr)
    del c
    torch._foreach_mul_(moms, beta2)
    torch._foreach_add_(moms, grads, alpha=1.0 - beta2)
