"""torch LR schedulers drive the module optimizers' learning rate (``opt.optimizer`` / ``opt.param_groups``)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.optim import lr_scheduler

import zoopt
from zoopt.cma_es import CMAES
from zoopt.openai_es import OpenAIES
from zoopt.problems import flatten_params
from zoopt.training.strategy_module import StrategyModule


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g)


BUILD = {
    "polystep": lambda m: zoopt.PolyStep(m, rank=None, seed=0),
    "eggroll": lambda m: zoopt.EGGROLL(m, popsize=8, rank=1, sigma=0.05, lr=0.05, seed=0),
    "openai_es": lambda m: StrategyModule(m, OpenAIES(flatten_params(m), popsize=8, sigma=0.05, lr=0.05,
                                                      optimizer="sgd", seed=0)),
}


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def _run(name, steps, schedule=None):
    model = _model()
    opt = BUILD[name](model)
    sched = schedule(opt.optimizer) if schedule is not None else None
    x, y, loss = *_batch(), torch.nn.CrossEntropyLoss()
    thetas, lrs = [_flat(model)], []
    for _ in range(steps):
        opt.step((x, y), loss)
        if sched is not None:
            sched.step()
            lrs.append((opt.param_groups[0]["lr"], sched.get_last_lr()[0]))
        thetas.append(_flat(model))
    return thetas, lrs


@pytest.mark.parametrize("name", list(BUILD))
def test_a_scheduler_that_zeroes_lr_stops_the_model(name):
    free, _ = _run(name, 4)
    assert not torch.equal(free[4], free[1])  # without the scheduler the model keeps moving
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*lr_scheduler.step.*")  # step order as torch expects
        stopped, lrs = _run(name, 4, lambda o: lr_scheduler.StepLR(o, step_size=1, gamma=0.0))
    assert torch.equal(stopped[1], free[1]) and not torch.equal(stopped[1], stopped[0])
    for later in stopped[2:]:
        assert torch.equal(later, stopped[1])
    assert all(ours == theirs == 0.0 for ours, theirs in lrs)


@pytest.mark.parametrize("name", list(BUILD))
@pytest.mark.parametrize("make", [
    lambda o: lr_scheduler.LambdaLR(o, lambda t: 1.0 / (1 + t)),
    lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=4),
    lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=4, cycle_momentum=False),
], ids=["lambda", "cosine", "onecycle"])
def test_schedulers_set_the_lr_the_next_step_uses(name, make):
    _, lrs = _run(name, 3, make)
    assert len({ours for ours, _ in lrs}) == 3  # the lr really changes every step
    assert all(ours == theirs for ours, theirs in lrs)


@pytest.mark.parametrize("name", list(BUILD))
def test_resume_keeps_the_scheduled_lr_bit_identical(name):
    halve = lambda o: lr_scheduler.StepLR(o, step_size=1, gamma=0.5)  # noqa: E731
    straight, _ = _run(name, 4, halve)
    x, y, loss = *_batch(), torch.nn.CrossEntropyLoss()
    model = _model()
    opt = BUILD[name](model)
    sched = halve(opt.optimizer)
    for _ in range(2):
        opt.step((x, y), loss)
        sched.step()
    state, sched_state = opt.state_dict(), sched.state_dict()
    model2 = _model()
    opt2 = BUILD[name](model2)
    sched2 = halve(opt2.optimizer)  # torch's order: scheduler, then both state dicts
    opt2.load_state_dict(state)
    sched2.load_state_dict(sched_state)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == sched.get_last_lr()[0]
    for _ in range(2):
        opt2.step((x, y), loss)
        sched2.step()
    assert torch.equal(_flat(model2), straight[4])


def test_polystep_lr_scales_the_step_radius_and_is_checked():
    model = _model()
    opt = zoopt.PolyStep(model, rank=None, seed=0, lr=0.5)
    opt.step(_batch(), torch.nn.CrossEntropyLoss())
    full = zoopt.PolyStep(_model(), rank=None, seed=0)
    full.step(_batch(), torch.nn.CrossEntropyLoss())
    assert opt.last_stats["alpha"] == 0.5 * full.last_stats["alpha"] > 0
    with pytest.raises(ValueError, match="lr"):
        zoopt.PolyStep(_model(), lr=-1.0)
    with pytest.raises(TypeError, match="lr"):
        zoopt.PolyStep(_model(), lr="0.1")


def test_strategies_without_a_torch_optimizer_say_so():
    model = _model()
    opt = StrategyModule(model, CMAES(flatten_params(model), popsize=8, seed=0))
    with pytest.raises(AttributeError, match="no learning rate"):
        _ = opt.param_groups
