"""The PolyStep update on particle blocks, shared by the ask/tell strategy and the module optimizer.

State: ``X [P, d]`` (the search vector zero-padded to ``P d`` coordinates and
cut into blocks), an optional velocity, the displacement EMA used by coast
steps, the previous displacement (biased rotation) and the Sinkhorn duals.

One evaluated step at global counter ``t`` (polystep.md §2.3):
``propose()`` draws the rotations and probe offsets, the caller evaluates the
``P V K`` candidates (candidate ``(i, v, k)`` moves only block ``i`` by
``offsets[i, v, k]``), and ``update(costs)`` turns the cost matrix into a plan
and moves every block to its barycenter. Steps with ``t mod A != 0`` (amortize
``A``) are coast steps: ``X += (1 - (t mod A)/A) * dbar`` and no evaluation.
Randomness is a pure function of ``(seed, t, particle)`` through the keyed
counter generator (:func:`step_geometry`), so the state dict resumes a run bit
for bit and a worker holding only those keys regenerates any particle's probes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

from .geometry import (biased_rotations, jitter_uniform, num_vertices, polytope_vertices, probe_offsets,
                       step_rotations)
from .plans import barycentric_step, sanitize_costs, sinkhorn_plan, softmax_plan
from .schedules import Schedule, ScheduleLike, StepValues, as_schedule, check_radius, step_values

SOLVERS = ("softmax", "sinkhorn")
DISPLACEMENT_EMA = 0.7  # dbar <- 0.7 dbar + 0.3 delta


def _check_int(name, value, lo):
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return value


@dataclass
class Proposal:
    """One evaluated step's geometry: ``offsets[i, v, k]`` is the displacement of block ``i`` in candidate ``(i, v, k)``."""

    step: int
    values: StepValues
    rotations: torch.Tensor   # [P, d, d]
    offsets: torch.Tensor     # [P, V, K, d]

    @property
    def shape(self) -> Tuple[int, int, int]:
        p, v, k, _ = self.offsets.shape
        return p, v, k


def step_geometry(seed: int, step: int, particles: torch.Tensor, template: torch.Tensor, rho: float,
                  num_probes: int, bias: Optional[torch.Tensor] = None, dtype=torch.float32):
    """``(rotations [n, d, d], offsets [n, V, K, d])`` of ``particles [n]`` at ``step``.

    A pure function of its arguments: the keyed rotations of those particles,
    turned onto ``bias[particles]`` (the previous move, biased rotation) when
    given, and the probe offsets ``rho s_k R_i u_v``.
    """
    rot = step_rotations(seed, step, particles, template.shape[1], dtype=dtype)
    if bias is not None:
        rot = biased_rotations(rot, bias[particles].to(dtype))
    return rot, probe_offsets(template.to(dtype), rot, rho, num_probes)


