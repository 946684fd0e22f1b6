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

from .geometry import num_vertices, polytope_vertices
from .particles import ParticleStepper, Proposal, step_geometry


@dataclass
class BlockSpec(PerturbationSpec):
    """Candidates that each move one block of ``particle_dim`` coordinates (PolyStep).

    Member ``m = (i V + v) K + k`` is the center with block ``i`` moved by
    ``rho s_k R_i u_v``. The spec holds keys and scalars only: the rotations
    are regenerated from ``(seed, step, particle)`` by :func:`step_geometry`
    on whichever worker evaluates the member. ``bias`` (biased rotation only)
    is the previous move ``[P, d]``, which travels like the center.
    """

    particle_dim: int = 2
    num_particles: int = 0
    polytope: str = "orthoplex"
    num_probes: int = 1
    rho: float = 1.0
    step: int = 0
    bias: Optional[torch.Tensor] = None

    kind = "block"

    def __post_init__(self):
        self._geometry = None  # (rotations, offsets) of every particle, when the strategy already has them

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_geometry"] = None
        return state

    @property
    def num_vertices(self) -> int:
        return num_vertices(self.polytope, self.particle_dim)

    @property
    def per_particle(self) -> int:
        """Members per particle, ``V K``."""
        return self.num_vertices * self.num_probes

    def geometry(self, particles=None):
        """``(rotations [n, d, d], offsets [n, V, K, d])`` of ``particles`` (default: all)."""
        if particles is None:
            particles = torch.arange(self.num_particles)
        particles = torch.as_tensor(particles, dtype=torch.int64).reshape(-1)
        if self._geometry is not None:
            return self._geometry[0][particles], self._geometry[1][particles]
        template = polytope_vertices(self.polytope, self.particle_dim)
        dtype = self.center.dtype if self.center.dtype == torch.float64 else torch.float32
        return step_geometry(self.seed, self.step, particles, template, self.rho, self.num_probes, self.bias, dtype)

    @property
    def offsets(self) -> torch.Tensor:
        """Probe offsets of every particle ``[P, V, K, d]``."""
        return self.geometry()[1]

    def blocks(self, members=None):
        """``(particle index [n], first coordinate [n], offset [n, d])`` of each member."""
        idx = member_index(members, self.popsize)
        particle = idx // self.per_particle
        used, inverse = torch.unique(particle, return_inverse=True)
        offsets = self.geometry(used)[1].reshape(used.numel(), self.per_particle, self.particle_dim)
        offset = offsets[inverse, idx % self.per_particle]
        return particle, particle * self.particle_dim, offset

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
    probe_jitter, scale_cost, num_probes, polytope, sinkhorn_*, dtype) go to
    :class:`~zoopt.polystep.particles.ParticleStepper`. ``auto_coast=False``
    leaves the amortized coast steps to the caller.
    """

    name = "polystep"

    def __init__(self, x0=None, *, dim: Optional[int] = None, particle_dim: int = 2, solver: str = "sinkhorn",
                 epsilon=0.1, step_radius=1.0, probe_radius=2.0, seed: int = 0, nonfinite: str = "worst",
                 popsize=None, auto_coast: bool = True, **options):
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
        self.auto_coast = bool(auto_coast)  # False: the caller runs coast steps itself (zoopt.PolyStep)
        self._proposal: Optional[Proposal] = None
        self.last_stats: dict = {}

    @property
    def center(self) -> torch.Tensor:
        return self.stepper.center

    def _ask(self) -> BlockSpec:
        st = self.stepper
        self._proposal = st.propose()
        bias = st.bias_directions()
        spec = BlockSpec(center=self.center.clone(), popsize=self.popsize, generation=self.generation, seed=st.seed,
                         particle_dim=st.particle_dim, num_particles=st.num_particles, polytope=st.polytope,
                         num_probes=st.num_probes, rho=float(self._proposal.values.rho), step=st.step,
                         bias=None if bias is None else bias.clone())
        spec._geometry = (self._proposal.rotations, self._proposal.offsets)  # same values, not recomputed here
        return spec

    def _tell(self, spec: BlockSpec, fitness: torch.Tensor) -> None:
        self.last_stats = self.stepper.update(self._proposal, fitness)
        self._proposal = None
        while self.auto_coast and self.stepper.is_coast():
            self.stepper.coast()

    def _state(self) -> dict:
        return {"stepper": self.stepper.state_dict()}

    def _load(self, state: dict) -> None:
        self.stepper.load_state_dict(state["stepper"])
        self._proposal = None


__all__ = ["PolyStepES", "BlockSpec"]
