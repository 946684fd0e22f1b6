"""EGGROLLES: ask/tell EGGROLL for flat vectors (``zoopt.minimize(..., method="eggroll")``).

The vector is one full-rank block by default; ``shapes=[(m, n), (k,), ...]``
cuts it into tensors, the 2-D ones perturbed by rank-``r`` factors (``modes``
and ``tensor_ids`` set each block's mode and noise key, as the module
optimizer does for a model's parameters). Frozen blocks never move, whatever
the optimizer's weight decay. ``ask()``
returns a :class:`LowRankSpec`; ``tell()`` shapes the fitness and hands the
gradient estimate of :mod:`.update` to a torch.optim optimizer.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from zoopt.strategy import CenterOptimizerMixin, Strategy, check_positive

from .noise import noise_epoch
from .spec import LowRankSpec, make_blocks
from .update import check_shaping, lowrank_gradient, pair_weights, shape_fitness, vector_gradient


def check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def sigma_at(sigma0: float, generation: int, decay: float, schedule) -> float:
    """sigma for ``generation``: ``schedule(generation)`` when given, else ``sigma0 * decay**generation``."""
    if schedule is not None:
        return float(schedule(generation))
    return sigma0 * decay ** generation


class EGGROLLES(CenterOptimizerMixin, Strategy):
    """Ask/tell EGGROLL on a flat vector; see the module doc for ``shapes``."""

    name = "eggroll"

    def __init__(self, x0=None, *, dim: int | None = None, popsize: int = 64, sigma: float = 0.05,
                 lr: float = 0.05, rank: int = 1, shapes=None, vectors: str = "full", modes=None, tensor_ids=None,
                 names=None, optimizer="sgd",
                 weight_decay: float = 0.0, fitness_shaping: str = "zscore", group_size: int = 0,
                 noise_reuse: int = 1, sigma_decay: float = 1.0, sigma_schedule=None, seed: int = 0,
                 nonfinite: str = "worst", noise_chunk: int = 256, optimizer_kwargs: dict | None = None):
        super().__init__(popsize, seed=seed, nonfinite=nonfinite, antithetic=True)
        if x0 is None:
            if dim is None:
                raise ValueError("give x0 or dim")
            x0 = torch.zeros(check_int("dim", dim, 1))
        self.sigma0 = check_positive("sigma", sigma)
        self.rank = check_int("rank", rank, 1)
        self.noise_reuse = check_int("noise_reuse", noise_reuse, 0)
        self.noise_chunk = check_int("noise_chunk", noise_chunk, 1)
        if not 0 < sigma_decay <= 1:
            raise ValueError(f"sigma_decay must be in (0, 1], got {sigma_decay}")
        if sigma_schedule is not None and not callable(sigma_schedule):
            raise TypeError("sigma_schedule must be a callable generation -> sigma")
        self.sigma_decay, self.sigma_schedule = float(sigma_decay), sigma_schedule
        self.fitness_shaping, self.group_size = check_shaping(fitness_shaping, group_size, self.popsize)
        self._init_center(x0, optimizer, lr, weight_decay, optimizer_kwargs)
        self.blocks = make_blocks(shapes if shapes is not None else [(self.center.numel(),)],
                                  self.center.numel(), tensor_ids=tensor_ids, vectors=vectors, modes=modes,
                                  names=names)

    @property
    def sigma(self) -> float:
        return sigma_at(self.sigma0, self.generation, self.sigma_decay, self.sigma_schedule)

    def _ask(self) -> LowRankSpec:
        return LowRankSpec(center=self.center, popsize=self.popsize, generation=self.generation, seed=self.seed,
                           sigma=self.sigma, rank=self.rank, noise_reuse=self.noise_reuse, blocks=self.blocks)

    def gradient(self, spec: LowRankSpec, shaped: torch.Tensor) -> torch.Tensor:
        """The flat gradient estimate for shaped fitness ``[N]``."""
        w = pair_weights(shaped)
        epoch = noise_epoch(spec.generation, spec.noise_reuse)
        grad = torch.zeros_like(self.center)
        for b in spec.blocks:
            if b.mode == "lowrank":
                g = lowrank_gradient(spec.seed, b.tensor_id, epoch, w, *b.matrix, spec.rank, spec.sigma,
                                     spec.popsize, self.noise_chunk, device=self.center.device)
            elif b.mode == "full":
                g = vector_gradient(spec.seed, b.tensor_id, epoch, w, b.numel, spec.sigma, spec.popsize,
                                    self.noise_chunk, device=self.center.device)
            else:
                continue
            grad[b.offset:b.offset + b.numel] = g.reshape(-1)
        return grad

    def _tell(self, spec: LowRankSpec, fitness: torch.Tensor) -> None:
        shaped = shape_fitness(fitness, self.fitness_shaping, self.group_size)
        decays = any(group.get("weight_decay", 0) for group in self.optimizer.param_groups)
        frozen = [(b, self.center[b.offset:b.offset + b.numel].clone()) for b in self.blocks
                  if b.mode == "frozen" and decays]
        self._apply_gradient(self.gradient(spec, shaped))
        for b, value in frozen:  # decoupled weight decay would move them
            self.center[b.offset:b.offset + b.numel] = value

    def _state(self) -> dict:
        return copy.deepcopy(self._center_state())  # a snapshot: later steps must not change it

    def _load(self, state: dict) -> None:
        self._load_center(state)
