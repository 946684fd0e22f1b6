"""Rank-agnostic HDET bookkeeping shared by the distributed scheduler and the simulation.

Holds the step counter, the base LR per param group, the multipliers ρ and their current
permutation per group, the auto-LR controller and the explored scalars. It knows every
replica's LR, so the distributed scheduler reads its own row and the simulation reads all rows.
"""
from __future__ import annotations

import math

import torch

from zoopt.hdet.controller import ZeroOrderController, decay_from_floor
from zoopt.hdet.permutation import PermutationStream, spread_multipliers
from zoopt.hdet.schedule import OneCycleCurve

SCHEDULES_AFTER_START = ("controller", "onecycle")
# Default end value of the 'controller' schedule, as a fraction of the base LR when the controller
# starts (the peak, with the default start at the end of OneCycle's rise). See HDETOneCycleLR.
DEFAULT_FLOOR_RATIO = 0.22


class EnsembleSchedule:
    """Which LR (and scalar value) each of ``n_replicas`` replicas uses at every step.

    See :class:`zoopt.HDETOneCycleLR` for the arguments. ``t`` counts completed steps.
    """

    def __init__(self, n_replicas: int, curve: OneCycleCurve, spread=0.1, sync_every=1000, auto_lr=True,
                 auto_lr_start=None, average=True, temperature=0.1, meta_lr=0.5, momentum=0.9,
                 lr_floor=None, perm_seed=1024, hyperparams=(), spread_before_auto_lr=True,
                 schedule_after_start="controller"):
        if not isinstance(sync_every, int) or isinstance(sync_every, bool) or sync_every < 1:
            raise ValueError(f"sync_every must be a positive integer, got {sync_every!r}")
        if schedule_after_start not in SCHEDULES_AFTER_START:
            raise ValueError(f"schedule_after_start must be one of {SCHEDULES_AFTER_START}, got {schedule_after_start!r}")
        total = curve.total_steps
        if auto_lr_start is None:
            auto_lr_start = int(math.ceil(float(curve.phases[0].end_step) + 1))
        if not isinstance(auto_lr_start, int) or not 0 <= auto_lr_start:
            raise ValueError(f"auto_lr_start must be an integer step >= 0, got {auto_lr_start!r}")
        self.n = n_replicas
        self.curve = curve
        self.n_groups = len(curve.max_lr)
        self.spread = float(spread)
        self.rho = spread_multipliers(n_replicas, spread)
        self._rho_list = self.rho.tolist()
        self.sync_every = sync_every
        self.auto_lr = bool(auto_lr)
        self.auto_lr_start = min(auto_lr_start, total)
        self.average = bool(average)
        self.spread_before_auto_lr = bool(spread_before_auto_lr)
        self.schedule_after_start = schedule_after_start
        self.perm_seed = perm_seed
        self.stream = PermutationStream(n_replicas, perm_seed)
        self.perms = torch.arange(n_replicas).repeat(self.n_groups, 1)       # [G, N]
        self.spread_on = self.spread_before_auto_lr
        self.hyperparams = list(hyperparams)
        # The controller has a signal only where replicas differ: one replica, or no spread on
        # the LR, leaves the LR to the OneCycle curve (exactly OneCycleLR, the drop-in promise).
        self.lr_explored = self.auto_lr and n_replicas > 1 and self.spread > 0
        self.controlled = self.auto_lr and n_replicas > 1 and (self.spread > 0 or bool(self.hyperparams))

        # γ takes the base from the value the first controller sync sees (the held OneCycle value
        # at auto_lr_start, or the curve at the last step before it when that step ends a window)
        # to the floor over the K controller syncs whose new LR some step uses (t < total_steps).
        first = max(-(-self.auto_lr_start // sync_every) * sync_every, sync_every)
        self.num_controller_syncs = max(0, (total - 1 - first) // sync_every + 1) if first <= total - 1 else 0
        self.start_lr = curve.lr(self.auto_lr_start if self.auto_lr_start < first else first - 1)
        self.lr_floor = None
        decay = [0.0] * self.n_groups
        if schedule_after_start == "controller":
            floor = [DEFAULT_FLOOR_RATIO * s for s in self.start_lr] if lr_floor is None else (
                list(lr_floor) if isinstance(lr_floor, (list, tuple)) else [float(lr_floor)] * self.n_groups)
            self.lr_floor = floor
            if self.auto_lr:
                decay = decay_from_floor(self.start_lr, floor, self.num_controller_syncs)
        elif lr_floor is not None:
            raise ValueError("lr_floor applies only with schedule_after_start='controller' "
                             "(with 'onecycle' the curve itself decays)")
        # The floor also bounds the base from below: momentum remembers Δ from when the base was
        # larger, and (1−γ)η̄ + λv could otherwise cross zero.
        lower = torch.tensor(self.lr_floor, dtype=torch.float64) if self.lr_floor is not None else 1e-3  # κ ≥ 1e-3
        self.controller = ZeroOrderController(self.n_groups, temperature, meta_lr, momentum, decay, lower=lower)
        self.held = None            # controller-owned base LR [G] (float64), once active
        self.scale = torch.ones(self.n_groups, dtype=torch.float64)        # 'onecycle' mode correction
        for i, h in enumerate(self.hyperparams):
            h.bind(n_replicas, perm_seed + 1 + i)
        self.t = 0

    # ------------------------------------------------------------------ values
    def controller_active(self, t=None) -> bool:
        """Whether a sync at step ``t`` (default: now) runs the controller (gathers losses)."""
        return self.controlled and (self.t if t is None else t) >= self.auto_lr_start

    def _lr_held(self) -> bool:
        """The controller, not the OneCycle curve, owns the base LR now ('controller' schedule)."""
        return self.lr_explored and self.t >= self.auto_lr_start and self.schedule_after_start == "controller"

    def base_lr(self) -> torch.Tensor:
        """Unscaled base LR η̄ per group at the current step, ``[G]`` float64."""
        if self._lr_held():
            if self.held is None:
                self.held = torch.tensor(self.start_lr, dtype=torch.float64)
            return self.held
        return self.scale * torch.tensor(self.curve.lr(self.t), dtype=torch.float64)

    def multipliers(self) -> torch.Tensor:
        """``[N, G]``: ρ[π_g(r)] (all ones while the spread is inert)."""
        if not self.spread_on:
            return torch.ones(self.n, self.n_groups, dtype=torch.float64)
        return self.rho[self.perms].T.contiguous()

    def lrs_for(self, replica: int) -> list[float]:
        """LR per group of one replica at the current step (the per-step fast path)."""
        if self._lr_held():
            base = self.base_lr().tolist()
        else:
            scale = self.scale.tolist()
            base = [k * v for k, v in zip(scale, self.curve.lr(self.t))]
        if not self.spread_on:
            return base
        rho = self._rho_list
        return [b * rho[p] for b, p in zip(base, self.perms[:, replica].tolist())]

    def lrs(self) -> torch.Tensor:
        """``[N, G]`` LR of every replica and group at the current step (float64)."""
        return self.base_lr().unsqueeze(0) * self.multipliers()

    def momentum(self) -> list[float]:
        return self.curve.momentum(min(self.t, self.curve.total_steps))

    def apply_hyperparams(self, replica: int) -> None:
        for h in self.hyperparams:
            h.apply(h.value_for(replica))

    # ------------------------------------------------------------------ steps
    def advance(self) -> bool:
        """t ← t + 1; True when this step ends a window (a converge / controller sync)."""
        self.t += 1
        if self.t > self.curve.total_steps:
            raise ValueError(f"tried to step {self.t} times; the cycle has total_steps={self.curve.total_steps}")
        return self.t % self.sync_every == 0

    def controller_sync(self, lrs_used: torch.Tensor, train_losses: torch.Tensor,
                        heldout_losses: torch.Tensor | None = None) -> dict:
        """Auto-LR step at a sync (call only when :meth:`controller_active`), then redraw π."""
        if not self.lr_explored:          # only scalars explored: the LR stays on the curve
            new_base = self.base_lr()
            self.controller.last = {"weights": self.controller.weights(train_losses),
                                    "delta": torch.zeros(self.n_groups, dtype=torch.float64)}
        elif self.schedule_after_start == "controller":
            new_base = self.controller.update(train_losses, lrs_used)
            self.held = new_base
        else:
            # The curve keeps running, so the controller works on the dimensionless scale κ
            # (values κ·ρ): its momentum then stays meaningful while the curve moves.
            curve = torch.tensor(self.curve.lr(self.t - 1), dtype=torch.float64)
            self.scale = self.controller.update(train_losses, lrs_used.to(torch.float64) / curve)
            new_base = self.scale * torch.tensor(self.curve.lr(self.t), dtype=torch.float64)
        self.perms = self.stream.draw(self.n_groups)
        self.spread_on = True
        for h in self.hyperparams:
            if h.signal == "heldout":
                if heldout_losses is None:
                    raise ValueError(f"hyperparameter {h.name!r} is driven by the held-out loss: "
                                     "pass heldout_loss to step() at least once per window")
                h.update(heldout_losses)
            else:
                h.update(train_losses)
        return {"weights": self.controller.last["weights"], "delta": self.controller.last["delta"],
                "base": new_base.clone()}

    def all_perms(self) -> torch.Tensor:
        """Every permutation currently in force (LR groups, then each scalar): for agreement checks."""
        return torch.cat([self.perms] + [h.perm.unsqueeze(0) for h in self.hyperparams])

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"t": self.t, "perms": self.perms.clone(), "stream": self.stream.state_dict(),
                "spread_on": self.spread_on, "held": None if self.held is None else self.held.clone(),
                "scale": self.scale.clone(), "controller": self.controller.state_dict(),
                "hyperparams": [h.state_dict() for h in self.hyperparams], "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise ValueError(f"state is for {state['n']} replicas, this run has {self.n}")
        if len(state["hyperparams"]) != len(self.hyperparams):
            raise ValueError("state has a different number of explored hyperparameters")
        self.t = state["t"]
        self.perms = state["perms"].clone()
        self.stream.load_state_dict(state["stream"])
        self.spread_on = state["spread_on"]
        self.held = None if state["held"] is None else state["held"].clone()
        self.scale = state["scale"].clone()
        self.controller.load_state_dict(state["controller"])
        for h, s in zip(self.hyperparams, state["hyperparams"]):
            h.load_state_dict(s)
