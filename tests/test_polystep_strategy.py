"""PolyStep schedules, the radius rule, the particle update and the ask/tell strategy."""
import math

import pytest
import torch

import zoopt
from zoopt.polystep import BlockSpec, Constant, Cosine, Linear, PolyStepES
from zoopt.polystep.particles import ParticleStepper
from zoopt.polystep.schedules import jitter, resolve_radius, step_values


def sphere(x):
    return ((x - 1.0) ** 2).sum(1)


# -- schedules -----------------------------------------------------------------------------------

def test_cosine_and_linear_schedules():
    c = Cosine(init=5.0, target=0.3, total_steps=100)
    assert c.at(0) == 5.0 and c.at(100) == pytest.approx(0.3) and c.at(500) == pytest.approx(0.3)
    assert c.at(50) == pytest.approx(0.3 + 0.5 * 4.7)
    # the reference's decay form: T = int((init - target) / decay)
    assert Cosine(init=1.0, target=0.5, decay=0.05).total_steps == 10
    lin = Linear(init=1.0, target=0.1, decay=0.1)
    assert [round(lin.at(t), 6) for t in (0, 3, 20)] == [1.0, 0.7, 0.1]
    rising = Linear(init=0.1, target=1.0, total_steps=9)
    assert rising.at(0) == pytest.approx(0.1) and rising.at(9) == pytest.approx(1.0) and rising.at(99) == 1.0
    with pytest.raises(TypeError):
        Cosine(5.0, 0.3)  # keywords only: the reference's positional order is a known trap
    with pytest.raises(ValueError, match="total_steps"):
        Cosine(init=1.0, target=0.1)


def test_radius_rule():
    # plain numbers are multiplied by epsilon, schedules are used as they are
    assert resolve_radius(2.0, 0.5, t=7) == 1.0
    assert resolve_radius(Constant(2.0), 0.5, t=7) == 2.0
    sched = Cosine(init=32.0, target=8.0, total_steps=10)
    assert resolve_radius(sched, 0.3, t=10) == pytest.approx(8.0)
    v = step_values(3, Constant(0.5), 2.0, 1.0)
    assert (v.eps, v.alpha, v.rho) == (0.5, 1.0, 0.5)
    v = step_values(0, Cosine(init=5.0, target=0.3, total_steps=10), Cosine(init=32.0, target=8.0, total_steps=10),
                    1.0)
    assert (v.eps, v.alpha, v.rho) == (5.0, 32.0, 5.0)


def test_probe_jitter_range_and_determinism():
    assert jitter(2.0, 0.25, 0.0) == 1.5 and jitter(2.0, 0.25, 0.5) == 2.0 and jitter(2.0, 0.0, 0.9) == 2.0
    rhos = []
    for seed in (1, 1, 2):
        st = ParticleStepper(4, particle_dim=2, epsilon=1.0, probe_radius=2.0, probe_jitter=0.25, seed=seed)
        vals = []
        for _ in range(60):
            prop = st.propose()
            vals.append(prop.values.rho)
            st.update(prop, torch.zeros(prop.shape))
        rhos.append(vals)
    assert rhos[0] == rhos[1] and rhos[0] != rhos[2]
    assert min(rhos[0]) >= 1.5 and max(rhos[0]) <= 2.5 and max(rhos[0]) - min(rhos[0]) > 0.6


# -- the particle update -------------------------------------------------------------------------

def test_probes_at_k_over_k_plus_1_of_the_probe_radius():
    st = ParticleStepper(10, particle_dim=4, epsilon=0.5, step_radius=2.0, probe_radius=3.0, num_probes=3)
    prop = st.propose()
    assert prop.offsets.shape == (3, 8, 3, 4)
    dist = prop.offsets.norm(dim=-1)
    assert torch.allclose(dist, torch.tensor([0.375, 0.75, 1.125]).expand(3, 8, 3), atol=1e-6)


@pytest.mark.parametrize("polytope", ["orthoplex", "simplex", "cube"])
@pytest.mark.parametrize("solver", ["softmax", "sinkhorn"])
def test_block_never_moves_more_than_alpha(polytope, solver):
    st = ParticleStepper(24, particle_dim=3, polytope=polytope, solver=solver, epsilon=0.01, step_radius=70.0,
                         probe_radius=10.0, seed=5)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        before = st.X.clone()
        prop = st.propose()
        st.update(prop, torch.randn(prop.offsets.shape[:3], generator=g))
        moved = (st.X - before).norm(dim=1)
        assert (moved <= prop.values.alpha * (1 + 1e-5)).all()
        assert moved.max() > 0.5 * prop.values.alpha  # sharp plan: close to a full vertex step
        assert prop.values.alpha == pytest.approx(0.7)


def test_non_finite_costs_never_win_and_guard_reverts():
    st = ParticleStepper(2, particle_dim=2, solver="softmax", epsilon=1.0, step_radius=1.0, probe_radius=1.0)
    prop = st.propose()
    costs = torch.tensor([[float("nan"), 5.0, 5.0, 5.0]])
    st.update(prop, costs)
    step = st.X[0]
    vertex0 = prop.rotations[0] @ st.template[0]
    assert float(step @ vertex0) < 0  # the NaN vertex gets (almost) no weight: move away from it
    assert st.last_nonfinite == 1
    # non-finite position: reverted, velocity dropped
    st2 = ParticleStepper(2, particle_dim=2, solver="softmax", epsilon=1.0, step_radius=1.0, probe_radius=1.0,
                          momentum=(0.5, 0.9))
    st2.update(st2.propose(), torch.tensor([[0.0, 1.0, 2.0, 3.0]]))
    before = st2.X.clone()
    st2.velocity.fill_(float("inf"))  # a diverged velocity makes the next position non-finite
    stats = st2.update(st2.propose(), torch.tensor([[0.0, 1.0, 2.0, 3.0]]))
    assert stats["reverted"] and torch.equal(st2.X, before) and (st2.velocity == 0).all()
    assert st2.step == 2


