"""Torch-module problems: the search vector is a model's trainable parameters.

Generic population forward: members' parameters are built from the spec in
chunks and run together through ``torch.func.functional_call`` under
``torch.vmap``. Structure-aware problems (EGGROLL's low-rank forward,
PolyStep's block evaluation) override ``evaluate``.
"""
from __future__ import annotations

import math

import torch
from torch.func import functional_call

from .base import Problem


def trainable(model: torch.nn.Module) -> dict:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def flatten_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in trainable(model).values()])


def load_flat(model: torch.nn.Module, flat: torch.Tensor) -> None:
    """Write a flat vector into the model's trainable parameters, in place."""
    offset = 0
    with torch.no_grad():
        for p in trainable(model).values():
            n = p.numel()
            p.copy_(flat[offset:offset + n].reshape(p.shape).to(p.dtype))
            offset += n
    if offset != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} entries, the model has {offset} trainable")


class Batches:
    """Deterministic minibatches: the batch of generation g is a pure function of (seed, g).

    Every member of a generation sees the same batch (common random numbers).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None, seed: int = 0):
        if len(x) != len(y):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        if batch_size is not None and not 1 <= batch_size:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y, self.seed = x, y, int(seed)
        self.batch_size = None if batch_size is None or batch_size >= len(x) else int(batch_size)

    def __call__(self, generation: int):
        if self.batch_size is None:
            return self.x, self.y
        per_epoch = len(self.x) // self.batch_size
        epoch, k = divmod(generation, per_epoch)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.x), generator=g)
        idx = perm[k * self.batch_size:(k + 1) * self.batch_size]
        return self.x[idx], self.y[idx]


class ModuleProblem(Problem):
    """Minimize ``loss_fn(model(x), y)`` over the model's trainable parameters.

    ``data`` is ``(x, y)`` (optionally with ``batch_size``) or a callable
    ``generation -> (x, y)``. ``chunk`` members run per vmap call.
    """

    def __init__(self, model: torch.nn.Module, loss_fn, data, batch_size: int | None = None,
                 chunk: int = 64, seed: int = 0):
        self.model = model
        self.loss_fn = loss_fn
        self.batches = data if callable(data) else Batches(*data, batch_size=batch_size, seed=seed)
        self.names = list(trainable(model))
        self.shapes = [p.shape for p in trainable(model).values()]
        self.dim = sum(math.prod(s) for s in self.shapes)
        self.buffers = dict(model.named_buffers())
        self.frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        self.chunk = int(chunk)

    def initial_point(self) -> torch.Tensor:
        return flatten_params(self.model)

    def unflatten(self, flat: torch.Tensor) -> dict:
        """``[M, D]`` -> {name: [M, *shape]}."""
        out, offset = {}, 0
        for name, shape in zip(self.names, self.shapes):
            n = math.prod(shape)
            out[name] = flat[:, offset:offset + n].reshape(flat.shape[0], *shape)
            offset += n
        return out

    def member_losses(self, params: dict, x, y) -> torch.Tensor:
        def one(p):
            out = functional_call(self.model, {**p, **self.frozen, **self.buffers}, (x,))
            return self.loss_fn(out, y)

        return torch.vmap(one, randomness="same")(params)

    @torch.no_grad()
    def batch_for(self, spec):
        """The minibatch ``(x, y)`` the members of ``spec`` are scored on."""
        return self.batches(spec.generation)

    def evaluate(self, spec, members) -> torch.Tensor:
        x, y = self.batch_for(spec)
        members = list(members)
        losses = []
        for start in range(0, len(members), self.chunk):
            flat = spec.points(members[start:start + self.chunk])
            losses.append(self.member_losses(self.unflatten(flat), x, y).reshape(-1))
        return torch.cat(losses).float()
