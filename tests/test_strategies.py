import math

import numpy as np
import pytest
import torch

import zoopt
from zoopt.shaping import NonFiniteFitnessError
from zoopt.spec import GaussianSpec


def sphere(x):
    return (x ** 2).sum(1)


def test_antithetic_members_mirror_and_noise_is_keyed():
    es = zoopt.OpenAIES(torch.ones(10), popsize=8, sigma=0.5, seed=3)
    spec = es.ask()
    pts = spec.points()
    assert torch.allclose(pts[0::2] + pts[1::2], 2 * torch.ones(10).expand(4, 10), atol=1e-6)
    again = GaussianSpec(center=torch.ones(10), popsize=8, generation=0, seed=3, sigma=0.5)
    assert torch.equal(again.points([5, 2]), pts[[5, 2]])
    assert es.ask() is spec  # ask without tell returns the pending spec


def test_openai_es_gradient_equals_explicit_formula():
    es = zoopt.OpenAIES(torch.zeros(6), popsize=6, sigma=0.3, seed=1, fitness_shaping="raw",
                        optimizer="sgd", lr=1.0)
    spec = es.ask()
    f = sphere(spec.points()) + torch.arange(6.0)
    noise = spec.noise()
    expected = (f[:, None] * noise).sum(0) / (6 * 0.3)
    assert torch.allclose(es.gradient(spec, f), expected, atol=1e-5)
    es.tell(f)  # SGD with lr 1 moves the center by -g
    assert torch.allclose(es.center, -expected, atol=1e-5)


@pytest.mark.parametrize("method", ["openai_es", "cma_es", "sep_cma_es"])
def test_methods_solve_sphere(method):
    opts = dict(popsize=16, sigma=0.5) if method != "openai_es" else dict(popsize=32, sigma=0.1, lr=0.1)
    r = zoopt.minimize(sphere, np.full(10, 2.0), method=method, budget=8000, seed=0, **opts)
    assert r.fun < 0.05 * 40  # start at 40
    assert (r.nfev >= 8000 or r.strategy.stop()) and len(r.history) == r.nit
    assert r.x.shape == (10,)


def test_random_search_is_the_floor():
    rs = zoopt.minimize(sphere, np.full(30, 2.0), method="random", budget=3000, seed=0, sigma=0.5)
    es = zoopt.minimize(sphere, np.full(30, 2.0), method="openai_es", budget=3000, seed=0, sigma=0.1, lr=0.1)
    assert es.fun < rs.fun < 120  # random search improves on x0 (120) but ES beats it


def test_same_seed_same_run_and_different_seed_differs():
    a = zoopt.minimize(sphere, np.ones(5), budget=640, seed=7)
    b = zoopt.minimize(sphere, np.ones(5), budget=640, seed=7)
    c = zoopt.minimize(sphere, np.ones(5), budget=640, seed=8)
    assert np.array_equal(a.x, b.x) and a.fun == b.fun
    assert not np.array_equal(a.center, c.center)


def test_cma_does_not_touch_global_numpy_rng():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    es = zoopt.CMAES(np.zeros(4), popsize=6, seed=0)
    es.tell(sphere(es.ask().points()))
    assert np.random.rand() == expected


@pytest.mark.parametrize("make", [
    lambda: zoopt.OpenAIES(torch.zeros(5), popsize=8, seed=2, optimizer="adamw", weight_decay=0.01),
    lambda: zoopt.CMAES(np.zeros(5), popsize=8, seed=2),
    lambda: zoopt.RandomSearch(np.zeros(5), popsize=8, seed=2),
])
def test_state_dict_roundtrip_continues_identically(make):
    a = make()
    for _ in range(3):
        a.tell(sphere(a.ask().points()))
    state = a.state_dict()
    b = make()
    b.load_state_dict(state)
    for _ in range(3):
        fa, fb = sphere(a.ask().points()), sphere(b.ask().points())
        assert torch.equal(fa, fb)
        a.tell(fa)
        b.tell(fb)
    assert torch.equal(a.center, b.center) and a.best_f == b.best_f


def test_state_dict_refuses_other_strategy_and_pending_ask():
    es = zoopt.OpenAIES(torch.zeros(3), popsize=4)
    with pytest.raises(ValueError, match="openai_es"):
        zoopt.RandomSearch(np.zeros(3), popsize=4).load_state_dict(es.state_dict())
    es.ask()
    with pytest.raises(RuntimeError, match="ask"):
        es.state_dict()


