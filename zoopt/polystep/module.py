"""``zoopt.PolyStep``: train a torch module with PolyStep, one minibatch per ``step``.

The trainable parameters are ``theta = theta_base + Pi z`` (hybrid random
subspace, :mod:`zoopt.polystep.subspace`; ``rank=None`` is full space) and the
coordinates ``z`` are the particles of :class:`~zoopt.polystep.particles.ParticleStepper`.
``step((x, y), loss_fn)`` evaluates all ``P V K`` candidates on that batch
with the structure-aware evaluator (:mod:`zoopt.polystep.evaluate`), moves
the particles, writes ``theta`` into the model and returns the center's loss
on the batch (computed before the move). Coast steps (``amortize > 1``)
evaluate only the center.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .evaluate import BlockEvaluator
from .particles import ParticleStepper
from .subspace import SPARSE_THRESHOLD_BYTES, HybridSubspace


class PolyStep:
    """PolyStep optimizer for ``model`` (updates it in place).

    Subspace: ``rank`` (None = full parameter space), ``max_subspace_dim``,
    ``subspace_seed`` (fixed map, 0 by default as in the paper runs, not the
    run seed), ``absorb_interval`` (0 = never; fold ``Pi z`` into
    ``theta_base`` and reset ``z``, the velocity and the bias direction every
    that many steps). Particles: ``particle_dim`` (8 in a subspace, 2 in full
    space by default), ``polytope``, ``solver`` (default softmax in a
    subspace, sinkhorn in full space), ``epsilon``, ``step_radius``,
    ``probe_radius``, ``num_probes``, ``probe_jitter``, ``scale_cost``,
    ``momentum``, ``momentum_warmup``, ``biased_rotation``, ``amortize``.
    ``structured=False`` forces the generic vmap evaluation; ``compile``
    (True, False or "auto": only for large candidate stacks) lets
    ``torch.compile`` fuse the stages after a perturbed affine stage.
    """

    def __init__(self, model: nn.Module, *, rank: Optional[int] = 4, max_subspace_dim: Optional[int] = None,
                 subspace_seed: int = 0, particle_dim: Optional[int] = None, solver: Optional[str] = None,
                 epsilon=0.1, step_radius=1.0, probe_radius=2.0, absorb_interval: int = 0, seed: int = 0,
                 structured: bool = True, activation_bytes: Optional[int] = None,
                 sparse_threshold_bytes: int = SPARSE_THRESHOLD_BYTES, compile="auto", **options):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(absorb_interval, bool) or not isinstance(absorb_interval, int) or absorb_interval < 0:
            raise ValueError(f"absorb_interval must be an int >= 0, got {absorb_interval!r}")
        if rank is None and max_subspace_dim is not None:
            raise ValueError("max_subspace_dim needs a subspace (rank is None means full space)")
        self.model = model
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model has no trainable parameters")
        dtype = params[0].dtype
        self.subspace = HybridSubspace.from_module(model, rank=rank, max_subspace_dim=max_subspace_dim,
                                                   seed=subspace_seed, dtype=dtype,
                                                   sparse_threshold_bytes=sparse_threshold_bytes)
        if particle_dim is None:
            particle_dim = 8 if rank is not None else 2
        if solver is None:
            solver = "softmax" if rank is not None else "sinkhorn"
        self.stepper = ParticleStepper(self.subspace.dim, particle_dim=particle_dim, solver=solver, epsilon=epsilon,
                                       step_radius=step_radius, probe_radius=probe_radius, seed=seed, dtype=dtype,
                                       **options)
        self.absorb_interval = absorb_interval
        self.evaluator = BlockEvaluator(model, self.subspace, particle_dim, structured=structured,
                                        activation_bytes=activation_bytes, compile=compile)
        self.theta_base = torch.cat([p.detach().reshape(-1) for p in params]).clone()
        self.evaluations = 0  # candidate forward passes (the one center forward per step is not counted)
        self.last_stats: dict = {}

    # -- parameters ------------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        return self.stepper.seed

    @property
    def evaluations_per_step(self) -> int:
        """Candidates per evaluated step, ``P V K``."""
        return self.stepper.popsize

    def theta(self) -> torch.Tensor:
        """The current flat parameters ``theta_base + Pi z``."""
        return self.theta_base + self.subspace.project(self.stepper.center.to(self.theta_base.dtype))

    def _write(self, theta: torch.Tensor) -> None:
        with torch.no_grad():
            for layer in self.subspace.layers:
                p = self.evaluator.params[layer.name]
                p.copy_(theta[layer.param_start:layer.param_start + layer.numel].reshape(p.shape))

    def absorb(self) -> None:
        """``theta_base <- theta_base + Pi z``, ``z <- 0`` (the model is unchanged)."""
        self.theta_base = self.theta()
        self.stepper.X = torch.zeros_like(self.stepper.X)
        self.stepper.reset_dynamics()

    # -- the step --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, batch, loss_fn) -> float:
        """One PolyStep step on ``batch = (x, y)``; returns the center's loss on it before the move."""
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError("batch must be a pair (x, y)")
        x, y = batch
        theta = self.theta()
        self._write(theta)
        if self.stepper.is_coast():
            loss = float(loss_fn(self.model(x), y))
            self.stepper.coast()
            self.last_stats = {"step": self.stepper.step, "coast": True}
        else:
            proposal = self.stepper.propose()
            costs = self.evaluator.losses(x, y, loss_fn, proposal.offsets, theta)
            loss = float(loss_fn(self.model(x), y))
            self.last_stats = self.stepper.update(proposal, costs)
            self.evaluations += costs.numel()
        if self.absorb_interval and self.stepper.step % self.absorb_interval == 0:
            self.absorb()
        self._write(self.theta())
        return loss

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything the next step depends on (the subspace map is rebuilt from its seed)."""
        return {"name": "polystep", "stepper": self.stepper.state_dict(), "theta_base": self.theta_base.clone(),
                "evaluations": self.evaluations, "subspace_dim": self.subspace.dim}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != "polystep" or state.get("subspace_dim") != self.subspace.dim:
            raise ValueError("state_dict is not from a PolyStep optimizer with this model and subspace")
        self.stepper.load_state_dict(state["stepper"])
        self.theta_base = state["theta_base"].clone()
        self.evaluations = int(state["evaluations"])
        self._write(self.theta())


__all__ = ["PolyStep"]
