"""SPSA (Spall 1992): simultaneous-perturbation gradient estimate from two evaluations.

At iteration k = 1, 2, ... with a Rademacher direction Δ_k (±1 per coordinate):

    c_k = c / k^γ,   a_k = a / (A + k)^α
    θ <- θ - a_k · (f(θ + c_k Δ_k) - f(θ - c_k Δ_k)) / (2 c_k) · Δ_k

Defaults are the paper-benchmark settings of polystep.md §4.1 (a = c = 0.1,
α = 0.602, γ = 0.101) with A = 10% of the planned iterations. Δ_k is the sign of
keyed Philox noise, so a run is a pure function of its seed.
"""
from __future__ import annotations

import torch

from zoopt.kernels import normal
from zoopt.registry import register
from zoopt.spec import PointsSpec
from zoopt.strategy import Strategy, as_center, check_positive


class SPSA(Strategy):
    name = "spsa"

    def __init__(self, x0=None, *, dim: int | None = None, a: float = 0.1, c: float = 0.1,
                 alpha: float = 0.602, gamma: float = 0.101, A: float | None = None,
                 iterations: int | None = None, seed: int = 0, nonfinite: str = "worst", popsize: int = 2):
        super().__init__(popsize, seed=seed, nonfinite=nonfinite)
        if popsize != 2:
            raise ValueError(f"popsize must be 2 for SPSA (one +/- pair), got {popsize}")
        if x0 is None:
            if dim is None:
                raise ValueError("give x0 or dim")
            x0 = torch.zeros(int(dim))
        self._center = as_center(x0)
        self.a, self.c = check_positive("a", a), check_positive("c", c)
        self.alpha, self.gamma = check_positive("alpha", alpha), check_positive("gamma", gamma)
        if A is None:
            if iterations is not None and (isinstance(iterations, bool) or not isinstance(iterations, int)
                                           or iterations < 1):
                raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
            A = 0.1 * iterations if iterations else 0.0
        if not isinstance(A, (int, float)) or A < 0:
            raise ValueError(f"A must be a number >= 0, got {A!r}")
        self.A = float(A)
        self._delta = None

    @property
    def center(self) -> torch.Tensor:
        return self._center

    def gains(self, k: int) -> tuple:
        """``(a_k, c_k)`` for iteration ``k >= 1``."""
        return self.a / (self.A + k) ** self.alpha, self.c / k ** self.gamma

    def direction(self, generation: int) -> torch.Tensor:
        """The Rademacher direction of a generation (±1 per coordinate)."""
        z = normal(self.seed, 0, generation, [0], self._center.numel())[0]
        return torch.where(z >= 0, 1.0, -1.0)

    def _ask(self) -> PointsSpec:
        _, c_k = self.gains(self.generation + 1)
        delta = self._delta = self.direction(self.generation)  # reused by _tell: noise is costly to regenerate
        cand = torch.stack([self._center + c_k * delta, self._center - c_k * delta])
        return PointsSpec(center=self._center.clone(), popsize=2, generation=self.generation, seed=self.seed,
                          candidates=cand)

    def _tell(self, spec, fitness) -> None:
        a_k, c_k = self.gains(self.generation + 1)
        slope = float(fitness[0] - fitness[1]) / (2.0 * c_k)
        delta = self._delta if self._delta is not None else self.direction(self.generation)
        self._center = self._center - a_k * slope * delta
        self._delta = None

    def _state(self) -> dict:
        return {"center": self._center.clone(), "A": self.A}

    def _load(self, state: dict) -> None:
        self._center, self.A = state["center"].clone(), state["A"]
        self._delta = None


register("spsa", SPSA)
