"""Torch-module problems: the search vector is a model's trainable parameters.

Generic population forward: members' parameters are built from the spec in
chunks and run together through ``torch.func.functional_call`` under
``torch.vmap``. A method that knows a cheaper way (EGGROLL's low-rank
population layers, PolyStep's staged block evaluation) registers it for its
spec kind with :func:`register_structured`; :meth:`ModuleProblem.evaluate`
picks it from ``spec.kind`` and falls back to ``spec.points()``.

The minibatch a generation is scored on is named in ``spec.extras[BATCH_KEY]``:
``(epoch, k)`` names rows of the problem's own data (drawn as :func:`epoch_order`
draws them, so an actor that holds the data needs only two ints), ``(x, y)``
travels by value; without it the batch is ``batches(generation)``.
"""
from __future__ import annotations

import math
import numbers
import pickle
from typing import Callable, Dict

import torch
from torch.func import functional_call

from zoopt.spec import member_index

from .base import Problem

BATCH_KEY = "batch"

# spec kind -> evaluate(problem, spec, members [n] int64, x, y) -> losses [n]
STRUCTURED: Dict[str, Callable] = {}


def register_structured(kind: str, evaluate: Callable) -> None:
    """Make ``evaluate(problem, spec, members, x, y)`` the ModuleProblem path for specs of ``kind``."""
    STRUCTURED[kind] = evaluate


def batch_entry(batch, has_data: bool, owner: str = "this optimizer") -> tuple:
    """The ``spec.extras[BATCH_KEY]`` entry of a step's ``batch``: three ints ``(epoch, k, batch_size)``
    naming rows of the problem's own data, or ``(x, y)`` by value. A view (``x[:80]``) is copied, so that
    shipping it to an actor sends its rows, not the whole tensor behind it."""
    if isinstance(batch, (tuple, list)) and len(batch) == 3 and \
            all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in batch):
        if not has_data:
            raise ValueError(f"batch (epoch, k, batch_size) needs data=(x_train, y_train): {owner} was built "
                             "without data")
        epoch, k, size = (int(v) for v in batch)
        if epoch < 0 or k < 0 or size < 1:
            raise ValueError(f"batch (epoch, k, batch_size) needs epoch, k >= 0 and batch_size >= 1, got {batch}")
        return (epoch, k, size)
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError("batch must be a pair (x, y) or a triple of ints (epoch, k, batch_size)")
    return tuple(_own_storage(t) for t in batch)


def _own_storage(t):
    if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() > t.numel() * t.element_size():
        return t.clone()
    return t


def same_loss(a, b) -> bool:
    """True when two loss functions compute the same thing: the same object, or equal pickles (a fresh
    ``nn.CrossEntropyLoss()`` per step must not re-ship the problem to every actor)."""
    if a is b:
        return True
    try:
        return pickle.dumps(a) == pickle.dumps(b)
    except Exception:  # unpicklable (a lambda): only the same object counts
        return False


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which epoch ``epoch`` visits ``n`` training examples (loops and actors agree)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch)))


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
        return self.rows(*divmod(generation, per_epoch))

    def rows(self, epoch: int, k: int, batch_size: int | None = None):
        """Minibatch ``k`` of epoch ``epoch`` (``batch_size`` rows, default this loader's)."""
        size = batch_size or self.batch_size or len(self.x)
        idx = epoch_order(len(self.x), self.seed, epoch)[k * size:(k + 1) * size]
        return self.x[idx], self.y[idx]


class ModuleProblem(Problem):
    """Minimize ``loss_fn(model(x), y)`` over the model's trainable parameters.

    ``data`` is ``(x, y)`` (optionally with ``batch_size``) or a callable
    ``generation -> (x, y)``. ``chunk`` members run per vmap call.
    ``structured=False`` forces the generic ``points()`` path for every kind.
    """

    def __init__(self, model: torch.nn.Module, loss_fn, data, batch_size: int | None = None,
                 chunk: int = 64, seed: int = 0, structured: bool = True):
        self.model = model
        self.loss_fn = loss_fn
        self.batches = data if callable(data) else Batches(*data, batch_size=batch_size, seed=seed)
        self.names = list(trainable(model))
        self.shapes = [p.shape for p in trainable(model).values()]
        self.dim = sum(math.prod(s) for s in self.shapes)
        self.buffers = dict(model.named_buffers())
        self.frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        self.chunk = int(chunk)
        self.structured = bool(structured)
        self.cache: dict = {}  # per-kind helpers of structured evaluations (rebuilt, never shipped)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["cache"] = {}
        return state

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
        """The minibatch ``(x, y)`` the members of ``spec`` are scored on (see the module doc)."""
        named = spec.extras.get(BATCH_KEY)
        if named is None:
            return self.batches(spec.generation)
        if isinstance(named[0], torch.Tensor):
            return named
        if not isinstance(self.batches, Batches):
            raise ValueError("a batch named by (epoch, k) needs a ModuleProblem built from (x, y) data")
        epoch, k, batch_size = named
        return self.batches.rows(epoch, k, batch_size)

    def evaluate(self, spec, members) -> torch.Tensor:
        x, y = self.batch_for(spec)
        structured = STRUCTURED.get(spec.kind) if self.structured else None
        if structured is not None:
            return structured(self, spec, member_index(members, spec.popsize), x, y).float()
        members = list(members)
        losses = []
        for start in range(0, len(members), self.chunk):
            flat = spec.points(members[start:start + self.chunk])
            losses.append(self.member_losses(self.unflatten(flat), x, y).reshape(-1))
        return torch.cat(losses).float()
