"""PolyStep's block specs on a torch-module problem (the ``"block"`` kind of ``ModuleProblem``).

``zoopt.PolyStep`` searches the subspace coordinates ``z`` of
``theta = theta_base + Pi z``. Its problem is a plain
:class:`~zoopt.problems.module.ModuleProblem` carrying a :class:`BlockSetup`
in ``problem.block_setup``: the base point and the subspace's settings, shipped
once with the problem. Per generation only the spec crosses (keys, scalars and
the center ``z``); a worker rebuilds the map ``Pi`` from its seed, writes
``theta`` into its model copy once per center and runs the staged
:class:`~zoopt.polystep.evaluate.BlockEvaluator` on the particles its members
belong to. Those helpers live in ``problem.cache`` (rebuilt, never shipped).

A block spec on a module problem without a setup moves raw parameters (full
space): it is scored through ``spec.points()``, the generic path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from zoopt.problems.module import register_structured

from .evaluate import BlockEvaluator
from .subspace import SPARSE_THRESHOLD_BYTES, HybridSubspace

CACHE_KEY = "block"


@dataclass
class BlockSetup:
    """What a worker needs, besides its model copy, to score block specs over ``z``."""

    base: torch.Tensor                      # theta_base [num_params]
    rank: Optional[int] = 4                 # None: full space (identity map)
    subspace_seed: int = 0
    max_subspace_dim: Optional[int] = None
    sparse_threshold_bytes: int = SPARSE_THRESHOLD_BYTES
    structured: bool = True
    activation_bytes: Optional[int] = None
    compile: object = "auto"

    def subspace(self, model) -> HybridSubspace:
        return HybridSubspace.from_module(model, rank=self.rank, max_subspace_dim=self.max_subspace_dim,
                                          seed=self.subspace_seed, dtype=self.base.dtype,
                                          sparse_threshold_bytes=self.sparse_threshold_bytes)


class BlockHelpers:
    """The subspace map, the staged evaluator and the last center written into the model."""

    def __init__(self, problem, setup: BlockSetup, particle_dim: int):
        self.particle_dim = int(particle_dim)
        self.subspace = setup.subspace(problem.model)
        self.evaluator = BlockEvaluator(problem.model, self.subspace, particle_dim, structured=setup.structured,
                                        activation_bytes=setup.activation_bytes, compile=setup.compile)
        self.base: Optional[torch.Tensor] = None
        self.z: Optional[torch.Tensor] = None
        self.theta: Optional[torch.Tensor] = None

    def theta_of(self, base: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return base + self.subspace.project(z.to(base.dtype))

    def write(self, theta: torch.Tensor) -> None:
        """Copy the flat parameters ``theta`` into the model."""
        with torch.no_grad():
            for layer in self.subspace.layers:
                p = self.evaluator.params[layer.name]
                p.copy_(theta[layer.param_start:layer.param_start + layer.numel].reshape(p.shape))

    def at_center(self, base: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``theta`` of center ``z``, written into the model unless it already holds it."""
        if self.z is None or self.base is not base or self.z.shape != z.shape or not torch.equal(self.z, z):
            self.theta = self.theta_of(base, z)
            self.write(self.theta)
            self.base, self.z = base, z.clone()
        return self.theta


def helpers(problem, particle_dim: int) -> BlockHelpers:
    """The problem's cached :class:`BlockHelpers` (built on first use on each worker)."""
    setup = problem.block_setup
    found = problem.cache.get(CACHE_KEY)
    if found is None or found.particle_dim != int(particle_dim):
        found = problem.cache[CACHE_KEY] = BlockHelpers(problem, setup, particle_dim)
    return found


@torch.no_grad()
def block_losses(problem, spec, members: torch.Tensor, x, y) -> torch.Tensor:
    """Losses ``[n]`` of ``members`` of a :class:`~zoopt.polystep.strategy.BlockSpec` on ``(x, y)``."""
    if getattr(problem, "block_setup", None) is None:
        return _generic_losses(problem, spec, members, x, y)
    h = helpers(problem, spec.particle_dim)
    if spec.num_particles != h.evaluator.num_particles:
        raise ValueError(f"spec has {spec.num_particles} particles, the problem's subspace {h.evaluator.num_particles}")
    if members.numel() == 0:
        return torch.zeros(0)
    theta = h.at_center(problem.block_setup.base, spec.center)
    per = spec.per_particle
    lo, hi = int(members.min()) // per, int(members.max()) // per + 1
    _, offsets = spec.geometry(torch.arange(lo, hi))
    costs = h.evaluator.losses(x, y, problem.loss_fn, offsets, theta, first=lo).reshape(-1)
    return costs[members - lo * per]


def _generic_losses(problem, spec, members, x, y) -> torch.Tensor:
    out = []
    for start in range(0, members.numel(), problem.chunk):
        flat = spec.points(members[start:start + problem.chunk])
        out.append(problem.member_losses(problem.unflatten(flat), x, y).reshape(-1))
    return torch.cat(out) if out else torch.zeros(0)


register_structured("block", block_losses)

__all__ = ["BlockSetup", "BlockHelpers", "helpers", "block_losses"]
