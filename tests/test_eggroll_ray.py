"""zoopt.EGGROLL on Ray actors: the same run as in process, bit for bit; only small things travel."""
import sys

import pytest
import torch
from torch import nn

pytest.importorskip("ray")

from conftest_ray import ray_cluster  # noqa: E402,F401
from zoopt.eggroll import EGGROLL  # noqa: E402
from zoopt.problems import epoch_order  # noqa: E402

import ray  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors get this module's classes by value


class PositionalMLP(nn.Module):
    """A user module with a bare parameter: it runs once per member inside a population."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(64))
        self.net = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))

    def forward(self, x):
        return self.net(x + self.pos)


def digits_mlp(positional=False):
    torch.manual_seed(0)
    return PositionalMLP() if positional else nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))


def digits_like(n=96):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g)


def train(evaluator, data, steps, positional=False):
    model = digits_mlp(positional)
    opt = EGGROLL(model, popsize=16, rank=2, sigma=0.1, lr=0.1, optimizer="adam", seed=3, evaluator=evaluator,
                  data=data, data_seed=5, chunk=4)
    loss = nn.CrossEntropyLoss()
    losses = [opt.step(batch, loss) for batch in steps]
    return losses, {k: v.clone() for k, v in model.state_dict().items()}, opt


def test_two_ray_actors_equal_the_local_run_bit_for_bit(ray_cluster):
    from zoopt.workers.ray_evaluator import RayEvaluator

    x, y = digits_like()
    named = [(0, 0, 32), (0, 1, 32), (1, 0, 32)]
    rows = epoch_order(len(x), 5, 0)[32:64]
    local_losses, local_state, _ = train(None, (x, y), named + [(x[rows], y[rows])])
    with RayEvaluator(2, actor_config={"num_cpus": 1}) as ev:
        ray_losses, ray_state, opt = train(ev, (x, y), named + [(x[rows], y[rows])])
        fitness = opt.evaluate((0, 2, 32), nn.CrossEntropyLoss())
        traffic = dict(ev.traffic)
        loop_ray = train(ev, (x, y), named[:2], positional=True)[1]
    loop_local = train(None, (x, y), named[:2], positional=True)[1]
    assert all(torch.equal(loop_ray[k], v) for k, v in loop_local.items())
    assert not torch.equal(loop_local["pos"], torch.zeros(64))
    assert ray_losses == local_losses
    start = digits_mlp().state_dict()
    for name, tensor in local_state.items():
        assert torch.equal(ray_state[name], tensor), name
        assert not torch.equal(tensor, start[name]), name  # the steps moved every tensor
    assert fitness.shape == (16,) and torch.isfinite(fitness).all()
    # the model went once; a named generation's payload is the center plus a small spec, never the batch
    dim = sum(t.numel() for t in start.values())
    assert traffic["payload_bytes"] < 6 * (4 * dim + 4096) + x[:32].numel() * 4 + 4096
