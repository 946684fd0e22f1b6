"""PolyStep on torch modules: hybrid subspace, structure-aware evaluation vs the naive forward, steps, resume."""
import math

import pytest
import torch
from torch import nn

import zoopt
from zoopt.polystep.evaluate import BlockEvaluator, naive_losses
from zoopt.polystep.subspace import HybridSubspace
from zoopt.problems.zoo import make_model

LOSS = nn.CrossEntropyLoss()


# -- subspace ------------------------------------------------------------------------------------

def test_subspace_dimensions_match_the_paper_runs():
    # polystep.md §2.2: SNN rank 4 -> D = 4338, MNIST MLP rank 8 -> 8538 (layout only, maps not drawn)
    snn = [("fc1.weight", (128, 784)), ("fc1.bias", (128,)), ("fc2.weight", (10, 128)), ("fc2.bias", (10,))]
    dims = {}
    for rank in (4, 8):
        sub = HybridSubspace(snn, rank=rank, sparse_threshold_bytes=0)
        dims[rank] = sub.dim
        assert [l.kind for l in sub.layers] == ["sparse", "identity", "sparse", "identity"]
    assert dims == {4: 4338, 8: 8538}
    # the default 1 GB rule: fc1 at rank 4 (100352 x 3648 floats = 1.46 GB) is sparse, fc2 dense
    default = HybridSubspace(snn, rank=4)
    assert [l.kind for l in default.layers] == ["sparse", "identity", "dense", "identity"]
    assert default.layers[2].basis.shape == (552, 1280)
    capped = HybridSubspace(snn, rank=4, max_subspace_dim=300, sparse_threshold_bytes=0)
    assert capped.layers[1].n_coords == 128 and capped.layers[3].n_coords == 10  # biases stay whole
    assert abs(capped.dim - 300) <= 2


def test_dense_map_orthonormal_when_tall_scaled_when_wide_and_sparse_columns():
    sub = HybridSubspace([("a", (6, 40)), ("b", (3, 2)), ("c", (5,))], rank=2, seed=1, dtype=torch.float64)
    tall, wide, bias = sub.layers
    assert tall.kind == "dense" and tall.n_coords == 6 * 2 + 2 * 40 and tall.numel == 240
    gram = tall.basis @ tall.basis.T  # rows are the columns of Pi
    assert torch.allclose(gram, torch.eye(tall.n_coords, dtype=torch.float64), atol=1e-10)
    assert wide.n_coords == 3 * 2 + 2 * 2 > wide.numel  # wide: Gaussian / sqrt(n_coords), not orthonormal
    assert abs(float(wide.basis.pow(2).mean()) * wide.n_coords - 1.0) < 0.6
    assert bias.kind == "identity" and bias.n_coords == 5
    z = torch.randn(3, sub.dim, dtype=torch.float64)
    proj = sub.project(z)
    assert torch.allclose(proj[:, -5:], z[:, -5:])
    assert torch.allclose(sub.project(2 * z[0]), 2 * proj[0])
    sparse = HybridSubspace([("w", (16, 25))], rank=2, sparse_threshold_bytes=0).layers[0]
    assert sparse.kind == "sparse" and sparse.rows.shape == (sparse.n_coords, 20)  # nnz = int(sqrt(400))
    assert torch.allclose(sparse.values.abs(), torch.full_like(sparse.values, 1 / math.sqrt(20)))
    # the map is a pure function of its seed
    again = HybridSubspace([("a", (6, 40)), ("b", (3, 2)), ("c", (5,))], rank=2, seed=1, dtype=torch.float64)
    assert torch.equal(again.layers[0].basis, tall.basis)


