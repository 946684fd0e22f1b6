"""Warm noisy initialisation (paper Eq. 9): per-tensor std ν·RMS, one stream per rank, the
same ε_r in the scheduler and in both simulation modes, removed by averaging."""
from __future__ import annotations

import os
import sys
import warnings

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import hdet_cases as hc  # noqa: E402

from zoopt.hdet import HDETOneCycleLR, HDETSimulation  # noqa: E402
from zoopt.hdet.warm_init import perturb_, warm_noise  # noqa: E402

warnings.filterwarnings("ignore", message=".*lr_scheduler.*")


def test_noise_is_per_tensor_rms_and_per_rank():
    torch.manual_seed(0)
    big, small, zero = torch.randn(400, 300) * 3.0, torch.randn(50) * 0.01, torch.zeros(7)
    params = [big, small, zero]
    eps0 = warm_noise(params, 0.01, rank=0, seed=5)
    for p, e in zip(params[:2], eps0):
        assert e.shape == p.shape and e.dtype == p.dtype
        rms = p.pow(2).mean().sqrt().item()
        assert e.std().item() == pytest.approx(0.01 * rms, rel=0.2 if p.numel() < 100 else 0.02)
    assert torch.equal(eps0[2], zero)                                  # zeros stay zeros
    assert all(torch.equal(a, b) for a, b in zip(eps0, warm_noise(params, 0.01, 0, 5)))
    eps1 = warm_noise(params, 0.01, rank=1, seed=5)
    assert not torch.equal(eps0[0], eps1[0])                           # a distinct stream per rank
    assert abs(torch.corrcoef(torch.stack([eps0[0].flatten(), eps1[0].flatten()]))[0, 1].item()) < 0.02
    assert not torch.equal(eps0[0], warm_noise(params, 0.01, 0, seed=6)[0])
    state = torch.get_rng_state()
    warm_noise(params, 0.01, 3, 5)
    assert torch.equal(state, torch.get_rng_state())                   # global RNG untouched
    with pytest.raises(ValueError, match="init_noise"):
        warm_noise(params, -0.1, 0)


def test_scheduler_perturbs_this_rank_only_at_a_fresh_start():
    model = hc.make_model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = hc.make_optimizer(model)
    order = [p for g in opt.param_groups for p in g["params"]]
    snapshot = [p.detach().clone() for p in order]
    HDETOneCycleLR(opt, max_lr=0.1, total_steps=10, init_noise=0.01, init_seed=3)
    for p, s, e in zip(order, snapshot, warm_noise(snapshot, 0.01, 0, 3)):
        assert torch.equal(p.detach(), s + e)
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    resumed = hc.make_model()
    opt3 = hc.make_optimizer(resumed)
    HDETOneCycleLR(opt3, max_lr=0.1, total_steps=10)
    HDETOneCycleLR(opt3, max_lr=0.1, total_steps=10, init_noise=0.01, last_epoch=4)   # resume: no noise
    assert all(torch.equal(p, b) for p, b in zip(resumed.parameters(), before))


def test_simulation_line_equals_copies_with_warm_init():
    """Both modes start replica r at θ̄ + ε_r (the scheduler's ε for rank r), evolve identically,
    and the first averaging leaves every replica at the mean."""
    n, kw = 3, dict(hc.HDET_KW, init_noise=0.05, init_seed=11)
    base = hc.make_model()
    base_params = [p.detach().clone() for g in hc.make_optimizer(base).param_groups for p in g["params"]]
    sims = {}
    for mode in ("line", "copies"):
        model = hc.make_model()
        sims[mode] = HDETSimulation(model, hc.make_optimizer(model, "sgd"), n, mode=mode, **kw)
    for r in range(n):
        expect = [b + e for b, e in zip(base_params, warm_noise(base_params, 0.05, r, 11))]
        for mode, sim in sims.items():
            got = sim.replica_parameters(r)
            assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(got, expect)), (mode, r)
    for t in range(2 * hc.T):
        for sim in sims.values():
            sim.step([hc.batch(t, r) for r in range(n)], hc.loss_fn)
        for r in range(n):
            a, b = (torch.cat([p.reshape(-1) for p in sims[m].replica_parameters(r)]) for m in ("line", "copies"))
            assert torch.allclose(a, b, rtol=0, atol=1e-10), (t, r)
        if t + 1 == hc.T:                                     # first sync: all replicas at the mean
            line = [torch.cat([p.reshape(-1) for p in sims["line"].replica_parameters(r)]) for r in range(n)]
            assert all(torch.equal(x, line[0]) for x in line) and sims["line"].offsets is None


def test_zero_noise_changes_nothing():
    params = [torch.randn(3, 3)]
    copy = [p.clone() for p in params]
    perturb_(params, 0.0, rank=2)
    assert torch.equal(params[0], copy[0])
