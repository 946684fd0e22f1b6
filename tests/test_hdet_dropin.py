"""HDET as a drop-in OneCycleLR: with nothing to explore (one replica, or spread 0) the LR and
momentum equal torch's OneCycleLR at every step for every OneCycle argument; and the defaults of
the 'controller' schedule (floor, number of decaying syncs)."""
from __future__ import annotations

import itertools
import os
import sys
import warnings

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import hdet_cases as hc  # noqa: E402

from zoopt.hdet import HDETOneCycleLR, HDETSimulation  # noqa: E402
from zoopt.hdet.ensemble import DEFAULT_FLOOR_RATIO, EnsembleSchedule  # noqa: E402
from zoopt.hdet.schedule import OneCycleCurve  # noqa: E402

warnings.filterwarnings("ignore", message=".*lr_scheduler.*")

LENGTHS = {"total_steps": dict(total_steps=60), "epochs": dict(epochs=6, steps_per_epoch=10)}
FACTORS = {"default": {},
           "custom": dict(pct_start=0.25, div_factor=10.0, final_div_factor=100.0, base_momentum=0.8,
                          max_momentum=0.9)}
OPTIMIZERS = {"sgd-momentum": ("sgd", True), "adam-betas": ("adam", True), "sgd-no-cycle": ("sgd", False)}
CASES = list(itertools.product(["cos", "linear"], [False, True], LENGTHS, FACTORS, OPTIMIZERS, [-1, 17]))


def _optimizer(kind):
    p = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))]
    groups = [{"params": [p[0]]}, {"params": [p[1]]}]
    return torch.optim.SGD(groups, lr=0.1, momentum=0.9) if kind == "sgd" else torch.optim.Adam(groups, lr=0.1)


def _momenta(opt):
    return [g["betas"][0] if "betas" in g else g["momentum"] for g in opt.param_groups]


def _resumable(cls, opt, last_epoch, **kw):
    """A scheduler resumed torch's way: a first one writes the group keys, a second resumes."""
    if last_epoch >= 0:
        cls(opt, **kw)
    return cls(opt, last_epoch=last_epoch, **kw)


@pytest.mark.parametrize("anneal,three_phase,length,factors,optimizer,last_epoch", CASES)
def test_single_process_equals_onecycle_at_every_step(anneal, three_phase, length, factors, optimizer, last_epoch):
    kind, cycle = OPTIMIZERS[optimizer]
    kw = dict(max_lr=[1e-2, 3e-3], anneal_strategy=anneal, three_phase=three_phase, cycle_momentum=cycle,
              **LENGTHS[length], **FACTORS[factors])
    o1, o2 = _optimizer(kind), _optimizer(kind)
    ref = _resumable(torch.optim.lr_scheduler.OneCycleLR, o1, last_epoch, **kw)
    ours = _resumable(HDETOneCycleLR, o2, last_epoch, **kw, spread=0.1, sync_every=4)
    assert ours.last_epoch == ref.last_epoch
    for t in range(ref.last_epoch, ref.total_steps + 1):        # torch allows last_epoch == total_steps
        assert ours.get_last_lr() == pytest.approx(ref.get_last_lr(), rel=1e-12, abs=0), t
        assert [g["lr"] for g in o2.param_groups] == pytest.approx([g["lr"] for g in o1.param_groups], rel=1e-12)
        assert _momenta(o2) == pytest.approx(_momenta(o1), rel=1e-12), t
        if t == ref.total_steps:
            break
        o1.step(), o2.step()
        ref.step()
        ours.step(torch.tensor(float(t % 3)) if t % 2 else None)
    for sched in (ref, ours):
        with pytest.raises(ValueError):
            sched.step()


def test_readme_example_anneals_like_onecycle():
    """The issue's cases: 100 steps (old code held 0.009995 from step 30) and the README's 10k
    steps with sync_every=1000 (old code: 2.1e-3 at step 3000)."""
    for total, sync in ((100, 1000), (10_000, 1000)):
        o1, o2 = _optimizer("sgd"), _optimizer("sgd")
        ref = torch.optim.lr_scheduler.OneCycleLR(o1, max_lr=1e-2, total_steps=total)
        ours = HDETOneCycleLR(o2, max_lr=1e-2, total_steps=total, spread=0.1, sync_every=sync)
        for _ in range(total - 1):
            o1.step(), o2.step()
            ref.step(), ours.step(torch.tensor(1.0))
            assert ours.get_last_lr() == pytest.approx(ref.get_last_lr(), rel=1e-12)
        assert ours.get_last_lr()[0] < 1e-7


