"""HDET pieces in one process: OneCycle curve, multipliers, decay, controller, permutations,
simulation resume, explored scalars, argument checks."""
from __future__ import annotations

import io
import math
import os
import sys
import warnings

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import hdet_cases as hc  # noqa: E402

from zoopt.hdet import (HDETOneCycleLR, HDETSimulation, PermutationStream, ZeroOrderController,  # noqa: E402
                        decay_from_floor, module_attribute, spread_multipliers)

warnings.filterwarnings("ignore", message=".*lr_scheduler.*")

def test_multipliers_match_paper_example():
    rho = spread_multipliers(8, 1 / 9)
    expect = [0.8889, 0.9206, 0.9524, 0.9841, 1.0159, 1.0476, 1.0794, 1.1111]
    assert rho.tolist() == pytest.approx(expect, abs=1e-4)
    assert rho.sum().item() == pytest.approx(8.0, abs=1e-12)
    assert spread_multipliers(2, 0.3).tolist() == pytest.approx([0.7, 1.3])
    assert spread_multipliers(1, 0.3).tolist() == [1.0]
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="spread"):
            spread_multipliers(4, bad)


def test_decay_from_floor_reaches_floor_and_is_checked():
    g = decay_from_floor([1e-3, 2e-3], [1e-4, 2e-3], 20)
    assert 1e-3 * (1 - g[0]) ** 20 == pytest.approx(1e-4, rel=1e-10)
    assert g[1] == 0.0 and 0 <= g[0] < 1
    for floor in (2e-3, 0.0, -1.0):
        with pytest.raises(ValueError, match="lr_floor"):
            decay_from_floor([1e-3], [floor], 10)


def test_controller_moves_towards_lower_loss():
    lrs = torch.tensor([[0.8e-3, 1.0], [1.0e-3, 1.0], [1.2e-3, 1.0]], dtype=torch.float64)
    good_high = torch.tensor([3.0, 2.9, 2.8])                  # higher LR, lower loss
    for losses, sign in ((good_high, 1), (good_high.flip(0), -1)):
        c = ZeroOrderController(2, temperature=0.05, meta_lr=0.5, momentum=0.9)
        base = c.update(losses, lrs)
        assert sign * (base[0].item() - 1e-3) > 0
        assert base[1].item() == pytest.approx(1.0)               # equal values: no move
        assert sign * c.last["delta"][0].item() > 0
    c = ZeroOrderController(1, temperature=0.1, decay=0.1)
    base = c.update(torch.tensor([1.0, 1.0]), torch.tensor([[1.0], [3.0]]))
    assert base.item() == pytest.approx(0.9 * 2.0)                 # equal losses: only the decay
    w = c.weights(torch.tensor([1.0, float("nan"), float("inf")]))
    assert w.tolist() == [1.0, 0.0, 0.0]


def test_controller_linearisation():
    """Small loss gaps: Δ ≈ −(mean LR/σ)·Cov(L, ρ) (research note A.4)."""
    rho = spread_multipliers(8, 0.1)
    losses = 2.0 - 0.01 * (rho - 1)
    c = ZeroOrderController(1, temperature=10.0, meta_lr=1.0, momentum=0.0)
    c.update(losses, (1e-3 * rho).unsqueeze(1))
    cov = ((losses - losses.mean()) * (rho - 1)).mean()
    assert c.last["delta"].item() == pytest.approx(-(1e-3 / 10.0) * cov.item(), rel=1e-3)


def test_controller_step_is_bounded_by_meta_lr_times_spread():
    """|Δ| ≤ α·η̄, so one sync moves the base by at most λ·α·η̄ (β = 0), and by (1−β)·λ·α·η̄ at
    the first sync with momentum: how far the paper's controller can move the LR in a short run."""
    n, alpha, base = 4, 0.5, 0.02
    rho = spread_multipliers(n, alpha)
    values = (base * rho).unsqueeze(1)
    best_low = torch.tensor([1.0, 2.0, 3.0, 4.0])                 # lowest multiplier wins outright
    c = ZeroOrderController(1, temperature=1e-3, meta_lr=0.8, momentum=0.0)
    assert c.update(best_low, values).item() == pytest.approx(base * (1 - 0.8 * alpha), rel=1e-9)
    c = ZeroOrderController(1, temperature=1e-3, meta_lr=0.8, momentum=0.9)
    assert c.update(best_low, values).item() == pytest.approx(base * (1 - 0.1 * 0.8 * alpha), rel=1e-9)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        c = ZeroOrderController(1, temperature=0.05, meta_lr=0.8, momentum=0.0)
        moved = c.update(torch.rand(n, generator=g), values).item() - base
        assert abs(moved) <= 0.8 * alpha * base * (1 + 1e-12)
    c = ZeroOrderController(1, temperature=1e-3, meta_lr=5.0, momentum=0.0, lower=0.015)
    assert c.update(best_low, values).item() == 0.015               # never below the floor