@pytest.mark.parametrize("kind", ["dense", "sparse", "identity"])
def test_linear_responses_equal_explicit_basis_matrices(kind):
    rank = None if kind == "identity" else 3
    sub = HybridSubspace([("w", (7, 9))], rank=rank, sparse_threshold_bytes=0 if kind == "sparse" else 10 ** 12,
                         dtype=torch.float64)
    layer = sub.layers[0]
    assert layer.kind == kind
    x = torch.randn(5, 9, dtype=torch.float64)
    lo, hi = 2, min(11, layer.n_coords)
    eye = torch.eye(sub.dim, dtype=torch.float64)[lo:hi]
    mats = sub.project(eye).reshape(hi - lo, 7, 9)
    ref = torch.einsum("bi,noi->nbo", x, mats)
    assert torch.allclose(sub.linear_responses(layer, x, lo, hi), ref, atol=1e-12)


# -- structure-aware evaluation == naive per-candidate forward -----------------------------------

def _naive_costs(opt, model, x, y, offsets, theta):
    p, v, k, d = offsets.shape
    z = torch.zeros(p, v * k, p * d, dtype=theta.dtype)
    for i in range(p):
        z[i, :, i * d:(i + 1) * d] = offsets[i].reshape(v * k, d)
    thetas = theta[None] + opt.subspace.project(z.reshape(p * v * k, -1)[:, :opt.subspace.dim])
    layers = opt.subspace.layers
    return naive_losses(model, LOSS, x, y, thetas, [l.name for l in layers], [l.shape for l in layers]).reshape(p, v, k)


ZOO = ["mlp", "snn", "int8", "argmax", "staircase", "moe"]


@pytest.mark.parametrize("name", ZOO)
def test_structured_evaluation_equals_naive_forward_on_the_zoo(name):
    torch.manual_seed(0)
    kw = dict(steps=4) if name == "snn" else {}
    model = make_model(name, in_features=12, num_classes=3, hidden=3 if name == "moe" else 5, seed=1, **kw).double()
    probes = 2 if name in ("mlp", "snn") else 1
    opt = zoopt.PolyStep(model, rank=2, seed=3, epsilon=0.5, step_radius=2.0, probe_radius=4.0, num_probes=probes,
                         sparse_threshold_bytes=200)  # small layers go sparse too: both map kinds are covered
    assert {l.kind for l in opt.subspace.layers} >= {"sparse", "identity"}
    x = torch.randn(9, 12, dtype=torch.float64)
    y = torch.randint(0, 3, (9,))
    # move off the initial point first so theta_base != theta
    opt.step((x, y), LOSS)
    prop = opt.stepper.propose()
    theta = opt.theta()
    fast = opt.block_evaluator.losses(x, y, LOSS, prop.offsets, theta)
    assert opt.block_evaluator.route_counts().get("linear", 0) > 0
    ref = _naive_costs(opt, model, x, y, prop.offsets, theta)
    assert torch.allclose(fast, ref, rtol=0, atol=1e-12)
    assert fast.std() > 0


@pytest.mark.parametrize("polytope", ["simplex", "cube"])
def test_structured_evaluation_equals_naive_for_other_polytopes(polytope):
    model = make_model("staircase", in_features=10, num_classes=3, hidden=4, seed=0).double()
    opt = zoopt.PolyStep(model, rank=1, polytope=polytope, particle_dim=3, seed=2, epsilon=0.5, step_radius=2.0,
                         probe_radius=4.0)
    x, y = torch.randn(8, 10, dtype=torch.float64), torch.randint(0, 3, (8,))
    prop = opt.stepper.propose()
    fast = opt.block_evaluator.losses(x, y, LOSS, prop.offsets, opt.theta())
    assert torch.allclose(fast, _naive_costs(opt, model, x, y, prop.offsets, opt.theta()), rtol=0, atol=1e-12)


