"""HDET with real gloo process groups on CPU (2 and 4 ranks), checked against the simulation."""
from __future__ import annotations

import os
import socket
import sys
import warnings

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
import hdet_cases as hc  # noqa: E402

from zoopt.hdet import HDETSimulation, spread_multipliers  # noqa: E402


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _onecycle_reference():
    warnings.simplefilter("ignore")
    opt = hc.make_optimizer(hc.make_model())
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hc.HDET_KW["max_lr"], total_steps=hc.TOTAL)
    out = [sched.get_last_lr()]
    for _ in range(hc.START):
        opt.step()
        sched.step()
        out.append(sched.get_last_lr())
    return out


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """One 4-process gloo job; its ranks 0 and 1 also rerun everything in a 2-rank subgroup."""
    out = tmp_path_factory.mktemp("hdet")
    # fork: the children inherit torch's lazily imported modules (building an optimizer imports
    # torch._dynamo, seconds per process); each child sets torch threads to 1 before any op.
    hc.make_optimizer(hc.make_model())
    mp.start_processes(hc.worker, args=(4, _free_port(), str(out)), nprocs=4, join=True, start_method="fork")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(4)]


@pytest.fixture(params=[2, 4], ids=["2ranks", "4ranks"])
def runs(request, spawned):
    world = request.param
    return world, [spawned[r][world] for r in range(world)]


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_replicas_differ_inside_window_and_agree_after_sync(runs, opt):
    world, res = runs
    records = [r[opt]["record"] for r in res]
    reference = _onecycle_reference()
    rho = spread_multipliers(world, hc.HDET_KW["spread"])
    for r in range(world):                          # fan-out from step 0: initial LR scaled by ρ_r
        expect = [float(rho[r]) * m / 25.0 for m in hc.HDET_KW["max_lr"]]
        assert records[r][0]["lrs"] == pytest.approx(expect, rel=1e-12)
    for step in range(1, hc.TOTAL + 1):
        params = torch.stack([rec[step]["params"] for rec in records])
        assert records[0][step]["t"] == step
        if step % hc.T == 0:
            for r in range(1, world):
                assert torch.equal(params[r], params[0]), f"step {step}: rank {r} differs after sync"
        else:
            spread = (params - params.mean(0)).abs().max().item()
            assert spread > 1e-6, f"step {step}: replicas identical inside a window"
        lrs = torch.tensor([rec[step]["lrs"] for rec in records], dtype=torch.float64)
        assert (lrs.max(0).values > lrs.min(0).values).all()          # fan-out in every group
        if step < hc.START:                                             # mean LR = plain OneCycle
            assert torch.allclose(lrs.mean(0), torch.tensor(reference[step], dtype=torch.float64), rtol=1e-12)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_permutations_agree_and_change(runs, opt):
    world, res = runs
    records = [r[opt]["record"] for r in res]
    seen = set()
    for step in range(hc.TOTAL + 1):
        perms = [rec[step]["perms"] for rec in records]
        assert all(torch.equal(p, perms[0]) for p in perms)
        seen.add(tuple(perms[0].flatten().tolist()))
    assert len(seen) > 1                       # redrawn at controller syncs
    assert len(res[0][opt]["history"]) == (hc.TOTAL - hc.START) // hc.T + 1


def test_mismatched_permutations_raise(runs):
    world, res = runs
    for r in res:
        assert r["mismatch"] is not None and "perm_seed" in r["mismatch"]


def test_missing_loss_raises_at_the_sync(runs):
    world, res = runs
    for r in res:
        assert r["missing_loss"] is not None and "step(loss)" in r["missing_loss"]


def test_controller_direction(runs):
    world, res = runs
    for r in res:
        assert r["up"]["end"] > 1.2 * r["up"]["start"], r["up"]           # no decay: the base rises
        up, neutral, down = (r["directions"][s]["end"] for s in (-1.0, 0.0, 1.0))
        assert up > 1.2 * neutral and down < 0.8 * neutral, (up, neutral, down)
        assert r["up"]["end"] == res[0]["up"]["end"]


def test_resume_is_exact(runs):
    world, res = runs
    for r in res:
        (p1, lr1), (p2, lr2) = r["resume"]["straight"], r["resume"]["resumed"]
        assert torch.equal(p1, p2) and lr1 == lr2


@pytest.mark.parametrize("mode,opt", [("line", "sgd"), ("line", "adam"), ("copies", "adam")])
def test_simulation_matches_processes(runs, mode, opt):
    world, res = runs
    warnings.simplefilter("ignore")
    model = hc.make_model()
    optim = hc.make_optimizer(model, opt)
    sim = HDETSimulation(model, optim, world, mode=mode, **hc.HDET_KW)
    records = [r[opt]["record"] for r in res]
    opt_order = [id(p) for g in optim.param_groups for p in g["params"]]
    for t in range(hc.TOTAL):
        lrs = sim.lrs()
        expect = torch.tensor([rec[t]["lrs"] for rec in records], dtype=torch.float64)
        assert torch.allclose(lrs, expect, rtol=1e-9, atol=0), t
        sim.step([hc.batch(t, r) for r in range(world)], hc.loss_fn)
        for r in range(world):
            by_id = dict(zip(opt_order, sim.replica_parameters(r)))
            got = torch.cat([by_id[id(p)].reshape(-1) for p in model.parameters()])
            assert torch.allclose(got, records[r][t + 1]["params"], rtol=0, atol=1e-9), (t, r)
    assert torch.allclose(hc.flat(model), records[0][hc.TOTAL]["params"], atol=1e-9)
    hist = res[0][opt]["history"]
    assert [h["step"] for h in sim.history] == [h["step"] for h in hist]
    for a, b in zip(sim.history, hist):
        assert torch.allclose(torch.tensor(a["base"]), torch.tensor(b["base"]), rtol=1e-9)
