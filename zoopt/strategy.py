"""The Strategy contract shared by every method.

``ask()`` returns a perturbation spec, ``tell(fitness)`` consumes the fitness
of that spec's members (lower is better), ``state_dict()`` /
``load_state_dict()`` checkpoint everything the next generation depends on.
The base class handles what all strategies share: argument checks, the
non-finite policy, best-so-far tracking and the generation counter.
"""
from __future__ import annotations

import copy
import math
from typing import Optional

import numpy as np
import torch

from zoopt.shaping import NONFINITE_POLICIES, check_choice, sanitize_fitness
from zoopt.spec import PerturbationSpec


def as_center(x0, name: str = "x0") -> torch.Tensor:
    """A flat float32 copy of ``x0``; rejects non-finite and empty input."""
    if isinstance(x0, torch.Tensor):
        if x0.is_complex():  # .to(float32) would silently keep the real part
            raise TypeError(f"{name} must be real, got a complex tensor ({x0.dtype})")
        x = x0.detach().to(torch.float32).reshape(-1).clone()
    else:
        if np.iscomplexobj(x0):
            raise TypeError(f"{name} must be real, got complex values")
        try:
            x = torch.as_tensor(np.asarray(x0, dtype=np.float64), dtype=torch.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be array-like of real numbers: {exc}") from None
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite everywhere")
    return x


def check_popsize(popsize, antithetic: bool) -> int:
    if isinstance(popsize, bool) or not isinstance(popsize, (int, np.integer)):
        raise TypeError(f"popsize must be an int, got {type(popsize).__name__}")
    if popsize < 2:
        raise ValueError(f"popsize must be >= 2, got {popsize}")
    if antithetic and popsize % 2:
        raise ValueError(f"popsize must be even with antithetic sampling, got {popsize}")
    return int(popsize)


def check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class Strategy:
    """Base class: subclasses implement ``_ask()`` and ``_tell(spec, fitness)``."""

    name = "strategy"
    keep_best = True  # False: track best_f only, never build the best member's vector (large models)

    def __init__(self, popsize: int, seed: int = 0, nonfinite: str = "worst", antithetic: bool = False):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
        self.popsize = check_popsize(popsize, antithetic)
        self.seed = int(seed)
        self.nonfinite = check_choice("nonfinite", nonfinite, NONFINITE_POLICIES)
        self.generation = 0
        self.best_x: Optional[torch.Tensor] = None
        self.best_f = math.inf
        self.last_nonfinite = 0
        self._pending: Optional[PerturbationSpec] = None

    # -- the contract -------------------------------------------------------------
    @property
    def mean(self) -> torch.Tensor:
        """The current center (a copy)."""
        return self.center.detach().clone()

    @property
    def center(self) -> torch.Tensor:
        raise NotImplementedError

    def ask(self) -> PerturbationSpec:
        if self._pending is None:
            self._pending = self._ask()
        return self._pending

    def tell(self, fitness) -> dict:
        """Update from the fitness of the last ``ask()``'s members; returns generation stats."""
        if self._pending is None:
            raise RuntimeError("tell() called without a pending ask()")
        spec = self._pending
        f = torch.as_tensor(np.asarray(fitness.detach().cpu() if isinstance(fitness, torch.Tensor) else fitness,
                                       dtype=np.float64)).to(torch.float32)
        if f.shape != (spec.popsize,):
            raise ValueError(f"fitness must have shape ({spec.popsize},), got {tuple(f.shape)}")
        clean, n_bad = sanitize_fitness(f, self.nonfinite)  # raises before any state changes
        i = int(torch.argmin(clean))
        if float(clean[i]) < self.best_f:
            self.best_f = float(clean[i])
            if self.keep_best:
                self.best_x = spec.points([i])[0].detach().cpu().clone()
        self._tell(spec, clean)
        self._pending = None
        self.generation += 1
        self.last_nonfinite = n_bad
        return {"generation": self.generation, "min": float(clean.min()), "mean": float(clean.mean()),
                "max": float(clean.max()), "best": self.best_f, "nonfinite": n_bad}

    def stop(self) -> dict:
        """Stopping conditions that hold now (empty when none); pycma-style."""
        return {}

    # -- checkpoints --------------------------------------------------------------
    def state_dict(self) -> dict:
        if self._pending is not None:
            raise RuntimeError("state_dict() between ask() and tell(): checkpoint after tell()")
        return {"name": self.name, "generation": self.generation, "seed": self.seed,
                "best_x": self.best_x, "best_f": self.best_f, **self._state()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"state_dict is for {state.get('name')!r}, not {self.name!r}")
        self.generation = state["generation"]
        self.seed = state["seed"]
        self.best_x, self.best_f = state["best_x"], state["best_f"]
        self._pending = None
        self._load(state)

    # -- subclass hooks -----------------------------------------------------------
    def _ask(self) -> PerturbationSpec:
        raise NotImplementedError

    def _tell(self, spec: PerturbationSpec, fitness: torch.Tensor) -> None:
        raise NotImplementedError

    def _state(self) -> dict:
        return {}

    def _load(self, state: dict) -> None:
        pass


class CenterOptimizerMixin:
    """A center held as a torch parameter and moved by a torch.optim optimizer."""

    def _init_center(self, x0, optimizer, lr, weight_decay, optimizer_kwargs=None):
        from zoopt.optim import make_optimizer

        self._center = torch.nn.Parameter(as_center(x0), requires_grad=False)
        self.optimizer = make_optimizer(optimizer, [self._center], lr=lr, weight_decay=weight_decay,
                                        **(optimizer_kwargs or {}))

    @property
    def center(self) -> torch.Tensor:
        return self._center.data

    def _apply_gradient(self, grad: torch.Tensor) -> None:
        self._center.grad = grad.to(self._center.dtype)
        self.optimizer.step()
        self._center.grad = None

    def _center_state(self) -> dict:
        # deep copy: torch's optimizer state_dict references the live state tensors
        return {"center": self._center.data.clone(), "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def _load_center(self, state: dict) -> None:
        self._center.data.copy_(state["center"])
        self.optimizer.load_state_dict(state["optimizer"])
