"""OpenAI-ES (Salimans et al. 2017): antithetic Gaussian perturbations, shaped
fitness, and a gradient estimate handed to a torch.optim optimizer.

    g = 1 / (N * sigma) * sum_i w_i * s_i * eps_pair(i)

with w the shaped fitness (minimization: the optimizer steps against g). The
noise is regenerated from its key in chunks of pairs, never stored per member.
"""
from __future__ import annotations

import torch

from zoopt.shaping import SHAPINGS, check_choice, shape_fitness
from zoopt.spec import GaussianSpec
from zoopt.strategy import CenterOptimizerMixin, Strategy, check_positive


class OpenAIES(CenterOptimizerMixin, Strategy):
    name = "openai_es"

    def __init__(self, x0=None, *, dim: int | None = None, popsize: int = 64, sigma: float = 0.1,
                 lr: float = 0.05, optimizer="adam", weight_decay: float = 0.0,
                 fitness_shaping: str = "centered_rank", antithetic: bool = True,
                 sigma_decay: float = 1.0, sigma_min: float = 0.0, seed: int = 0,
                 nonfinite: str = "worst", noise_chunk: int = 256, optimizer_kwargs: dict | None = None):
        super().__init__(popsize, seed=seed, nonfinite=nonfinite, antithetic=antithetic)
        if x0 is None:
            if dim is None:
                raise ValueError("give x0 or dim")
            x0 = torch.zeros(int(dim))
        self.sigma = check_positive("sigma", sigma)
        if not 0 < sigma_decay <= 1:
            raise ValueError(f"sigma_decay must be in (0, 1], got {sigma_decay}")
        self.sigma_decay, self.sigma_min = float(sigma_decay), float(sigma_min)
        self.fitness_shaping = check_choice("fitness_shaping", fitness_shaping, SHAPINGS)
        self.antithetic = bool(antithetic)
        self.noise_chunk = int(noise_chunk)
        self._init_center(x0, optimizer, lr, weight_decay, optimizer_kwargs)

    def _ask(self) -> GaussianSpec:
        return GaussianSpec(center=self.center.clone(), popsize=self.popsize, generation=self.generation,
                            seed=self.seed, sigma=self.sigma, antithetic=self.antithetic)

    def gradient(self, spec: GaussianSpec, weights: torch.Tensor) -> torch.Tensor:
        """The ES gradient estimate for shaped weights ``[N]``, noise regenerated chunk by chunk."""
        if self.antithetic:  # pair k contributes (w_2k - w_2k+1) * eps_k
            pair_w = weights[0::2] - weights[1::2]
        else:
            pair_w = weights
        grad = torch.zeros(spec.dim, dtype=torch.float32)
        step = self.noise_chunk
        for start in range(0, pair_w.numel(), step):
            stop = min(start + step, pair_w.numel())
            members = torch.arange(start, stop) * (2 if self.antithetic else 1)
            eps = spec.noise(members)  # sign is +1 for even members
            grad += pair_w[start:stop].to(eps.dtype) @ eps
        return grad / (self.popsize * self.sigma)

    def _tell(self, spec: GaussianSpec, fitness: torch.Tensor) -> None:
        weights = shape_fitness(fitness, self.fitness_shaping)
        self._apply_gradient(self.gradient(spec, weights))
        self.sigma = max(self.sigma * self.sigma_decay, self.sigma_min)

    def _state(self) -> dict:
        return {"sigma": self.sigma, **self._center_state()}

    def _load(self, state: dict) -> None:
        self.sigma = state["sigma"]
        self._load_center(state)
