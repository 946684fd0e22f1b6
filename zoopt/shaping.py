"""Fitness shaping and the non-finite fitness policy (minimization everywhere).

Non-finite policy (``nonfinite=``):

* ``"worst"`` (default): NaN, +inf and -inf are treated as failed evaluations and
  replaced by the worst finite value of the generation, so they rank last and
  pull the update away from themselves; the count is reported. If *every*
  member is non-finite the generation is rejected with
  :class:`NonFiniteFitnessError` and the strategy state is left untouched.
* ``"raise"``: any non-finite value raises :class:`NonFiniteFitnessError`.

-inf counts as a failure, not as a perfect score: a loss of -inf is a bug in
the objective far more often than a real optimum.
"""
from __future__ import annotations

import torch

SHAPINGS = ("centered_rank", "zscore", "raw")
NONFINITE_POLICIES = ("worst", "raise")


class NonFiniteFitnessError(ValueError):
    """Raised when a generation's fitness cannot be used; the state was not changed."""


def check_choice(name: str, value: str, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def sanitize_fitness(fitness: torch.Tensor, policy: str = "worst") -> tuple[torch.Tensor, int]:
    """Apply the non-finite policy; returns (clean fitness, number replaced)."""
    check_choice("nonfinite", policy, NONFINITE_POLICIES)
    bad = ~torch.isfinite(fitness)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return fitness, 0
    if policy == "raise":
        raise NonFiniteFitnessError(f"{n_bad} of {fitness.numel()} fitness values are not finite")
    if n_bad == fitness.numel():
        raise NonFiniteFitnessError("every fitness value of the generation is non-finite; generation rejected")
    worst = fitness[~bad].max()
    return torch.where(bad, worst, fitness), n_bad


def centered_ranks(fitness: torch.Tensor) -> torch.Tensor:
    """Ranks mapped to [-0.5, 0.5] (lowest fitness -> -0.5); ties share their mean rank."""
    n = fitness.numel()
    if n == 1:
        return torch.zeros_like(fitness)
    order = torch.argsort(fitness, stable=True)
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = torch.arange(n, dtype=torch.float64)
    # average ranks over ties so equal fitness gets equal weight
    uniq, inverse = torch.unique(fitness, return_inverse=True)
    if uniq.numel() < n:
        sums = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inverse, ranks)
        counts = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inverse, torch.ones(n, dtype=torch.float64))
        ranks = (sums / counts)[inverse]
    return (ranks / (n - 1) - 0.5).to(fitness.dtype)


def zscore(fitness: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(f - mean) / sqrt(var + eps): eps inside the root, as in the EGGROLL reference."""
    f = fitness.to(torch.float64)
    return ((f - f.mean()) / torch.sqrt(f.var(unbiased=False) + eps)).to(fitness.dtype)


def shape_fitness(fitness: torch.Tensor, method: str = "centered_rank") -> torch.Tensor:
    check_choice("fitness_shaping", method, SHAPINGS)
    fitness = fitness.to(torch.float32)
    if method == "centered_rank":
        return centered_ranks(fitness)
    if method == "zscore":
        return zscore(fitness)
    return fitness
