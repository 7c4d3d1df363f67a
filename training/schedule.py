"""Step-based learning-rate schedules (Composer's conventions, which RecGPT's llm-foundry runs used).

lr(t) = peak_lr * multiplier(t), t = number of optimizer steps already taken (0 for the first update).

- cosine_with_warmup:   t < t_warmup: t / t_warmup (linear from 0, as Composer: the very first update uses lr 0
                        when t_warmup > 0); then alpha_f + (1 - alpha_f) * 0.5 * (1 + cos(pi * tau)),
                        tau = (t - t_warmup) / (t_max - t_warmup) clipped to [0, 1]. Ends at alpha_f * peak.
- linear_decay_with_warmup: same warmup, then 1 + (alpha_f - 1) * tau (linear from 1 to alpha_f).
- constant_with_warmup: same warmup, then 1.
- constant:             1 at every step.

The schedule is a pure function of the step, so a checkpoint only needs the step to restore it.
"""
import math

SCHEDULES = ("cosine_with_warmup", "linear_decay_with_warmup", "constant_with_warmup", "constant")


def check_schedule(name: str, t_warmup: int, t_max: int, alpha_f: float):
    if name not in SCHEDULES:
        raise ValueError(f"schedule.name = {name!r}: must be one of {SCHEDULES}")
    if not (isinstance(t_warmup, int) and t_warmup >= 0):
        raise ValueError(f"schedule.t_warmup = {t_warmup!r}: must be an int >= 0 (steps)")
    if not 0.0 <= alpha_f <= 1.0:
        raise ValueError(f"schedule.alpha_f = {alpha_f}: must be in [0, 1]")
    if name in ("cosine_with_warmup", "linear_decay_with_warmup") and t_max <= t_warmup:
        raise ValueError(f"schedule.t_warmup = {t_warmup} must be smaller than the run's total steps ({t_max})")


def lr_multiplier(step: int, name: str, t_warmup: int, t_max: int, alpha_f: float = 0.0) -> float:
    if name == "constant":
        return 1.0
    if step < t_warmup:
        return step / t_warmup
    if name == "constant_with_warmup":
        return 1.0
    tau = min(max((step - t_warmup) / max(t_max - t_warmup, 1), 0.0), 1.0)
    if name == "cosine_with_warmup":
        return alpha_f + (1.0 - alpha_f) * 0.5 * (1.0 + math.cos(math.pi * tau))
    if name == "linear_decay_with_warmup":
        return 1.0 + (alpha_f - 1.0) * tau
    raise ValueError(f"schedule.name = {name!r}: must be one of {SCHEDULES}")
