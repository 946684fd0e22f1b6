"""zoopt.PolyStep on the engine's roles: keyed block specs, the ModuleProblem's block evaluation, Ray actors."""
import pickle

import pytest
import torch

import zoopt
from zoopt.polystep import BlockSpec, PolyStepES
from zoopt.problems.zoo import make_model, zoo_data

try:
    from conftest_ray import one_thread, ray_cluster  # noqa: F401  (the session's Ray cluster; skips when ray is absent)
except ImportError:
    pass

LOSS = torch.nn.CrossEntropyLoss()


@pytest.fixture(scope="module")
def digits():
    data = zoo_data("digits", limit_train=240)
    return data["x_train"].float(), data["y_train"].long()


def _small(spec):
    return len(pickle.dumps(spec.with_center(torch.empty(0, dtype=spec.center.dtype))))


@pytest.mark.parametrize("dim", [10, 400_000])
def test_a_block_spec_apart_from_its_center_pickles_to_under_1kb(dim):
    spec = PolyStepES(dim=dim, seed=3, solver="softmax").ask()
    assert isinstance(spec, BlockSpec) and spec.num_particles == (dim + 1) // 2
    assert _small(spec) < 1024


def test_a_module_spec_is_small_and_keeps_the_subspace_coordinates_only(digits):
    x, y = digits
    big = make_model("mlp", seed=0, in_features=64)
    opt = zoopt.PolyStep(big, seed=0, data=(x, y))
    opt.step((0, 0, 40), LOSS)
    spec = opt.strategy.ask()
    spec.extras["batch"] = (0, 1, 40)
    assert spec.center.numel() == opt.subspace.dim < sum(p.numel() for p in big.parameters())
    assert _small(spec) < 1024


def test_a_shipped_spec_regenerates_the_probes_of_any_particles_exactly():
    es = PolyStepES(dim=37, particle_dim=4, seed=5, solver="softmax", probe_jitter=0.2, num_probes=2)
    spec = es.ask()
    rot, off = es._proposal.rotations, es._proposal.offsets
    shipped = pickle.loads(pickle.dumps(spec))
    assert shipped._geometry is None  # nothing but keys and scalars crossed
    r2, o2 = shipped.geometry()
    assert torch.equal(r2, rot) and torch.equal(o2, off)
    part = torch.tensor([7, 2, 9])
    assert torch.equal(shipped.geometry(part)[1], off[part])
    assert torch.equal(shipped.points([5, 40, 71]), spec.points([5, 40, 71]))


def test_biased_specs_carry_the_previous_move():
    es = PolyStepES(dim=16, particle_dim=8, seed=2, solver="softmax", biased_rotation=True)
    es.ask()
    es.tell(torch.randn(es.popsize, generator=torch.Generator().manual_seed(0)))
    spec = es.ask()
    shipped = pickle.loads(pickle.dumps(spec))
    assert torch.equal(shipped.geometry()[1], es._proposal.offsets)
    unit = es.stepper.last_delta / es.stepper.last_delta.norm(dim=1, keepdim=True)
    assert torch.allclose(shipped.geometry()[0][:, :, 0], unit, atol=1e-5)


def test_member_ranges_score_exactly_as_the_whole_population(digits):
    x, y = digits
    opt = zoopt.PolyStep(make_model("staircase", seed=1, in_features=64, hidden=32), seed=4, rank=2, data=(x, y))
    opt.problem.loss_fn = LOSS
    spec = opt.strategy.ask()
    spec.extras["batch"] = (0, 0, 60)
    whole = opt.problem.evaluate(spec, range(spec.popsize))
    cuts = [0, 5, 16, 17, 100, spec.popsize]
    parts = torch.cat([opt.problem.evaluate(spec, range(a, b)) for a, b in zip(cuts, cuts[1:])])
    assert torch.equal(parts, whole)
    scattered = torch.tensor([spec.popsize - 1, 3, 64])
    assert torch.equal(opt.problem.evaluate(spec, scattered), whole[scattered])


def test_named_batches_equal_batches_sent_by_value(digits):
    from zoopt.problems.module import epoch_order
    x, y = digits
    runs = []
    for named in (True, False):
        opt = zoopt.PolyStep(make_model("staircase", seed=1, in_features=64, hidden=32), seed=4, rank=2, data=(x, y),
                             data_seed=7)
        losses = []
        for k in range(3):
            rows = epoch_order(len(x), 7, 0)[k * 50:(k + 1) * 50]
            losses.append(opt.step((0, k, 50) if named else (x[rows], y[rows]), LOSS))
        runs.append((losses, opt.theta()))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    assert runs[0][0][0] != runs[0][0][2]


