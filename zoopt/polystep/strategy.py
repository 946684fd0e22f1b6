"""Ask/tell PolyStep over a raw vector (full-space mode, blocks of ``particle_dim`` coordinates).

``ask()`` returns a :class:`BlockSpec`: member ``m = (i V + v) K + k`` is the
center with block ``i`` moved by ``offsets[i, v, k]``. ``points()`` builds
those full candidate vectors; problems that know the structure use
``blocks()`` (the moved block and its offset) instead. After an evaluated
step, ``tell`` also runs the amortized coast steps (which need no
evaluations), so the next ``ask`` is always an evaluated step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from zoopt.spec import PerturbationSpec, member_index
from zoopt.strategy import Strategy, as_center

from .particles import ParticleStepper, Proposal


@dataclass
class BlockSpec(PerturbationSpec):
    """Candidates that each move one block of ``particle_dim`` coordinates (PolyStep)."""

    particle_dim: int = 2
    offsets: Optional[torch.Tensor] = None   # [P, V, K, d]

    kind = "block"

    @property
    def num_particles(self) -> int:
        return int(self.offsets.shape[0])

    def blocks(self, members=None):
        """``(particle index [n], first coordinate [n], offset [n, d])`` of each member."""
        idx = member_index(members, self.popsize)
        p, v, k, d = self.offsets.shape
        particle = idx // (v * k)
        offset = self.offsets.reshape(p * v * k, d)[idx]
        return particle, particle * d, offset

    def points(self, members=None) -> torch.Tensor:
        particle, start, offset = self.blocks(members)
        d = self.particle_dim
        n = particle.numel()
        padded = self.num_particles * d
        out = torch.zeros(n, padded, dtype=self.center.dtype)
        out[:, :self.dim] = self.center[None, :]
        cols = start[:, None] + torch.arange(d)[None, :]
        out.scatter_add_(1, cols, offset.to(out.dtype))
        return out[:, :self.dim]


class PolyStepES(Strategy):
    """PolyStep as an ask/tell strategy over ``x0`` (or ``dim`` zeros); minimization.

    Defaults follow the reference library's full-space mode: ``particle_dim=2``,
    orthoplex, ``solver="sinkhorn"`` (two-sided OT; pass ``"softmax"`` for the
    one-sided rule), ``epsilon=0.1``, ``step_radius=1.0`` and
    ``probe_radius=2.0`` (plain numbers are multiplied by epsilon), one probe.
    Other keywords (momentum, momentum_warmup, biased_rotation, amortize,
    probe_jitter, scale_cost, num_probes, polytope, sinkhorn_*) go to
    :class:`~zoopt.polystep.particles.ParticleStepper`.
    """

    name = "polystep"

    def __init__(self, x0=None, *, dim: Optional[int] = None, particle_dim: int = 2, solver: str = "sinkhorn",
                 epsilon=0.1, step_radius=1.0, probe_radius=2.0, seed: int = 0, nonfinite: str = "worst",
                 popsize=None, **options):
        if x0 is None:
            if dim is None:
                raise ValueError("give x0 or dim")
            x0 = torch.zeros(int(dim))
        x0 = as_center(x0)
        stepper = ParticleStepper(x0.numel(), particle_dim=particle_dim, solver=solver, epsilon=epsilon,
                                  step_radius=step_radius, probe_radius=probe_radius, seed=seed, x0=x0, **options)
        if popsize is not None and popsize != stepper.popsize:
            raise ValueError(f"PolyStep's popsize is fixed by the geometry (P*V*K = {stepper.popsize}), got {popsize}")
        super().__init__(max(2, stepper.popsize), seed=seed, nonfinite=nonfinite)
        self.popsize = stepper.popsize
        self.stepper = stepper
        self._proposal: Optional[Proposal] = None
        self.last_stats: dict = {}

    @property
    def center(self) -> torch.Tensor:
        return self.stepper.center

    def _ask(self) -> BlockSpec:
        self._proposal = self.stepper.propose()
        return BlockSpec(center=self.center.clone(), popsize=self.popsize, generation=self.generation, seed=self.seed,
                         particle_dim=self.stepper.particle_dim, offsets=self._proposal.offsets)

    def _tell(self, spec: BlockSpec, fitness: torch.Tensor) -> None:
        self.last_stats = self.stepper.update(self._proposal, fitness)
        self._proposal = None
        while self.stepper.is_coast():
            self.stepper.coast()

    def _state(self) -> dict:
        return {"stepper": self.stepper.state_dict()}

    def _load(self, state: dict) -> None:
        self.stepper.load_state_dict(state["stepper"])
        self._proposal = None


__all__ = ["PolyStepES", "BlockSpec"]