def test_sequential_plain_and_unstructured_models_match_naive():
    torch.manual_seed(1)
    x = torch.randn(7, 10, dtype=torch.float64)
    y = torch.randint(0, 4, (7,))

    class Plain(nn.Module):  # no stages(): the whole-model vmap fallback
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(10, 6), nn.Linear(6, 4)

        def forward(self, inp):
            return self.b(torch.tanh(self.a(inp)))

    for model, kw, route in [(nn.Sequential(nn.Linear(10, 6), nn.Tanh(), nn.Linear(6, 4)), dict(rank=2), "linear"),
                             (nn.Sequential(nn.Linear(10, 6), nn.Tanh(), nn.Linear(6, 4)), dict(rank=None), "linear"),
                             (Plain(), dict(rank=2), "model")]:
        model = model.double()
        opt = zoopt.PolyStep(model, seed=0, epsilon=0.5, step_radius=1.0, probe_radius=2.0, **kw)
        prop = opt.stepper.propose()
        fast = opt.block_evaluator.losses(x, y, LOSS, prop.offsets, opt.theta())
        assert route in opt.block_evaluator.route_counts()
        assert torch.allclose(fast, _naive_costs(opt, model, x, y, prop.offsets, opt.theta()), rtol=0, atol=1e-12)
        generic = BlockEvaluator(model, opt.subspace, opt.stepper.particle_dim, structured=False)
        assert torch.allclose(generic.losses(x, y, LOSS, prop.offsets, opt.theta()), fast, rtol=0, atol=1e-12)


def test_chunking_does_not_change_costs():
    model = make_model("snn", in_features=12, num_classes=3, hidden=5, steps=3, seed=2).double()
    x, y = torch.randn(6, 12, dtype=torch.float64), torch.randint(0, 3, (6,))
    big = zoopt.PolyStep(model, rank=2, seed=1, epsilon=0.5, step_radius=2.0, probe_radius=3.0)
    tiny = zoopt.PolyStep(model, rank=2, seed=1, epsilon=0.5, step_radius=2.0, probe_radius=3.0, activation_bytes=1)
    prop = big.stepper.propose()
    a = big.block_evaluator.losses(x, y, LOSS, prop.offsets, big.theta())
    b = tiny.block_evaluator.losses(x, y, LOSS, prop.offsets, tiny.theta())
    assert torch.allclose(a, b, rtol=0, atol=1e-12)


def _inductor_works() -> bool:
    try:
        return float(torch.compile(lambda t: t * 2 + 1)(torch.ones(2)).sum()) == 6.0
    except Exception:  # no C++ compiler: the evaluator falls back to eager, tested above
        return False


@pytest.mark.parametrize("name", ["mlp", "snn"])
def test_compiled_tail_equals_eager_and_naive(name):
    if not _inductor_works():
        pytest.skip("torch.compile has no working backend here")
    kw = dict(steps=3) if name == "snn" else {}
    model = make_model(name, in_features=12, num_classes=3, hidden=5, seed=4, **kw).double()
    x, y = torch.randn(6, 12, dtype=torch.float64), torch.randint(0, 3, (6,))
    eager = zoopt.PolyStep(model, rank=2, seed=1, epsilon=0.5, step_radius=2.0, probe_radius=3.0, compile=False)
    compiled = zoopt.PolyStep(model, rank=2, seed=1, epsilon=0.5, step_radius=2.0, probe_radius=3.0, compile=True)
    prop = eager.stepper.propose()
    a = eager.block_evaluator.losses(x, y, LOSS, prop.offsets, eager.theta())
    b = compiled.block_evaluator.losses(x, y, LOSS, prop.offsets, compiled.theta())
    assert any(entry not in (None, False) for entry in compiled.block_evaluator._compiled.values())  # it did compile
    assert torch.allclose(a, b, rtol=0, atol=1e-10)
    assert torch.allclose(b, _naive_costs(compiled, model, x, y, prop.offsets, compiled.theta()), rtol=0, atol=1e-10)


# -- the optimizer -------------------------------------------------------------------------------