def test_permutation_stream_is_seeded_and_resumable():
    a, b = PermutationStream(5, 3), PermutationStream(5, 3)
    first = a.draw(2)
    torch.manual_seed(123)
    torch.rand(10)                                             # global RNG use does not matter
    assert torch.equal(first, b.draw(2))
    state = a.state_dict()
    nxt = a.draw(3)
    c = PermutationStream(5, 99)
    c.load_state_dict(state)
    assert torch.equal(c.draw(3), nxt)
    assert sorted(nxt[0].tolist()) == list(range(5))


@pytest.mark.parametrize("mode,opt", [("line", "adam"), ("copies", "sgd")])
def test_simulation_resume_is_exact(mode, opt):
    def build():
        model = hc.make_model()
        optim = hc.make_optimizer(model, opt)
        return model, optim, HDETSimulation(model, optim, 3, mode=mode, **hc.HDET_KW)

    def run(model, optim, sim, start, stop):
        for t in range(start, stop):
            sim.step([hc.batch(t, r) for r in range(3)], hc.loss_fn)

    model, optim, sim = build()
    run(model, optim, sim, 0, 30)
    straight = [torch.cat([p.reshape(-1) for p in sim.replica_parameters(r)]) for r in range(3)]
    model, optim, sim = build()
    run(model, optim, sim, 0, 17)
    buf = io.BytesIO()
    torch.save({"m": model.state_dict(), "o": optim.state_dict(), "s": sim.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=False)
    model, optim, sim = build()
    model.load_state_dict(ck["m"]), optim.load_state_dict(ck["o"]), sim.load_state_dict(ck["s"])
    run(model, optim, sim, 17, 30)
    for r in range(3):
        assert torch.equal(torch.cat([p.reshape(-1) for p in sim.replica_parameters(r)]), straight[r])
    assert [h["step"] for h in sim.history] == [10, 15, 20, 25, 30]


class _Scaled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1).double()
        self.scale = 1.0

    def forward(self, x):
        return self.scale * self.lin(x)


@pytest.mark.parametrize("signal", ["heldout", "train"])
def test_scalar_driven_by_heldout_loss(signal):
    """A scale the training loss is indifferent to (it only sees detached targets) but the
    held-out loss prefers larger: the held-out signal raises its base, replicas use distinct values."""
    torch.manual_seed(0)
    model = _Scaled()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scale = module_attribute(model, "scale", 1.0, spread=0.3, signal=signal, temperature=0.01)
    sim = HDETSimulation(model, opt, 4, max_lr=0.05, total_steps=60, sync_every=5, auto_lr_start=0,
                         hyperparams=[scale], perm_seed=5)
    x_val = torch.randn(64, 4, dtype=torch.float64)
    target = 3.0 * model.lin(x_val).detach()

    def heldout(m):
        return torch.nn.functional.mse_loss(m(x_val), target)

    def train_loss(m, b):
        return torch.nn.functional.mse_loss(m.lin(b[0]), m.lin(b[0]).detach() + 0.0 * b[1].sum())

    seen = set()
    for t in range(40):
        sim.step([hc.batch(t, r) for r in range(4)], train_loss, heldout_fn=heldout)
        seen.add(tuple(round(scale.value_for(r), 9) for r in range(4)))
    if signal == "heldout":
        assert scale.base > 1.3
    else:                                           # training loss carries no signal: base stays
        assert scale.base == pytest.approx(1.0, abs=1e-12)
    values = {v for vals in seen for v in vals}
    assert len(values) > 4 if signal == "heldout" else values == {0.7, 0.9, 1.1, 1.3}
    assert not torch.equal(scale.perm, sim.ensemble.perms[0])


