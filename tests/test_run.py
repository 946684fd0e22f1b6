import json
import os

import numpy as np
import pytest
import torch

import zoopt
from zoopt.problems import Batches, ModuleProblem, VectorProblem, flatten_params, load_flat
from zoopt.workers import LocalEvaluator


def rosen(x):
    return (100 * (x[:, 1:] - x[:, :-1] ** 2) ** 2 + (1 - x[:, :-1]) ** 2).sum(1)


@pytest.mark.parametrize("method, opts", [("openai_es", dict(popsize=16, sigma=0.05, lr=0.02)),
                                          ("cma_es", dict(popsize=8, sigma=0.3))])
def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path, method, opts):
    x0 = torch.full((8,), -0.5)
    full = zoopt.minimize(rosen, x0, method=method, budget=640, seed=4, **opts)
    ckpt = str(tmp_path / "ckpt.pt")
    # interrupted after 200 evaluations (a callback that stops the run), then resumed
    zoopt.minimize(rosen, x0, method=method, budget=640, seed=4, checkpoint=ckpt, checkpoint_every=1,
                   callback=lambda s, stats: stats["nfev"] < 200, **opts)
    resumed = zoopt.minimize(rosen, x0, method=method, budget=640, seed=4, checkpoint=ckpt, resume=True, **opts)
    assert resumed.nfev == full.nfev and resumed.nit == full.nit
    assert np.array_equal(resumed.x, full.x) and np.array_equal(resumed.center, full.center)
    assert resumed.fun == full.fun
    assert [h["min"] for h in resumed.history] == [h["min"] for h in full.history]


def test_checkpoint_every_k_and_metrics(tmp_path):
    ckpt, metrics = str(tmp_path / "c.pt"), str(tmp_path / "m.jsonl")
    seen = []
    zoopt.minimize(rosen, np.zeros(4), budget=16 * 5, popsize=16, seed=0, checkpoint=ckpt, checkpoint_every=2,
                   metrics=metrics,
                   callback=lambda s, st: seen.append(torch.load(ckpt)["nfev"] if os.path.exists(ckpt) else None))
    # saved after generations 2 and 4 only (and at the end)
    assert seen == [None, 32, 32, 64, 64]
    assert torch.load(ckpt)["nfev"] == 80
    rows = [json.loads(line) for line in open(metrics)]
    assert [r["generation"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["best"] <= r["min"] + 1e-6 or r["best"] <= rows[0]["min"] for r in rows)


def test_evaluator_chunks_give_the_same_fitness():
    es = zoopt.OpenAIES(torch.ones(5), popsize=12, seed=1)
    spec = es.ask()
    problem = VectorProblem(rosen, 5)
    whole = LocalEvaluator()(problem, spec)
    assert torch.equal(LocalEvaluator(chunk=5)(problem, spec), whole)
    assert torch.equal(LocalEvaluator()(problem, spec, members=range(3, 9)), whole[3:9])


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x):
        return self.fc(x) * self.scale


def test_module_problem_vmap_equals_per_member_forward():
    torch.manual_seed(0)
    model = TinyNet()
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    loss_fn = torch.nn.CrossEntropyLoss()
    problem = ModuleProblem(model, loss_fn, (x, y), chunk=3)
    es = zoopt.OpenAIES(problem.initial_point(), popsize=8, sigma=0.2, seed=0)
    spec = es.ask()
    fitness = problem.evaluate(spec, range(8))
    reference = []
    for p in spec.points():
        clone = TinyNet()
        clone.load_state_dict(model.state_dict())
        load_flat(clone, p)
        reference.append(float(loss_fn(clone(x), y)))
    assert torch.allclose(fitness, torch.tensor(reference), atol=1e-5)
    assert torch.equal(flatten_params(model), problem.initial_point())


def test_module_problem_trains_a_step_network():
    from zoopt.problems.nets import StepMLP

    torch.manual_seed(0)
    x = torch.randn(200, 6)
    y = (x[:, 0] > 0).long()
    model = StepMLP(n_in=6, hidden=8, n_out=2)
    problem = ModuleProblem(model, torch.nn.CrossEntropyLoss(), (x, y), batch_size=100)
    es = zoopt.OpenAIES(problem.initial_point(), popsize=32, sigma=0.1, lr=0.05, seed=0)
    zoopt.run(es, problem, budget=32 * 60)
    load_flat(model, es.center)
    assert float((model(x).argmax(1) == y).float().mean()) > 0.9