def test_batch_argument_errors(digits):
    x, y = digits
    opt = zoopt.PolyStep(make_model("staircase", seed=1, in_features=64, hidden=32), rank=2)
    with pytest.raises(ValueError, match="without data"):
        opt.step((0, 0, 10), LOSS)
    with pytest.raises(TypeError, match="batch"):
        opt.step(x, LOSS)
    with pytest.raises(TypeError, match="data"):
        zoopt.PolyStep(make_model("staircase", seed=1, in_features=64, hidden=32), data=x)
    with pytest.raises(ValueError, match="evaluator"):
        zoopt.PolyStep(make_model("staircase", seed=1, in_features=64, hidden=32), evaluator="gpu")


def test_polystep_on_two_ray_actors_equals_the_local_run_bit_for_bit(digits, ray_cluster, one_thread):
    x, y = digits
    runs = []
    for evaluator in ("local", "ray"):
        opts = {"num_actors": 2, "actor_config": {"num_cpus": 1}} if evaluator == "ray" else None
        opt = zoopt.PolyStep(make_model("staircase", seed=2, in_features=64, hidden=32), seed=1, rank=2, epsilon=0.5,
                             step_radius=4.0, probe_radius=2.0, evaluator=evaluator, evaluator_options=opts,
                             data=(x, y), absorb_interval=2)
        losses = [opt.step((0, k, 80), LOSS) for k in range(3)]
        losses.append(opt.step((x[:80], y[:80]), LOSS))  # a batch by value on the same evaluator
        if evaluator == "ray":
            traffic = dict(opt.evaluator.traffic)
        runs.append((losses, opt.theta(), opt.evaluations))
        opt.close()
    (local_losses, local_theta, local_n), (ray_losses, ray_theta, ray_n) = runs
    assert ray_losses == local_losses and torch.equal(ray_theta, local_theta) and ray_n == local_n
    assert len(set(local_losses)) > 1
    # per generation only the spec and z travelled, never the weights or the training split
    n_params = local_theta.numel()
    z_bytes = 4 * opt.subspace.dim
    assert traffic["payload_bytes"] < 4 * (z_bytes + 1024) + 2 * 4 * 80 * 64 < 4 * 4 * n_params



# -- defaults that learn (issue 17) -----------------------------------------------------------------

def _staircase_digits_net(seed=0):
    from zoopt.problems.zoo.layers import Staircase
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), Staircase(5), torch.nn.Linear(32, 10))


def test_default_radii_follow_the_weight_norm():
    from zoopt.polystep.defaults import PROBE, STEP, weight_scale
    net = _staircase_digits_net()
    opt = zoopt.PolyStep(net, seed=0)
    scale = weight_scale(opt.subspace, opt.theta())
    w1, w2 = net[0].weight.norm().item(), net[2].weight.norm().item()
    assert min(w1, w2) <= scale <= max(w1, w2)
    prop = opt.stepper.propose()
    assert prop.values.alpha == pytest.approx(STEP * scale) and prop.values.rho == pytest.approx(PROBE * scale)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)
    assert zoopt.PolyStep(net, seed=0).stepper.propose().values.alpha == pytest.approx(3 * STEP * scale, rel=1e-5)
    full = zoopt.PolyStep(_staircase_digits_net(), rank=None).stepper.propose().values
    assert (full.eps, full.alpha, full.rho) == pytest.approx((0.1, 0.1, 0.2))  # the reference's full-space defaults


def test_the_default_polystep_learns_the_staircase_digits_net():
    from zoopt.problems.data import load_digits_split
    data = load_digits_split()
    x, y = data["x_train"].float(), data["y_train"].long()
    xt, yt = data["x_test"].float(), data["y_test"].long()
    accs = {}
    for name, kw in (("default", {}), ("reference flat", {"epsilon": 0.1, "step_radius": 1.0, "probe_radius": 2.0})):
        net = _staircase_digits_net()
        opt = zoopt.PolyStep(net, seed=0, data=(x, y), **kw)
        for k in range(20):
            opt.step((k // 10, k % 10, 100), LOSS)
        with torch.no_grad():
            accs[name] = float((net(xt).argmax(1) == yt).float().mean())
    assert accs["default"] > 0.3 and accs["reference flat"] < 0.15, accs  # measured: 0.43 and 0.09