def test_argument_checks():
    model = hc.make_model()
    opt = hc.make_optimizer(model)
    with pytest.raises(ValueError, match="total_steps"):
        HDETOneCycleLR(opt, max_lr=0.1)
    with pytest.raises(ValueError, match="spread"):
        HDETOneCycleLR(opt, max_lr=0.1, total_steps=10, spread=1.5)
    with pytest.raises(ValueError, match="sync_every"):
        HDETOneCycleLR(opt, max_lr=0.1, total_steps=10, sync_every=0)
    with pytest.raises(ValueError, match="schedule_after_start"):
        HDETOneCycleLR(opt, max_lr=0.1, total_steps=10, schedule_after_start="x")
    with pytest.raises(ValueError, match="lr_floor"):
        HDETOneCycleLR(opt, max_lr=0.1, total_steps=10, lr_floor=1.0)
    with pytest.raises(ValueError, match="lr_floor"):
        HDETOneCycleLR(opt, max_lr=0.1, total_steps=10, lr_floor=1e-3, schedule_after_start="onecycle")
    with pytest.raises(ValueError, match="temperature"):
        HDETOneCycleLR(opt, max_lr=0.1, total_steps=10, temperature=0.0)
    with pytest.raises(ValueError, match="max_lr"):
        HDETOneCycleLR(opt, max_lr=[0.1], total_steps=10)
    with pytest.raises(TypeError):
        HDETOneCycleLR(opt, max_lr=0.1, total_steps=10).step(epoch=3)
    wd = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.01)
    with pytest.raises(ValueError, match="copies"):
        HDETSimulation(model, wd, 2, max_lr=0.1, total_steps=10)
    sched = HDETOneCycleLR(hc.make_optimizer(model), max_lr=0.1, total_steps=10, sync_every=2, auto_lr_start=0)
    sched.step(), sched.step()                      # one process: OneCycleLR's step() needs no loss
    assert math.isfinite(sched.get_last_lr()[0])
    with pytest.raises(ValueError, match="init_noise"):
        HDETOneCycleLR(opt, max_lr=0.1, total_steps=10, init_noise=-1.0)


def _ensemble(**kw):
    from zoopt.hdet.ensemble import EnsembleSchedule
    from zoopt.hdet.schedule import OneCycleCurve

    curve = OneCycleCurve(1, 0.1, total_steps=100)
    return EnsembleSchedule(4, curve, **{"spread": 0.2, "sync_every": 5, "auto_lr_start": 0, **kw}), curve


@pytest.mark.parametrize("sign", [-1.0, 0.0, 1.0])
def test_onecycle_mode_scales_the_running_curve(sign):
    ens, curve = _ensemble(schedule_after_start="onecycle", temperature=0.01)
    for _ in range(6):
        for _ in range(5):
            used = ens.lrs()
            ens.advance()
        losses = sign * used[:, 0] / used[:, 0].mean()         # sign<0: higher LR, lower loss
        ens.controller_sync(used, losses)
        assert ens.lrs().mean(0)[0].item() == pytest.approx(ens.scale[0].item() * curve.lr(ens.t)[0], rel=1e-12)
    k = ens.scale[0].item()
    assert (k > 1.05) if sign < 0 else (k < 0.95) if sign > 0 else k == pytest.approx(1.0)


def test_spread_inert_until_first_sync_in_code_mode():
    ens, curve = _ensemble(spread_before_auto_lr=False, auto_lr_start=10)
    assert torch.equal(ens.lrs()[:, 0], torch.full((4,), curve.lr(0)[0], dtype=torch.float64))
    paper, _ = _ensemble(auto_lr_start=10)
    assert len(set(paper.lrs()[:, 0].tolist())) == 4                 # paper: fan-out from step 0
    for _ in range(10):
        used = ens.lrs()
        ens.advance()
    ens.controller_sync(used, torch.zeros(4))
    assert len(set(ens.lrs()[:, 0].tolist())) == 4


@pytest.mark.parametrize("auto_lr,average", [(False, True), (True, False)])
def test_switches_are_independent(auto_lr, average):
    model = hc.make_model()
    opt = hc.make_optimizer(model, "adam")
    sim = HDETSimulation(model, opt, 2, mode="copies", **{**hc.HDET_KW, "auto_lr": auto_lr, "average": average})
    perms = set()
    for t in range(hc.TOTAL):
        sim.step([hc.batch(t, r) for r in range(2)], hc.loss_fn)
        perms.add(tuple(sim.ensemble.perms.flatten().tolist()))
        a, b = (torch.cat([p.reshape(-1) for p in sim.replica_parameters(r)]) for r in range(2))
        if (t + 1) % hc.T == 0:
            assert torch.equal(a, b) == average
    assert (len(perms) > 1) == auto_lr and (len(sim.history) > 0) == auto_lr