class ParticleStepper:
    """PolyStep's block update over ``dim`` coordinates (see the module docstring).

    Arguments follow polystep.md: ``particle_dim`` d, ``polytope`` in
    orthoplex/simplex/cube, ``solver`` softmax (one-sided) or sinkhorn,
    ``epsilon`` a number or :class:`~zoopt.polystep.schedules.Schedule`,
    ``step_radius`` / ``probe_radius`` numbers (multiplied by epsilon) or
    schedules (used as is), ``num_probes`` K (probes at ``k/(K+1)`` of the
    probe radius), ``probe_jitter`` eta_max, ``momentum`` None or
    ``(beta0, beta1)`` warmed up linearly over ``momentum_warmup`` steps,
    ``biased_rotation``, ``amortize`` A.
    """

    def __init__(self, dim: int, *, particle_dim: int = 8, polytope: str = "orthoplex", solver: str = "softmax",
                 epsilon: ScheduleLike = 0.1, step_radius: ScheduleLike = 1.0, probe_radius: ScheduleLike = 2.0,
                 num_probes: int = 1, probe_jitter: float = 0.0, scale_cost: Union[float, str] = 1.0,
                 momentum: Optional[Tuple[float, float]] = None, momentum_warmup: int = 50,
                 biased_rotation: bool = False, amortize: int = 1, seed: int = 0,
                 sinkhorn_threshold: float = 1e-6, sinkhorn_max_iter: int = 2000, sinkhorn_check_every: int = 10,
                 x0: Optional[torch.Tensor] = None, dtype=torch.float32):
        self.dim = _check_int("dim", dim, 1)
        self.particle_dim = _check_int("particle_dim", particle_dim, 1)
        self.num_vertices = num_vertices(polytope, particle_dim)  # validates the name
        self.polytope = polytope
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        self.solver = solver
        self.epsilon: Schedule = as_schedule("epsilon", epsilon)
        self.step_radius = check_radius("step_radius", step_radius)
        self.probe_radius = check_radius("probe_radius", probe_radius)
        self.num_probes = _check_int("num_probes", num_probes, 1)
        if not (isinstance(probe_jitter, (int, float)) and 0 <= probe_jitter < 1):
            raise ValueError(f"probe_jitter must be in [0, 1), got {probe_jitter!r}")
        self.probe_jitter = float(probe_jitter)
        self.scale_cost = scale_cost
        if momentum is not None:
            if len(momentum) != 2 or not all(0 <= float(b) < 1 for b in momentum):
                raise ValueError(f"momentum must be None or (beta0, beta1) with betas in [0, 1), got {momentum!r}")
            momentum = (float(momentum[0]), float(momentum[1]))
        self.momentum = momentum
        self.momentum_warmup = _check_int("momentum_warmup", momentum_warmup, 1)
        self.biased_rotation = bool(biased_rotation)
        self.amortize = _check_int("amortize", amortize, 1)
        self.seed = int(seed)
        self.sinkhorn_opts = dict(threshold=sinkhorn_threshold, max_iter=sinkhorn_max_iter,
                                  check_every=sinkhorn_check_every)
        self.dtype = dtype
        self.num_particles = math.ceil(self.dim / self.particle_dim)
        self.template = polytope_vertices(polytope, particle_dim, dtype=dtype)
        flat = torch.zeros(self.num_particles * self.particle_dim, dtype=dtype)
        if x0 is not None:
            x0 = torch.as_tensor(x0, dtype=dtype).reshape(-1)
            if x0.numel() != self.dim:
                raise ValueError(f"x0 must have {self.dim} entries, got {x0.numel()}")
            flat[:self.dim] = x0
        self.X = flat.reshape(self.num_particles, self.particle_dim)
        self.step = 0
        self.reset_dynamics()
        self.f_dual: Optional[torch.Tensor] = None
        self.g_dual: Optional[torch.Tensor] = None
        self.last_nonfinite = 0

    def reset_dynamics(self) -> None:
        """Zero the velocity, the displacement EMA and the bias direction (absorb does this)."""
        self.velocity = torch.zeros_like(self.X) if self.momentum is not None else None
        self.dbar = torch.zeros_like(self.X)
        self.last_delta = torch.zeros_like(self.X)

    # -- geometry --------------------------------------------------------------------------------
    @property
    def center(self) -> torch.Tensor:
        """The search vector ``[dim]`` (padding dropped), a view."""
        return self.X.reshape(-1)[:self.dim]

    @property
    def popsize(self) -> int:
        return self.num_particles * self.num_vertices * self.num_probes

    def is_coast(self, step: Optional[int] = None) -> bool:
        return (self.step if step is None else step) % self.amortize != 0

    def beta(self, step: Optional[int] = None) -> float:
        b0, b1 = self.momentum
        t = self.step if step is None else step
        return b0 + min(1.0, t / max(1, self.momentum_warmup - 1)) * (b1 - b0)

    def propose(self) -> Proposal:
        """Rotations and probe offsets of the current step (:func:`step_geometry` of every particle)."""
        if self.is_coast():
            raise RuntimeError(f"step {self.step} is a coast step (amortize={self.amortize}); call coast()")
        u = jitter_uniform(self.seed, self.step) if self.probe_jitter else 0.5
        values = step_values(self.step, self.epsilon, self.step_radius, self.probe_radius, self.probe_jitter, u)
        rot, offsets = step_geometry(self.seed, self.step, torch.arange(self.num_particles), self.template, values.rho,
                                     self.num_probes, self.bias_directions(), self.dtype)
        return Proposal(self.step, values, rot, offsets)

    def bias_directions(self) -> Optional[torch.Tensor]:
        """The directions the next rotations are turned onto (the previous move), or None without bias."""
        return self.last_delta if self.biased_rotation else None

    # -- updates ---------------------------------------------------------------------------------
    def plan(self, costs: torch.Tensor, eps: float) -> torch.Tensor:
        if self.solver == "softmax":
            return softmax_plan(costs, eps, self.scale_cost)
        res = sinkhorn_plan(costs, eps, f_init=self.f_dual, g_init=self.g_dual, scale_cost=self.scale_cost,
                            **self.sinkhorn_opts)
        self.f_dual, self.g_dual = res.f, res.g
        return res.plan

    def update(self, proposal: Proposal, costs: torch.Tensor) -> dict:
        """Consume costs ``[P, V, K]`` (or ``[P, V]`` / flat, member order ``(i, v, k)``) and move the particles."""
        p, v, k = proposal.shape
        if proposal.step != self.step:
            raise RuntimeError(f"proposal is for step {proposal.step}, the stepper is at {self.step}")
        costs = torch.as_tensor(costs)
        if costs.numel() != p * v * k:
            raise ValueError(f"costs must have {p * v * k} entries (P={p}, V={v}, K={k}), got {costs.numel()}")
        clean, self.last_nonfinite = sanitize_costs(costs.reshape(p, v, k).mean(dim=2))
        weights = self.plan(clean.to(self.dtype) if self.dtype == torch.float64 else clean, proposal.values.eps)
        delta = barycentric_step(weights, self.template, proposal.rotations, proposal.values.alpha).to(self.dtype)
        previous = self.X.clone()
        if self.momentum is not None:
            self.velocity = self.beta() * self.velocity + delta
            self.X = self.X + self.velocity
        else:
            self.X = self.X + delta
        if not bool(torch.isfinite(self.X).all()):  # non-finite guard: revert, drop the velocity
            self.X = previous
            if self.velocity is not None:
                self.velocity.zero_()
            reverted = True
        else:
            reverted = False
            self.dbar = DISPLACEMENT_EMA * self.dbar + (1 - DISPLACEMENT_EMA) * delta
            self.last_delta = delta
        self.step += 1
        return {"step": self.step, "eps": proposal.values.eps, "alpha": proposal.values.alpha,
                "rho": proposal.values.rho, "cost_mean": float(clean.mean()), "cost_min": float(clean.min()),
                "move_max": float(delta.norm(dim=1).max()), "nonfinite": self.last_nonfinite, "reverted": reverted}

    def coast(self) -> None:
        """An amortized step without evaluations: ``X += (1 - (t mod A)/A) dbar``."""
        if not self.is_coast():
            raise RuntimeError(f"step {self.step} is an evaluated step, not a coast step")
        factor = 1.0 - (self.step % self.amortize) / self.amortize
        self.X = self.X + factor * self.dbar
        self.step += 1

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"X": self.X.clone(), "step": self.step, "velocity": None if self.velocity is None else self.velocity.clone(),
                "dbar": self.dbar.clone(), "last_delta": self.last_delta.clone(),
                "f_dual": self.f_dual, "g_dual": self.g_dual}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["X"].shape) != tuple(self.X.shape):
            raise ValueError(f"state has X of shape {tuple(state['X'].shape)}, expected {tuple(self.X.shape)}")
        self.X = state["X"].clone()
        self.step = int(state["step"])
        self.velocity = None if state["velocity"] is None else state["velocity"].clone()
        self.dbar, self.last_delta = state["dbar"].clone(), state["last_delta"].clone()
        self.f_dual, self.g_dual = state["f_dual"], state["g_dual"]


__all__ = ["ParticleStepper", "Proposal", "SOLVERS"]