def _blobs(n=96, dim=12, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 2.5
    y = torch.randint(0, classes, (n,), generator=g)
    return centers[y] + torch.randn(n, dim, generator=g), y


def test_polystep_trains_a_hard_network_and_counts_evaluations():
    x, y = _blobs()
    model = make_model("staircase", in_features=12, num_classes=3, hidden=8, seed=0)
    opt = zoopt.PolyStep(model, rank=2, seed=0, epsilon=0.5, step_radius=4.0, probe_radius=2.0)
    first = opt.step((x, y), LOSS)
    for _ in range(14):
        last = opt.step((x, y), LOSS)
    assert last < first - 0.1
    assert opt.evaluations == 15 * opt.evaluations_per_step
    assert opt.evaluations_per_step == math.ceil(opt.subspace.dim / 8) * 16


def test_absorb_keeps_the_model_and_resets_z():
    x, y = _blobs(n=32)
    model = make_model("mlp", in_features=12, num_classes=3, hidden=6, seed=0)
    opt = zoopt.PolyStep(model, rank=2, seed=0, epsilon=0.5, step_radius=2.0, probe_radius=1.0,
                         biased_rotation=True, absorb_interval=3)
    for _ in range(2):
        opt.step((x, y), LOSS)
    theta = opt.theta().clone()
    assert opt.stepper.X.abs().sum() > 0
    opt.step((x, y), LOSS)  # third step absorbs
    assert (opt.stepper.X == 0).all() and (opt.stepper.last_delta == 0).all()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.allclose(flat, opt.theta()) and not torch.equal(flat, theta)


def test_resume_from_state_dict_is_bit_exact():
    x, y = _blobs(n=40)
    kw = dict(rank=2, seed=7, epsilon=0.5, step_radius=2.0, probe_radius=1.0, momentum=(0.3, 0.5),
              momentum_warmup=4, amortize=2, biased_rotation=True, probe_jitter=0.2, absorb_interval=5)

    def fresh():
        return make_model("int8", in_features=12, num_classes=3, hidden=6, seed=0)

    model = fresh()
    opt = zoopt.PolyStep(model, **kw)
    losses = [opt.step((x[i::2], y[i::2]), LOSS) for i in (0, 1) * 4]
    half_model = fresh()
    half = zoopt.PolyStep(half_model, **kw)
    for i in (0, 1) * 2:
        half.step((x[i::2], y[i::2]), LOSS)
    state = {"opt": half.state_dict(), "model": half_model.state_dict()}
    resumed_model = fresh()
    resumed = zoopt.PolyStep(resumed_model, **kw)
    resumed.load_state_dict(state["opt"])
    tail = [resumed.step((x[i::2], y[i::2]), LOSS) for i in (0, 1) * 2]
    assert tail == losses[4:]
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="state_dict"):
        zoopt.PolyStep(make_model("mlp", in_features=12, num_classes=3, hidden=6), rank=2).load_state_dict(state["opt"])