def test_nonfinite_fitness_policy_in_tell():
    es = zoopt.OpenAIES(torch.zeros(3), popsize=4, seed=0)
    spec = es.ask()
    stats = es.tell(torch.tensor([1.0, math.nan, 0.5, math.inf]))
    assert stats["nonfinite"] == 2 and es.generation == 1
    assert es.best_f == 0.5 and torch.equal(es.best_x, spec.points([2])[0])
    before = es.center.clone()
    es.ask()
    with pytest.raises(NonFiniteFitnessError):
        es.tell(torch.full((4,), math.nan))
    assert torch.equal(es.center, before) and es.generation == 1  # nothing half-applied
    strict = zoopt.OpenAIES(torch.zeros(3), popsize=4, nonfinite="raise")
    strict.ask()
    with pytest.raises(NonFiniteFitnessError):
        strict.tell(torch.tensor([1.0, 2.0, math.nan, 0.0]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(popsize=1), "popsize"),
    (dict(popsize=7), "popsize must be even"),
    (dict(popsize=2.5), "popsize"),
    (dict(sigma=0), "sigma"),
    (dict(sigma=-1.0), "sigma"),
    (dict(lr=0), "lr"),
    (dict(optimizer="lbfgs"), "optimizer"),
    (dict(fitness_shaping="exp"), "fitness_shaping"),
    (dict(seed=-1), "seed"),
    (dict(nonfinite="skip"), "nonfinite"),
])
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        zoopt.OpenAIES(torch.zeros(4), **kwargs)


def test_bad_x0_fitness_and_method():
    with pytest.raises(ValueError, match="x0"):
        zoopt.minimize(sphere, [1.0, float("nan")])
    with pytest.raises(ValueError, match="x0"):
        zoopt.minimize(sphere, [])
    with pytest.raises(ValueError, match="unknown method"):
        zoopt.minimize(sphere, [1.0, 2.0], method="adam_es")
    with pytest.raises(ValueError, match=r"fn must map a batch"):
        zoopt.minimize(lambda x: x.sum(), np.ones(3), budget=10)
    es = zoopt.OpenAIES(torch.zeros(3), popsize=4)
    es.ask()
    with pytest.raises(ValueError, match=r"fitness must have shape \(4,\)"):
        es.tell(torch.zeros(5))
    with pytest.raises(RuntimeError, match="ask"):
        zoopt.OpenAIES(torch.zeros(3), popsize=4).tell(torch.zeros(4))
    with pytest.raises(ValueError, match="budget"):
        zoopt.minimize(sphere, np.ones(2), budget=0)
    with pytest.raises(ValueError, match="evaluator"):
        zoopt.minimize(sphere, np.ones(2), budget=10, evaluator="mpi")


def test_numpy_fn_gets_numpy_and_torch_fn_gets_torch():
    seen = []

    def fn(x):
        seen.append(type(x))
        return (x ** 2).sum(1)

    zoopt.minimize(fn, np.ones(3), budget=8, popsize=8)
    zoopt.minimize(fn, torch.ones(3), budget=8, popsize=8)
    assert seen == [np.ndarray, torch.Tensor]


def test_pycma_style_ask_tell_with_arrays():
    es = zoopt.OpenAIES(dim=4, popsize=6, seed=0)
    X = np.asarray(es.ask())
    assert X.shape == (6, 4)
    es.tell([float(v) for v in (X ** 2).sum(1)])
    assert es.generation == 1 and es.mean.shape == (4,)


# -- issue 19: the default method and honest stop conditions --------------------------------------
def test_default_method_by_dimension():
    from zoopt.run import default_method

    assert [default_method(d) for d in (1, 20, 100, 101, 100_000, 100_001)] == \
        ["cma_es", "cma_es", "cma_es", "sep_cma_es", "sep_cma_es", "openai_es"]


def test_default_method_solves_sphere_20_and_stops_itself():
    # the old default (OpenAI-ES, fixed sigma) stalled at 0.049 here
    r = zoopt.minimize(sphere, np.full(20, 3.0), budget=20_000, seed=0)
    assert r.strategy.name == "cma_es"
    assert r.fun < 1e-8 and r.success and r.nfev < 20_000


def test_cma_uses_pycma_stop_defaults():
    es = zoopt.CMAES(np.zeros(3))
    assert float(es.es.opts["tolfun"]) == 1e-11 and float(es.es.opts["tolx"]) == 1e-11
    assert float(zoopt.CMAES(np.zeros(3), options={"tolfun": 1e-3}).es.opts["tolfun"]) == 1e-3


def test_an_option_the_method_lacks_is_named():
    with pytest.raises(TypeError, match=r"method 'cma_es' has no option 'lr'.*minimize chose 'cma_es' for dimension 3"):
        zoopt.minimize(sphere, np.ones(3), lr=0.1)
    with pytest.raises(TypeError, match=r"method 'sep_cma_es' has no option 'learning_rate'; its options: .*sigma"):
        zoopt.minimize(sphere, np.ones(3), method="sep_cma_es", learning_rate=0.1)
