"""Perturbation specs: what a strategy's ``ask()`` returns.

A spec names a generation's candidates without holding them: the center, the
noise key and the structure. Problems that know the structure evaluate it
cheaply; ``points(members)`` is the generic fallback that builds explicit
candidate vectors for a slice of members. Specs are small and picklable apart
from the center, which evaluators ship once per generation.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
import torch

from zoopt.kernels import normal


def member_index(members, popsize: int) -> torch.Tensor:
    """Members as an int64 tensor, checked against ``popsize``."""
    if members is None:
        return torch.arange(popsize)
    if isinstance(members, range):
        idx = torch.arange(members.start, members.stop, members.step or 1)
    else:
        idx = torch.as_tensor(np.asarray(members), dtype=torch.int64).reshape(-1)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= popsize):
        raise ValueError(f"members must lie in [0, {popsize}), got [{int(idx.min())}, {int(idx.max())}]")
    return idx


@dataclass
class PerturbationSpec:
    """Base spec. ``center`` is the flat float32 center, ``popsize`` the number of members."""

    center: torch.Tensor
    popsize: int
    generation: int
    seed: int
    extras: dict = field(default_factory=dict)

    kind = "base"

    @property
    def dim(self) -> int:
        return int(self.center.numel())

    def points(self, members=None) -> torch.Tensor:
        """Explicit candidates ``[len(members), dim]``."""
        raise NotImplementedError

    def __array__(self, dtype=None, copy=None):
        # Lets pycma-style code write ``fn(np.asarray(es.ask()))``.
        arr = self.points().detach().cpu().numpy()
        return arr.astype(dtype) if dtype is not None else arr

    def __len__(self) -> int:
        return self.popsize

    def with_center(self, center: torch.Tensor) -> "PerturbationSpec":
        return replace(self, center=center)


@dataclass
class GaussianSpec(PerturbationSpec):
    """Full-rank keyed Gaussian perturbations ``center + sign * sigma * eps(pair)``.

    With ``antithetic``, member ``2k`` is ``+eps_k`` and member ``2k+1`` is ``-eps_k``;
    otherwise member ``i`` uses ``eps_i``. ``eps`` comes from the keyed generator
    with ``tensor_id``, so it is never stored.
    """

    sigma: float = 0.1
    antithetic: bool = True
    tensor_id: int = 0

    kind = "gaussian"

    def pairs_and_signs(self, members=None):
        idx = member_index(members, self.popsize)
        if self.antithetic:
            return idx // 2, 1.0 - 2.0 * (idx % 2).to(torch.float32)
        return idx, torch.ones(idx.numel())

    def noise(self, members=None) -> torch.Tensor:
        """Signed unit noise ``[len(members), dim]`` (``sign * eps``)."""
        pairs, signs = self.pairs_and_signs(members)
        eps = normal(self.seed, self.tensor_id, self.generation, pairs, self.dim, device=self.center.device)
        return eps * signs.to(eps.device)[:, None]

    def points(self, members=None) -> torch.Tensor:
        return self.center[None, :] + self.sigma * self.noise(members).to(self.center.dtype)


@dataclass
class PointsSpec(PerturbationSpec):
    """Explicit candidates (CMA-ES and other samplers that own their RNG)."""

    candidates: Optional[torch.Tensor] = None

    kind = "points"

    def points(self, members=None) -> torch.Tensor:
        return self.candidates[member_index(members, self.popsize)]