@pytest.mark.parametrize("mode", ["line", "copies"])
@pytest.mark.parametrize("replicas,spread", [(4, 0.0), (1, 0.3)])
def test_simulation_without_exploration_is_onecycle(mode, replicas, spread):
    """Replicas with different losses but no spread (or one replica): no signal, plain OneCycle."""
    kw = dict(max_lr=[0.3, 0.1], total_steps=hc.TOTAL, anneal_strategy="linear", three_phase=True)
    ref_opt = _optimizer("adam")
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, **kw)
    model = hc.make_model()
    opt = hc.make_optimizer(model, "adam")
    sim = HDETSimulation(model, opt, replicas, mode=mode, spread=spread, sync_every=3, auto_lr_start=0,
                         temperature=1e-3, **kw)
    for t in range(hc.TOTAL):
        expect = torch.tensor(ref.get_last_lr(), dtype=torch.float64).expand(replicas, -1)
        assert torch.allclose(sim.lrs(), expect, rtol=1e-12, atol=0), t
        sim.step([hc.batch(t, r) for r in range(replicas)], hc.loss_fn)
        assert _momenta(opt) == pytest.approx(_momenta(ref_opt), rel=1e-12)   # momentum used at step t
        ref_opt.step()
        ref.step()
    assert sim.history == []


def _ensemble(lr_floor=None, total=50, start=15, sync=5):
    curve = OneCycleCurve(2, [0.1, 0.02], total_steps=total)
    return EnsembleSchedule(4, curve, spread=0.2, sync_every=sync, auto_lr_start=start, lr_floor=lr_floor), curve


@pytest.mark.parametrize("total", [50, 52])
def test_without_signal_the_last_used_lr_is_the_floor(total):
    """K counts only syncs whose LR some step uses: with equal losses (Δ = 0) the base decays
    from its value at auto_lr_start to the floor exactly at the last step; the default floor is
    the paper's residual ratio 0.22 of that start value (not OneCycle's max_lr/250,000)."""
    ens, curve = _ensemble(total=total)
    start = curve.lr(14)              # the first controller sync (t = 15) averages the LRs of step 14
    assert ens.start_lr == start
    assert ens.lr_floor == pytest.approx([DEFAULT_FLOOR_RATIO * s for s in start], rel=1e-12)
    assert DEFAULT_FLOOR_RATIO == 0.22
    assert ens.num_controller_syncs == len(range(15, total, 5))     # syncs at 15, ..., < total
    used = []
    for _ in range(total):
        lrs = ens.lrs()
        used.append(lrs.mean(0))
        if ens.advance() and ens.controller_active():
            ens.controller_sync(lrs, torch.ones(4))
    assert used[-1].tolist() == pytest.approx(ens.lr_floor, rel=1e-9)
    assert used[14].tolist() == pytest.approx(start, rel=1e-12)
    assert all((a >= b - 1e-15).all() for a, b in zip(used[14:], used[15:]))   # non-increasing


def test_explicit_floor_and_no_used_sync():
    ens, _ = _ensemble(lr_floor=[1e-3, 2e-4])
    assert ens.lr_floor == [1e-3, 2e-4]
    late, _ = _ensemble(total=50, start=46)            # the only sync left is at t = total: no decay
    assert late.num_controller_syncs == 0 and late.controller.decay.tolist() == [0.0, 0.0]


def test_scalar_only_exploration_keeps_the_onecycle_lr():
    """LR spread 0 with an explored scalar: the scalar's controller runs, the LR stays OneCycle."""
    from zoopt.hdet import ExploredScalar

    scalar = ExploredScalar("x", 1.0, lambda value: None, spread=0.3, temperature=0.01)
    curve = OneCycleCurve(1, 0.1, total_steps=40)
    ens = EnsembleSchedule(4, curve, spread=0.0, sync_every=5, auto_lr_start=0, hyperparams=[scalar])
    for t in range(39):
        assert ens.lrs()[:, 0].tolist() == pytest.approx([curve.lr(t)[0]] * 4, rel=1e-12)
        used, values = ens.lrs(), scalar.values()[:, 0]
        if ens.advance() and ens.controller_active():
            ens.controller_sync(used, -values)                 # a higher value gives a lower loss
    assert scalar.base > 1.05
