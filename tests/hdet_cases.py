"""Shared tiny HDET setups for the tests: model, per-(step, replica) data, and the gloo workers."""
from __future__ import annotations

import io
import os
import warnings

import torch
import torch.distributed as dist

from zoopt.hdet import HDETOneCycleLR, PermutationMismatchError
from zoopt.hdet.sync import all_reduce_gradients

TOTAL, T, START = 40, 5, 10


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()


def make_optimizer(model, kind="sgd"):
    groups = [{"params": [p for n, p in model.named_parameters() if n.endswith("weight")]},
              {"params": [p for n, p in model.named_parameters() if n.endswith("bias")]}]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    return torch.optim.Adam(groups, lr=0.1)


def batch(step: int, replica: int):
    g = torch.Generator().manual_seed(1000 * step + replica)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64)
    y = torch.sin(x.sum(1, keepdim=True))
    return x, y


def loss_fn(model, b):
    x, y = b
    return torch.nn.functional.mse_loss(model(x), y)


HDET_KW = dict(max_lr=[0.3, 0.1], total_steps=TOTAL, spread=0.4, sync_every=T, auto_lr_start=START,
               temperature=0.01, perm_seed=7, lr_floor=[0.03, 0.01], init_noise=0.01)   # HDET full: warm noisy init


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def _train(model, opt, sched, rank, start, stop, record=None, group=None):
    for t in range(start, stop):
        opt.zero_grad()
        loss = loss_fn(model, batch(t, rank))
        loss.backward()
        all_reduce_gradients(model.parameters(), group)
        opt.step()
        sched.step(loss)
        if record is not None:
            record.append({"t": sched.last_epoch, "params": flat(model), "lrs": list(sched.get_last_lr()),
                           "perms": sched.ensemble.all_perms().clone()})


def _trajectory(rank, opt_kind, group):
    model = make_model()
    opt = make_optimizer(model, opt_kind)
    sched = HDETOneCycleLR(opt, **HDET_KW, process_group=group)
    record = [{"t": 0, "params": flat(model), "lrs": list(sched.get_last_lr()), "perms": sched.ensemble.all_perms()}]
    _train(model, opt, sched, rank, 0, TOTAL, record, group)
    return {"record": record, "history": sched.history}


def _resume(rank, group):
    def build():
        model = make_model()
        opt = make_optimizer(model, "adam")
        return model, opt, HDETOneCycleLR(opt, **HDET_KW, process_group=group)

    model, opt, sched = build()
    _train(model, opt, sched, rank, 0, 30, group=group)
    straight = (flat(model), list(sched.get_last_lr()))

    model, opt, sched = build()
    _train(model, opt, sched, rank, 0, 13, group=group)                      # mid-window, after a controller sync
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    model, opt, sched = build()
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    sched.load_state_dict(ckpt["sched"])
    _train(model, opt, sched, rank, 13, 30, group=group)
    return {"straight": straight, "resumed": (flat(model), list(sched.get_last_lr()))}


def _direction(rank, sign, floor, group):
    """Constructed losses: loss = sign · (this rank's LR), so sign=-1 means higher LR ⇒ lower loss.

    floor = the start value (0.1/25) gives decay γ = 0; a lower floor adds a decay."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    sched = HDETOneCycleLR(opt, max_lr=0.1, total_steps=100, spread=0.2, sync_every=5, auto_lr_start=0,
                           temperature=1e-3, lr_floor=floor, perm_seed=3, process_group=group)
    start = sched.ensemble.base_lr()[0].item()
    for _ in range(50):
        sched.step(torch.tensor(sign * sched.get_last_lr()[0] * 10))
    return {"start": start, "end": sched.ensemble.base_lr()[0].item()}


def _mismatch(rank, group):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = HDETOneCycleLR(opt, max_lr=0.1, total_steps=20, spread=0.2, sync_every=2, auto_lr_start=0,
                           perm_seed=100 + rank, process_group=group)
    try:
        for _ in range(4):
            sched.step(torch.tensor(1.0))
    except PermutationMismatchError as e:
        return str(e)
    return None


def _missing_loss(rank, group):
    """The controller needs every rank's loss: step() without one must say so at the sync."""
    p = torch.nn.Parameter(torch.zeros(1))
    sched = HDETOneCycleLR(torch.optim.SGD([p], lr=0.1), max_lr=0.1, total_steps=10, sync_every=2,
                           auto_lr_start=0, process_group=group)
    try:
        sched.step(), sched.step()
    except ValueError as e:
        return str(e)
    return None


def _scenarios(rank, group):
    return {"sgd": _trajectory(rank, "sgd", group), "adam": _trajectory(rank, "adam", group),
            "resume": _resume(rank, group), "up": _direction(rank, -1.0, 0.004, group),
            "directions": {sign: _direction(rank, sign, 1e-4, group) for sign in (-1.0, 0.0, 1.0)},
            "mismatch": _mismatch(rank, group), "missing_loss": _missing_loss(rank, group)}


def worker(rank, world, port, out_dir):
    """Every scenario on all ``world`` ranks, then again on the subgroup of ranks {0, 1}."""
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        pair = dist.new_group([0, 1])
        result = {world: _scenarios(rank, None)}
        if rank < 2:
            result[2] = _scenarios(dist.get_rank(pair), pair)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