def test_train_helper_runs_epochs_with_any_step_object(tmp_path):
    x, y = _blobs(n=64)
    loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    model = make_model("mlp", in_features=12, num_classes=3, hidden=6, seed=0)
    opt = zoopt.PolyStep(model, rank=2, seed=0, epsilon=0.5, step_radius=2.0, probe_radius=1.0)
    acc = lambda m: {"acc": float((m(x).argmax(1) == y).float().mean())}  # noqa: E731
    hist = zoopt.train(model, loader, LOSS, opt, epochs=2, eval_fn=acc, progress=False,
                       metrics=str(tmp_path / "m.jsonl"))
    assert [h["epoch"] for h in hist] == [1, 2] and all(h["steps"] == 4 for h in hist)
    assert hist[-1]["evaluations"] == 8 * opt.evaluations_per_step and 0 <= hist[-1]["acc"] <= 1
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 2

    class Counting:  # any object with step(batch, loss_fn)
        calls = 0

        def step(self, batch, loss_fn):
            Counting.calls += 1
            return 1.0

    assert zoopt.train(model, loader, LOSS, Counting(), epochs=3, progress=False)[-1]["train_loss"] == 1.0
    assert Counting.calls == 12
    with pytest.raises(TypeError, match="step"):
        zoopt.train(model, loader, LOSS, object(), epochs=1, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        zoopt.train(model, loader, LOSS, opt, epochs=0, progress=False)


def test_module_argument_errors():
    model = nn.Linear(3, 2)
    with pytest.raises(TypeError, match="model"):
        zoopt.PolyStep("not a model")
    with pytest.raises(ValueError, match="rank"):
        zoopt.PolyStep(model, rank=0)
    with pytest.raises(ValueError, match="absorb_interval"):
        zoopt.PolyStep(model, absorb_interval=-1)
    with pytest.raises(ValueError, match="max_subspace_dim"):
        zoopt.PolyStep(model, rank=None, max_subspace_dim=3)
    with pytest.raises(TypeError, match="batch"):
        zoopt.PolyStep(model).step(torch.zeros(2, 3), LOSS)


# -- the default temperature is in units of the cost spread (issue 17) ------------------------------

def test_median_spread_ignores_nonfinite_particles_and_a_flat_step_is_left_alone():
    from zoopt.polystep.defaults import median_spread, spread_scaled

    costs = torch.tensor([[1.0, 3.0, 2.0, 1.5], [0.0, 0.5, 0.25, 0.0], [5.0, 9.0, 5.0, 5.0],
                          [float("inf"), 0.0, 0.0, 0.0]])
    assert median_spread(costs.reshape(-1), 4) == pytest.approx(2.0)  # ranges 2, 0.5, 4 (inf row skipped)
    scaled, spread = spread_scaled(costs.reshape(-1), 4)
    assert spread == pytest.approx(2.0) and torch.equal(scaled[:12], costs.reshape(-1)[:12] / 2.0)
    flat = torch.full((8,), 2.3)
    same, zero = spread_scaled(flat, 2)
    assert zero == 0.0 and torch.equal(same, flat)
    assert median_spread(torch.full((4,), float("nan")), 2) == 0.0


def test_default_epsilon_is_in_units_of_the_step_cost_spread():
    """One default step equals a step with cost_spread off and epsilon = EPSILON * that step's median spread;
    an explicit epsilon (the paper configs) keeps the raw loss units."""
    from zoopt.polystep.defaults import EPSILON
    from zoopt.polystep.schedules import Constant

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 12, generator=g), torch.randint(0, 3, (64,), generator=g)
    net = make_model("snn", in_features=12, num_classes=3, hidden=16, seed=0)
    auto = zoopt.PolyStep(net, seed=0)
    assert auto.cost_spread and auto.stepper.epsilon.at(0) == EPSILON
    alpha, rho = auto.stepper.step_radius.at(0), auto.stepper.probe_radius.at(0)
    auto.step((x, y), LOSS)
    spread = auto.last_stats["cost_spread"]
    assert spread > 0
    raw = zoopt.PolyStep(make_model("snn", in_features=12, num_classes=3, hidden=16, seed=0), seed=0,
                         epsilon=EPSILON * spread, step_radius=Constant(alpha), probe_radius=Constant(rho))
    assert not raw.cost_spread and "cost_spread" not in raw.last_stats
    raw.step((x, y), LOSS)
    assert torch.allclose(auto.stepper.center, raw.stepper.center, atol=1e-6)
    assert zoopt.PolyStep(net, seed=0, epsilon=1.0, cost_spread=True).cost_spread
    assert not zoopt.PolyStep(net, rank=None).cost_spread  # full space keeps the reference's defaults


def test_default_settings_depend_on_the_weights_not_the_model_class():
    class Renamed(nn.Sequential):
        pass

    def net(cls):
        torch.manual_seed(3)
        return cls(nn.Linear(20, 16), nn.Tanh(), nn.Linear(16, 4))

    a, b = zoopt.PolyStep(net(nn.Sequential)), zoopt.PolyStep(net(Renamed))
    for key in ("step_radius", "probe_radius", "epsilon"):
        assert getattr(a.stepper, key).at(0) == getattr(b.stepper, key).at(0)
    assert a.evaluations_per_step == b.evaluations_per_step
