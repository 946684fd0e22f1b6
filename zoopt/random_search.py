"""Random search, the floor every method must beat: Gaussian samples around a
fixed center, best-so-far kept. The samples are keyed noise like OpenAI-ES's."""
from __future__ import annotations

import torch

from zoopt.spec import GaussianSpec
from zoopt.strategy import Strategy, as_center, check_positive


class RandomSearch(Strategy):
    name = "random"

    def __init__(self, x0=None, *, dim: int | None = None, popsize: int = 64, sigma: float = 1.0,
                 seed: int = 0, nonfinite: str = "worst"):
        super().__init__(popsize, seed=seed, nonfinite=nonfinite)
        if x0 is None:
            if dim is None:
                raise ValueError("give x0 or dim")
            x0 = torch.zeros(int(dim))
        self._center = as_center(x0)
        self.sigma = check_positive("sigma", sigma)

    @property
    def center(self) -> torch.Tensor:
        return self._center

    def _ask(self) -> GaussianSpec:
        return GaussianSpec(center=self._center.clone(), popsize=self.popsize, generation=self.generation,
                            seed=self.seed, sigma=self.sigma, antithetic=False)

    def _tell(self, spec, fitness) -> None:
        pass  # the base class keeps the best sample

    def _state(self) -> dict:
        return {"center": self._center.clone(), "sigma": self.sigma}

    def _load(self, state: dict) -> None:
        self._center, self.sigma = state["center"].clone(), state["sigma"]
