"""training.lion.Lion against lucidrains' lion-pytorch, a loop written from the paper's rule, and itself."""
import copy

import pytest
import torch
from lion_pytorch import Lion as ReferenceLion

from training.lion import Lion

# the tests use large decays on purpose, to make the decay visible in a few steps
pytestmark = pytest.mark.filterwarnings("ignore:optim.weight_decay")


def make_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 4, 2), (1,)]
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def grads_for(step, params, seed=100):
    g = torch.Generator().manual_seed(seed + step)
    return [torch.randn(p.shape, generator=g) for p in params]


def run(opt_factory, n_steps=12, lrs=None, seed=0):
    """Apply n_steps of the same gradient sequence; lrs (per step) emulates a schedule. Returns params per step."""
    params = make_params(seed)
    opt = opt_factory(params)
    history = []
    for t in range(n_steps):
        if lrs is not None:
            for group in opt.param_groups:
                group["lr"] = lrs[t]
        for p, g in zip(params, grads_for(t, params)):
            p.grad = g.clone()
        opt.step()
        history.append([p.detach().clone() for p in params])
    return history


def paper_loop(lr, betas, wd, n_steps=12, lrs=None, schedule_decay=False):
    """The algorithm box of Chen et al. 2023, written out with plain tensors."""
    beta1, beta2 = betas
    theta = [p.detach().clone() for p in make_params(0)]
    m = [torch.zeros_like(t) for t in theta]
    history = []
    for t in range(n_steps):
        eta = lrs[t] if lrs is not None else lr
        for i, g in enumerate(grads_for(t, theta)):
            decay = (eta / lr) * wd if schedule_decay else eta * wd
            theta[i] = theta[i] * (1 - decay)                           # 1. decay the pre-update weights
            c = beta1 * m[i] + (1 - beta1) * g                          # 2. interpolate
            theta[i] = theta[i] - eta * torch.sign(c)                   # 3. signed step
            m[i] = beta2 * m[i] + (1 - beta2) * g                       # 4. momentum
        history.append([x.clone() for x in theta])
    return history


def assert_histories(a, b, **tol):
    assert len(a) == len(b)
    for step, (pa, pb) in enumerate(zip(a, b)):
        for x, y in zip(pa, pb):
            torch.testing.assert_close(x, y, msg=lambda m: f"step {step}: {m}", **tol)


SCHEDULE = [1e-2 * f for f in (0.1, 0.5, 1.0, 1.0, 0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.1, 0.05)]


@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("foreach", [False, True])
def test_matches_lion_pytorch(wd, foreach):
    kw = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=wd)
    ours = run(lambda p: Lion(p, foreach=foreach, **kw))
    ref = run(lambda p: ReferenceLion(p, **kw))
    assert_histories(ours, ref, rtol=0, atol=0)  # same operations in the same order: bit-identical


def test_matches_lion_pytorch_with_schedule():
    kw = dict(lr=1e-2, betas=(0.95, 0.98), weight_decay=0.3)
    ours = run(lambda p: Lion(p, **kw), lrs=SCHEDULE)
    ref = run(lambda p: ReferenceLion(p, **kw), lrs=SCHEDULE)
    assert_histories(ours, ref, rtol=0, atol=0)


def test_schedule_scaled_decay_matches_lion_pytorch_decoupled():
    # lion-pytorch's decoupled_weight_decay divides wd by the initial lr: the llm-foundry DecoupledLionW rule
    kw = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.05)
    ours = run(lambda p: Lion(p, decay_mode="schedule", **kw), lrs=SCHEDULE)
    ref = run(lambda p: ReferenceLion(p, decoupled_weight_decay=True, **kw), lrs=SCHEDULE)
    assert_histories(ours, ref, rtol=1e-6, atol=1e-7)  # (lr/lr0)*wd vs lr*(wd/lr0): one rounding apart