def test_batches_are_deterministic_and_cover_an_epoch():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    b = Batches(x, y, batch_size=5, seed=3)
    assert torch.equal(b(0)[1], Batches(x, y, batch_size=5, seed=3)(0)[1])
    assert sorted(torch.cat([b(0)[1], b(1)[1]]).tolist()) == list(range(10))
    with pytest.raises(ValueError, match="same length"):
        Batches(x, y[:3])


# -- issue 16 §5: checkpoints are durable and load without running code -----------------------
@pytest.mark.parametrize("method", ["openai_es", "cma_es", "sep_cma_es", "random", "spsa"])
def test_checkpoints_load_weights_only(tmp_path, method):
    ckpt = str(tmp_path / "c.pt")
    zoopt.minimize(lambda x: (x ** 2).sum(1), np.ones(5), method=method, budget=64, seed=0, checkpoint=ckpt)
    state = torch.load(ckpt, weights_only=True)
    assert state["nfev"] >= 64 and state["dim"] == 5 and state["method"] == method.replace("sep_", "")


class _Marker:
    """Unpickling it creates a file: stands for code an attacker would run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_cma_resume_never_unpickles_what_the_file_holds(tmp_path):
    import pickle

    ckpt, marker = str(tmp_path / "c.pt"), tmp_path / "pwned"
    kw = dict(method="cma_es", seed=1, popsize=8, checkpoint=ckpt)
    zoopt.minimize(rosen, np.zeros(4), budget=32, **kw)
    state = torch.load(ckpt, weights_only=True)
    state["strategy"]["es"] = pickle.dumps(_Marker(str(marker)))  # the old format's pickled pycma object
    torch.save(state, ckpt)
    zoopt.minimize(rosen, np.zeros(4), budget=64, resume=True, **kw)
    assert not marker.exists()


class _NumpyStateSearch(zoopt.RandomSearch):
    name = "random"

    def _state(self):
        return {**super()._state(), "extra": np.arange(3)}  # numpy: needs pickle


def test_pickle_state_needs_the_explicit_opt_in(tmp_path):
    ckpt = str(tmp_path / "c.pt")
    calls = []
    problem = VectorProblem(lambda x: calls.append(1) or rosen(x), 3)
    with pytest.raises(TypeError, match="allow_pickle=True"):
        zoopt.run(_NumpyStateSearch(np.zeros(3), popsize=4), problem, budget=8, checkpoint=ckpt)
    assert calls == []  # refused before the first evaluation
    zoopt.run(_NumpyStateSearch(np.zeros(3), popsize=4), problem, budget=8, checkpoint=ckpt, allow_pickle=True)
    with pytest.raises(TypeError, match="allow_pickle=True"):
        zoopt.run(_NumpyStateSearch(np.zeros(3), popsize=4), problem, budget=16, checkpoint=ckpt, resume=True)
    with pytest.raises(zoopt.atomic.CheckpointError, match="allow_pickle=True"):  # the file needs pickle
        zoopt.run(zoopt.RandomSearch(np.zeros(3), popsize=4), problem, budget=16, checkpoint=ckpt, resume=True)
    r = zoopt.run(_NumpyStateSearch(np.zeros(3), popsize=4), problem, budget=16, checkpoint=ckpt, resume=True,
                  allow_pickle=True)
    assert r.nfev == 16 and len(r.history) == 4


def test_numpy_numbers_a_callback_adds_to_the_history_checkpoint(tmp_path):
    ckpt = str(tmp_path / "c.pt")

    def note(strategy, stats):
        stats["spread"] = np.float64(stats["max"] - stats["min"])

    zoopt.minimize(rosen, np.zeros(3), budget=32, popsize=8, checkpoint=ckpt, checkpoint_every=1, callback=note)
    assert all(type(r["spread"]) is float for r in torch.load(ckpt, weights_only=True)["history"])


def test_checkpoints_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    zoopt.minimize(rosen, np.zeros(3), budget=32, popsize=8, checkpoint=str(tmp_path / "c.pt"))
    assert len(synced) >= 2  # the file, then its folder


def test_resume_keeps_the_metrics_file(tmp_path):
    ckpt, metrics = str(tmp_path / "c.pt"), str(tmp_path / "m.jsonl")
    kw = dict(method="openai_es", popsize=8, seed=2, checkpoint=ckpt, checkpoint_every=2, metrics=metrics)
    full_metrics = str(tmp_path / "full.jsonl")
    zoopt.minimize(rosen, np.zeros(3), budget=80, method="openai_es", popsize=8, seed=2, metrics=full_metrics)
    # killed during generation 5's callback: the checkpoint holds generation 4, the metrics 5 records

    def crash(strategy, stats):
        if stats["nfev"] == 40:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        zoopt.minimize(rosen, np.zeros(3), budget=80, callback=crash, **kw)
    assert len(open(metrics).readlines()) == 5 and torch.load(ckpt)["nfev"] == 32
    zoopt.minimize(rosen, np.zeros(3), budget=80, resume=True, **kw)
    assert open(metrics).read() == open(full_metrics).read()
    from zoopt.metrics import JsonlLogger

    JsonlLogger(metrics, append=True).log({"generation": 11})
    assert len(open(metrics).readlines()) == 11  # reopening to append keeps the run's records


# -- issue 19: the conventions of scipy, pycma and torch -----------------------------------------
def test_result_keeps_x0_dtype():
    assert zoopt.minimize(rosen, np.zeros(3), budget=32, popsize=8).x.dtype == np.float64
    assert zoopt.minimize(rosen, [0, 0, 0], budget=32, popsize=8).x.dtype == np.float64
    r = zoopt.minimize(rosen, np.zeros(3, dtype=np.float32), budget=32, popsize=8)
    assert r.x.dtype == np.float32 and r.center.dtype == np.float32
    assert zoopt.minimize(rosen, torch.zeros(3, dtype=torch.float64), budget=32, popsize=8).x.dtype == np.float64


def test_success_status_message():
    def sphere(x):
        return (x ** 2).sum(1)

    conv = zoopt.minimize(sphere, np.full(5, 1.0), method="cma_es", budget=100_000, seed=0)
    assert conv.success and conv.status == 0 and conv.nfev < 100_000
    assert "tolfun" in conv.message or "tolx" in conv.message
    spent = zoopt.minimize(sphere, np.full(5, 1.0), method="cma_es", budget=40, seed=0)
    assert not spent.success and spent.status == 1 and "budget" in spent.message
    cb = zoopt.minimize(sphere, np.ones(5), budget=400, popsize=8, callback=lambda s, st: False)
    assert not cb.success and cb.status == 2 and cb.nfev == 8 and "callback" in cb.message


@pytest.mark.parametrize("method", ["cma_es", "openai_es"])
def test_bounds_clip_what_fn_sees_and_the_result(method):
    lower, upper = np.array([-1.0, -1.0, 0.5]), 1.0
    seen = []

    def shifted(x):
        seen.append(x.copy())
        return ((x - 2.0) ** 2).sum(1)

    r = zoopt.minimize(shifted, np.array([0.0, 0.0, 0.75]), method=method, budget=2000, seed=0,
                       bounds=(lower, upper))
    allx = np.concatenate(seen)
    assert (allx >= lower - 1e-7).all() and (allx <= upper + 1e-7).all()
    assert np.allclose(r.x, 1.0, atol=1e-2) and (r.x <= upper).all()
    assert r.fun == pytest.approx(3.0, abs=0.05)


def test_scalar_function_with_vectorized_false():
    calls = []

    def scalar(x):
        calls.append(x.shape)
        return float(((x - 1.0) ** 2).sum())

    r = zoopt.minimize(scalar, np.zeros(4), method="cma_es", budget=400, seed=0, vectorized=False)
    assert calls == [(4,)] * r.nfev and r.fun < 0.1
    with pytest.raises(ValueError, match="vectorized=False"):
        zoopt.minimize(scalar, np.zeros(4), budget=16)  # the hint when a scalar fn meets a batch
