"""Temperature and radius schedules, the radius rule and probe-radius jitter.

A schedule maps the global step counter ``t`` (coast steps included) to a
value with ``at(t)``. The radius rule (polystep.md §2.3 step 1): a plain
number radius is multiplied by the step's temperature ``eps_t``; a schedule
object is used as is.

Constructors take keywords only (``init``, ``target``): the reference code's
positional ``CosineEpsilon(target, init, ...)`` is an easy trap (§6 item 4).
"""
from __future__ import annotations

import math
from typing import Optional, Union


def _finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


class Schedule:
    """Base class: ``at(t)`` is the value at global step ``t >= 0``."""

    def at(self, t: int) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Constant(Schedule):
    """``value`` at every step."""

    def __init__(self, value: float):
        self.value = _finite("value", value)

    def at(self, t: int) -> float:
        return self.value


class Linear(Schedule):
    """``max(init - decay * t, target)`` (``min`` when rising); ``decay`` defaults to reach ``target`` at ``total_steps``."""

    def __init__(self, *, init: float, target: float, decay: Optional[float] = None,
                 total_steps: Optional[int] = None):
        self.init, self.target = _finite("init", init), _finite("target", target)
        if decay is None:
            if not total_steps or total_steps < 1:
                raise ValueError("Linear needs decay= or total_steps >= 1")
            decay = abs(self.init - self.target) / total_steps
        self.decay = _finite("decay", decay)
        if self.decay < 0:
            raise ValueError(f"decay must be >= 0, got {decay}")

    def at(self, t: int) -> float:
        if self.init >= self.target:
            return max(self.init - self.decay * t, self.target)
        return min(self.init + self.decay * t, self.target)


class Cosine(Schedule):
    """``target + (init - target) (1 + cos(pi min(t, T) / T)) / 2``.

    ``T = total_steps`` when given, else ``int(|init - target| / decay)`` (at least 1).
    """

    def __init__(self, *, init: float, target: float, total_steps: Optional[int] = None,
                 decay: Optional[float] = None):
        self.init, self.target = _finite("init", init), _finite("target", target)
        if total_steps is None:
            if decay is None or decay <= 0:
                raise ValueError("Cosine needs total_steps >= 1 or decay > 0")
            total_steps = int(abs(self.init - self.target) / decay)
        if isinstance(total_steps, bool) or not isinstance(total_steps, int):
            raise ValueError(f"total_steps must be an int, got {total_steps!r}")
        self.total_steps = max(1, total_steps)

    def at(self, t: int) -> float:
        frac = min(t, self.total_steps) / self.total_steps
        return self.target + 0.5 * (self.init - self.target) * (1.0 + math.cos(math.pi * frac))


ScheduleLike = Union[float, int, Schedule]


def as_schedule(name: str, value: ScheduleLike) -> Schedule:
    """A schedule from a number or a schedule (plain numbers become :class:`Constant`)."""
    if isinstance(value, Schedule):
        return value
    return Constant(_finite(name, value))


def check_radius(name: str, value: ScheduleLike) -> ScheduleLike:
    if isinstance(value, Schedule):
        return value
    v = _finite(name, value)
    if v <= 0:
        raise ValueError(f"{name} must be > 0 or a Schedule, got {value!r}")
    return v


def resolve_radius(radius: ScheduleLike, eps_t: float, t: int, multiplier: float = 1.0) -> float:
    """The radius rule: a plain number is multiplied by ``eps_t``, a schedule is used as is."""
    base = radius.at(t) if isinstance(radius, Schedule) else float(radius) * eps_t
    return base * multiplier


def jitter(radius: float, eta_max: float, u: float) -> float:
    """``radius * (1 + eta)`` with ``eta = eta_max (2 u - 1)`` for a uniform draw ``u`` in [0, 1)."""
    if eta_max == 0:
        return radius
    return radius * (1.0 + eta_max * (2.0 * float(u) - 1.0))


class StepValues:
    """The schedules of one step: temperature, step radius alpha, probe radius rho."""

    __slots__ = ("eps", "alpha", "rho")

    def __init__(self, eps: float, alpha: float, rho: float):
        self.eps, self.alpha, self.rho = eps, alpha, rho


def step_values(t: int, epsilon: Schedule, step_radius: ScheduleLike, probe_radius: ScheduleLike,
                jitter_max: float = 0.0, u: float = 0.5) -> StepValues:
    eps = epsilon.at(t)
    if not eps > 0:
        raise ValueError(f"epsilon schedule gave {eps} at step {t}; it must stay > 0")
    alpha = resolve_radius(step_radius, eps, t)
    rho = jitter(resolve_radius(probe_radius, eps, t), jitter_max, u)
    return StepValues(eps, alpha, rho)


__all__ = ["Schedule", "Constant", "Linear", "Cosine", "as_schedule", "check_radius", "resolve_radius", "jitter",
           "StepValues", "step_values"]