@pytest.mark.parametrize("decay_mode", ["lr", "schedule"])
def test_matches_paper_loop(decay_mode):
    kw = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.2)
    ours = run(lambda p: Lion(p, decay_mode=decay_mode, **kw), lrs=SCHEDULE)
    ref = paper_loop(kw["lr"], kw["betas"], kw["weight_decay"], lrs=SCHEDULE, schedule_decay=decay_mode == "schedule")
    assert_histories(ours, ref, rtol=1e-6, atol=1e-7)


def test_schedule_decay_differs_from_lr_decay():
    # guards the option from being silently ignored: the two conventions give different weights
    kw = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.2)
    a = run(lambda p: Lion(p, decay_mode="lr", **kw), n_steps=3)
    b = run(lambda p: Lion(p, decay_mode="schedule", **kw), n_steps=3)
    assert not torch.allclose(a[-1][0], b[-1][0])


@pytest.mark.parametrize("decay_mode", ["lr", "schedule"])
def test_foreach_equals_per_tensor(decay_mode):
    kw = dict(lr=3e-3, betas=(0.9, 0.98), weight_decay=0.1, decay_mode=decay_mode)
    a = run(lambda p: Lion(p, foreach=True, **kw), lrs=SCHEDULE)
    b = run(lambda p: Lion(p, foreach=False, **kw), lrs=SCHEDULE)
    assert_histories(a, b, rtol=0, atol=0)


def test_every_coordinate_moves_by_lr_without_decay():
    params = make_params()
    before = [p.detach().clone() for p in params]
    opt = Lion(params, lr=1e-3)
    for p, g in zip(params, grads_for(0, params)):
        p.grad = g
    opt.step()
    for p, b in zip(params, before):
        torch.testing.assert_close((p.detach() - b).abs(), torch.full_like(b, 1e-3), rtol=1e-3, atol=0)


def test_params_without_grad_are_untouched():
    params = make_params()
    opt = Lion(params, lr=1e-2, weight_decay=0.5)
    before = params[1].detach().clone()
    for i, (p, g) in enumerate(zip(params, grads_for(0, params))):
        p.grad = None if i == 1 else g
    opt.step()
    assert torch.equal(params[1].detach(), before)
    assert params[1] not in opt.state


def test_state_dict_round_trip():
    kw = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, decay_mode="schedule")
    full = run(lambda p: Lion(p, **kw), n_steps=10, lrs=SCHEDULE)

    # run 4 steps, save, rebuild params + optimizer from the saved state, run the remaining 6
    params = make_params()
    opt = Lion(params, **kw)
    for t in range(4):
        opt.param_groups[0]["lr"] = SCHEDULE[t]
        for p, g in zip(params, grads_for(t, params)):
            p.grad = g
        opt.step()
    saved_params = [p.detach().clone() for p in params]
    saved_state = copy.deepcopy(opt.state_dict())
    assert set(saved_state["state"][0]) == {"exp_avg"}
    assert saved_state["param_groups"][0]["initial_lr"] == 1e-2

    params2 = [torch.nn.Parameter(x.clone()) for x in saved_params]
    opt2 = Lion(params2, lr=5.0)  # different constructor lr: the loaded groups must win
    opt2.load_state_dict(saved_state)
    assert opt2.param_groups[0]["initial_lr"] == 1e-2 and opt2.param_groups[0]["decay_mode"] == "schedule"
    for t in range(4, 10):
        opt2.param_groups[0]["lr"] = SCHEDULE[t]
        for p, g in zip(params2, grads_for(t, params2)):
            p.grad = g
        opt2.step()
        for x, y in zip(params2, full[t]):
            assert torch.equal(x.detach(), y), f"step {t} differs after reload"


def test_bad_hyperparameters_name_the_key():
    p = make_params()
    with pytest.raises(ValueError, match="optim.lr"):
        Lion(p, lr=0.0)
    with pytest.raises(ValueError, match="optim.betas"):
        Lion(p, betas=(0.9, 1.5))
    with pytest.raises(ValueError, match="optim.decay_mode"):
        Lion(p, decay_mode="adamw")
    with pytest.warns(UserWarning, match="weight_decay"):
        Lion(p, weight_decay=1e-2, decay_mode="schedule")