def test_momentum_warmup_horizon_and_coast_steps():
    st = ParticleStepper(4, particle_dim=2, momentum=(0.5, 0.9), momentum_warmup=5, amortize=3)
    assert [round(st.beta(t), 6) for t in (0, 2, 4, 10)] == [0.5, 0.7, 0.9, 0.9]
    prop = st.propose()
    st.update(prop, torch.arange(8.0).reshape(2, 4))
    dbar = st.dbar.clone()
    x1 = st.X.clone()
    assert st.is_coast()
    with pytest.raises(RuntimeError, match="coast"):
        st.propose()
    st.coast()
    assert torch.allclose(st.X, x1 + (2 / 3) * dbar)
    st.coast()
    assert torch.allclose(st.X, x1 + dbar)
    assert not st.is_coast() and st.step == 3
    assert torch.allclose(dbar, 0.3 * st.last_delta)


def test_biased_rotation_probes_along_previous_move():
    st = ParticleStepper(16, particle_dim=8, biased_rotation=True, epsilon=0.5, seed=2)
    prop = st.propose()
    st.update(prop, torch.randn(2, 16, generator=torch.Generator().manual_seed(1)))
    prop2 = st.propose()
    unit = st.last_delta / st.last_delta.norm(dim=1, keepdim=True)
    assert torch.allclose(prop2.rotations[:, :, 0], unit, atol=1e-5)


# -- ask/tell ------------------------------------------------------------------------------------

def test_block_spec_points_move_one_block():
    es = PolyStepES(torch.arange(5.0), particle_dim=2, seed=1, epsilon=1.0, step_radius=1.0, probe_radius=2.0)
    spec = es.ask()
    assert isinstance(spec, BlockSpec) and spec.popsize == 3 * 4 == es.popsize
    pts = spec.points()
    diff = pts - torch.arange(5.0)
    for m in range(spec.popsize):
        particle = m // 4
        moved = diff[m].nonzero().flatten().tolist()
        assert set(moved) <= {2 * particle, 2 * particle + 1}
        assert float(diff[m].norm()) == pytest.approx(1.0, abs=1e-5) or particle == 2
    particle, start, offset = spec.blocks([5, 11])
    assert particle.tolist() == [1, 2] and start.tolist() == [2, 4]
    assert torch.allclose(pts[5, 2:4], torch.arange(2.0, 4.0) + offset[0])
    assert torch.allclose(pts[11, 4], 4.0 + offset[1, 0])  # the padding coordinate is dropped


@pytest.mark.parametrize("solver", ["softmax", "sinkhorn"])
def test_minimize_polystep_solves_shifted_sphere(solver):
    r = zoopt.minimize(sphere, torch.zeros(8), method="polystep", budget=3200, seed=0, solver=solver,
                       epsilon=0.5, step_radius=0.5, probe_radius=0.5)
    assert r.nfev == 3200
    assert float(((torch.as_tensor(r.center) - 1.0) ** 2).sum()) < 1e-3
    assert r.fun < float(sphere(torch.zeros(1, 8))[0])


def test_minimize_with_momentum_amortize_and_bias():
    r = zoopt.minimize(sphere, torch.zeros(6), method="polystep", budget=2400, seed=3, solver="softmax",
                       epsilon=0.5, step_radius=0.5, probe_radius=0.5, momentum=(0.5, 0.9), amortize=3,
                       biased_rotation=True)
    assert float(((torch.as_tensor(r.center) - 1.0) ** 2).sum()) < 1e-2
    assert r.strategy.stepper.step == 3 * r.nit


def test_es_resume_is_bit_exact(tmp_path):
    kw = dict(method="polystep", seed=4, solver="sinkhorn", epsilon=0.5, step_radius=0.5, probe_radius=0.5,
              momentum=(0.5, 0.9), amortize=2, probe_jitter=0.1)
    full = zoopt.minimize(sphere, torch.zeros(7), budget=24 * 12, **kw)
    ck = str(tmp_path / "ps.pt")
    zoopt.minimize(sphere, torch.zeros(7), budget=24 * 5, checkpoint=ck, checkpoint_every=1, **kw)
    resumed = zoopt.minimize(sphere, torch.zeros(7), budget=24 * 12, checkpoint=ck, resume=True, **kw)
    assert torch.equal(torch.as_tensor(full.center), torch.as_tensor(resumed.center))
    assert full.fun == resumed.fun


def test_es_argument_errors():
    with pytest.raises(ValueError, match="polytope"):
        PolyStepES(dim=4, polytope="prism")
    with pytest.raises(ValueError, match="solver"):
        PolyStepES(dim=4, solver="greedy")
    with pytest.raises(ValueError, match="step_radius"):
        PolyStepES(dim=4, step_radius=-1.0)
    with pytest.raises(ValueError, match="popsize"):
        PolyStepES(dim=4, popsize=64)
    with pytest.raises(ValueError, match="momentum"):
        PolyStepES(dim=4, momentum=(0.5, 1.5))
    assert math.isfinite(PolyStepES(dim=3).ask().points().sum())
