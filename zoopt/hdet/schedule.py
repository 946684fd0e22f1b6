"""The OneCycle base curve, argument for argument as ``torch.optim.lr_scheduler.OneCycleLR``.

HDET scales every rank's curve by its multiplier ρ; this module computes the *unscaled* curve
(the base LR η̄(t) and the cycled momentum) for each parameter group as a pure function of the
step, so the distributed scheduler and the single-process simulation share one definition.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


def _per_group(name, value, n_groups):
    if isinstance(value, (list, tuple)):
        if len(value) != n_groups:
            raise ValueError(f"{name}: expected {n_groups} values (one per param group), got {len(value)}")
        return [float(v) for v in value]
    return [float(value)] * n_groups


def resolve_total_steps(total_steps=None, epochs=None, steps_per_epoch=None) -> int:
    """``total_steps`` if given, else ``epochs * steps_per_epoch`` (OneCycleLR's precedence)."""
    if total_steps is not None:
        if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps <= 0:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
        return total_steps
    if epochs is not None and steps_per_epoch is not None:
        if not isinstance(epochs, int) or epochs <= 0:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
        return epochs * steps_per_epoch
    raise ValueError("define either total_steps or both epochs and steps_per_epoch")


@dataclass
class _Phase:
    end_step: float
    start_lr: str
    end_lr: str
    start_momentum: str
    end_momentum: str


class OneCycleCurve:
    """Unscaled OneCycle learning rate and momentum per parameter group.

    Arguments have OneCycleLR's meaning: ``max_lr`` (float or one per group) is the peak;
    the cycle starts at ``max_lr / div_factor`` and ends at ``max_lr / div_factor /
    final_div_factor``; ``pct_start`` of ``total_steps`` is spent rising; ``anneal_strategy``
    is ``"cos"`` or ``"linear"``; ``three_phase`` adds a symmetric descent back to the start
    value before annealing to the minimum; with ``cycle_momentum`` the momentum (or Adam's
    beta1) moves inversely between ``max_momentum`` and ``base_momentum``.
    """

    def __init__(self, n_groups, max_lr, total_steps=None, epochs=None, steps_per_epoch=None,
                 pct_start=0.3, anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85,
                 max_momentum=0.95, div_factor=25.0, final_div_factor=1e4, three_phase=False):
        self.total_steps = resolve_total_steps(total_steps, epochs, steps_per_epoch)
        if not isinstance(pct_start, float) or not 0.0 <= pct_start <= 1.0:
            raise ValueError(f"pct_start must be a float in [0, 1], got {pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        if not div_factor > 0 or not final_div_factor > 0:
            raise ValueError(f"div_factor and final_div_factor must be > 0, got {div_factor}, {final_div_factor}")
        self.anneal_strategy = anneal_strategy
        self.cycle_momentum = bool(cycle_momentum)
        self.max_lr = _per_group("max_lr", max_lr, n_groups)
        if any(not v > 0 for v in self.max_lr):
            raise ValueError(f"max_lr must be > 0, got {self.max_lr}")
        self.initial_lr = [m / div_factor for m in self.max_lr]
        self.min_lr = [i / final_div_factor for i in self.initial_lr]
        self.max_momentum = _per_group("max_momentum", max_momentum, n_groups)
        self.base_momentum = _per_group("base_momentum", base_momentum, n_groups)
        s = self.total_steps
        if three_phase:
            self.phases = [
                _Phase(float(pct_start * s) - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                _Phase(float(2 * pct_start * s) - 2, "max_lr", "initial_lr", "base_momentum", "max_momentum"),
                _Phase(s - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum"),
            ]
        else:
            self.phases = [
                _Phase(float(pct_start * s) - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                _Phase(s - 1, "max_lr", "min_lr", "base_momentum", "max_momentum"),
            ]

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _at(self, step, group, lr_or_momentum):
        if step > self.total_steps:
            raise ValueError(f"tried to step {step} times; the cycle has total_steps={self.total_steps}")
        start_step = 0.0
        for i, phase in enumerate(self.phases):
            if step <= phase.end_step or i == len(self.phases) - 1:
                pct = (step - start_step) / (phase.end_step - start_step)
                a, b = ((phase.start_lr, phase.end_lr) if lr_or_momentum == "lr"
                        else (phase.start_momentum, phase.end_momentum))
                return self._anneal(getattr(self, a)[group], getattr(self, b)[group], pct)
            start_step = phase.end_step
        raise AssertionError("unreachable")

    def lr(self, step: int) -> list[float]:
        """Unscaled base learning rate of every group after ``step`` scheduler steps."""
        return [self._at(step, g, "lr") for g in range(len(self.max_lr))]

    def momentum(self, step: int) -> list[float]:
        """Cycled momentum / beta1 of every group after ``step`` scheduler steps."""
        return [self._at(step, g, "momentum") for g in range(len(self.max_lr))]
