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
