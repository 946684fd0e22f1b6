"""PolyStep in full-space mode on MAX-SAT (polystep.md §2.3 and §4.2).

The solver is PolyStep's own particle stepper
(:class:`~zoopt.polystep.particles.ParticleStepper`: rotations, softmax plan,
barycentric move, momentum, amortized coast steps, the non-finite guard)
driven through :meth:`MaxSATProblem.block_costs
<zoopt.problems.maxsat.MaxSATProblem.block_costs>`, the delta evaluation of a
block spec. Encoding: one real value ``x_u`` per variable, the hard
assignment ``x_u > 0`` (or ``round(sigmoid(x_u))``); consecutive variable
pairs are the particles (``d = 2``), each probed at the 4 vertices of its own
rotated orthoplex, and the cost of a candidate is the cost of the current
assignment plus the change from rewriting its pair.

Constants live in one place, :func:`zoopt.zoo_configs.maxsat_config` (beside the
paper's per-model configs), as two presets:

* ``"reference"``: the constants the reference runs *effectively* used
  (polystep.md §6 item 4: their cosine schedules were built with swapped
  arguments, so every step after the first used the nominal initial values).
  Below 1M variables: unsatisfied *fraction* as cost, eps 5, step radius
  ``3000 sqrt(n / 1e5)``, probe radius ``100 sqrt(n / 1e5)``; from 1M: the
  unsatisfied *count*, eps 5, step radius 5000, probe radius 500.
* ``"default"``: the same at every size: the unsatisfied count, eps 5, step
  radius 5000 and a probe radius (1e12) that stays far above every ``|x|`` a
  run reaches.

Why the reference constants stop paying (issue 17): a variable can only be
changed by a probe when ``|x_u| < rho / 2``. With count costs at eps 5 the
softmax is sharp, so each step moves a pair by nearly the full step radius
(5000, amplified up to 20x by momentum 0.95), and within ~40 steps almost
every ``|x_u|`` is far beyond ``rho / 2 = 250``: no probe flips any variable,
every candidate costs the same, the plan is uniform, the move is zero and
the assignment is frozen (93.35% at 1M after 500 steps and after 3000; the
same constants freeze a 100,000-variable run at 93.41%). Below 1M the
fraction cost keeps the softmax almost uniform, the moves small and ``|x|``
below ``rho / 2`` for the run's length (it grows by ~0.004 per step at
100,000 variables), so steps keep paying there. With a probe radius far above
every ``|x|``, all four sign patterns of each pair are probed at every step
whatever the cost scale, and the run keeps improving.

Measured (random 3-SAT, seed 0, one thread; CPU seconds, as the shared
2-core machine ran at load 10-20): 100,000 variables, 3000 steps: default
98.706% (59 s), reference 98.046% (71 s; the former solver 98.030%).
1,000,000 variables: reference constants frozen at 93.35%; default, 3000
steps: 98.555% at step 300, 98.609% at 600, 98.646% at 1200, 98.682% at 3000
(928 CPU s: 701 user + 227 system; peak 912 MiB). At 10,000 / 1,000 / 100
variables (3000 steps) default 98.61 / 98.36 / 99.06% vs reference 98.07 /
97.85 / 98.83%. The compiled probSAT peer (scripts/bench_maxsat.py) is far
ahead: 99.52% at 100,000 variables in 11 s, 99.35% at 1,000,000 in 60 s.

Both presets: amortize 3 (EMA 0.7), momentum 0.5 -> 0.95 over the first 50
steps, init ``randn * 0.1``, one probe per vertex at half the probe radius,
radii used as they are (not multiplied by eps). ``final={"epsilon": ...}``
anneals any of eps / step radius / probe radius by a cosine over the run.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from zoopt.polystep.particles import ParticleStepper
from zoopt.polystep.schedules import Constant, Cosine
from zoopt.problems.maxsat import (COST_SCALES, ENCODINGS, MaxSATInstance, MaxSATProblem,
                                   hard_assignment)
from zoopt.training.interrupt import StopRequest, TrainingInterrupted, stop_on_interrupt
from zoopt.zoo_configs import MAXSAT_COMMON, maxsat_config

PRESETS = ("default", "reference")
CHECKPOINT_FORMAT = "zoopt-maxsat-1"
# solver memory per variable, literal and clause (bytes; a rough bound from the measured peaks)
BYTES_PER_VAR, BYTES_PER_LIT, BYTES_PER_CLAUSE = 400, 40, 40


def maxsat_constants(n_vars: int, preset: str = "default") -> dict:
    """``cost_scale``, ``epsilon``, ``step_radius``, ``probe_radius`` and ``steps`` of a preset
    (:func:`zoopt.zoo_configs.maxsat_config`, next to the paper's per-model configs)."""
    return maxsat_config(int(n_vars), preset)


def reference_constants(n_vars: int) -> dict:
    """The effective constants of the reference MAX-SAT runs for ``n_vars`` variables (see module doc)."""
    return maxsat_constants(n_vars, "reference")


def solver_bytes(n_vars: int, n_clauses: int, n_lits: int) -> int:
    """About how much memory the solver needs for an instance of this size."""
    return BYTES_PER_VAR * n_vars + BYTES_PER_LIT * n_lits + BYTES_PER_CLAUSE * n_clauses


def available_bytes() -> Optional[int]:
    """Memory available to this process now (``MemAvailable``; None where unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(n_vars: int, n_clauses: int, n_lits: int, what: str = "instance") -> None:
    """Refuse, before allocating, an instance whose solve would not fit in the available memory."""
    need, have = solver_bytes(n_vars, n_clauses, n_lits), available_bytes()
    if have is not None and need > have:
        raise ValueError(f"{what} ({n_vars:,} variables, {n_clauses:,} clauses) needs about "
                         f"{need / 2 ** 30:,.1f} GiB to solve, but only {have / 2 ** 30:,.1f} GiB is available")


def instance_fingerprint(instance: MaxSATInstance) -> str:
    """A hash of the formula (literals, weights, hard flags): a checkpoint only resumes on its own instance."""
    h = hashlib.sha256(f"{instance.n_vars}/{instance.n_clauses}".encode())
    for t in (instance.clause_ptr, instance.lit_var, instance.lit_neg, instance.weights, instance.hard):
        h.update(b"-" if t is None else t.contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


@dataclass
class MaxSATResult:
    assign: torch.Tensor          # bool [n]: the best hard assignment seen
    cost: float                   # its cost (unsatisfied weight, hard clauses at top)
    report: dict                  # MaxSATInstance.evaluate(assign)
    steps: int
    evaluations: int              # candidate evaluations + full evaluations
    seconds: float
    history: list = field(default_factory=list)

    @property
    def satisfied_fraction(self) -> float:
        return self.report["satisfied_fraction"]


def _positive(name, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _int(name, value, lo):
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return value


class PolyStepMaxSAT:
    """PolyStep full-space solver for (weighted, partial) MAX-SAT.

    ``step()`` runs one step of the stepper (an evaluated step or an amortized
    coast step) and returns its stats; ``run(steps)`` loops (progress bar,
    callback, periodic checkpoints) and returns a :class:`MaxSATResult` with
    the best hard assignment seen. ``None`` arguments take the preset's
    constants for this instance's size (:func:`maxsat_constants`); ``steps`` is the
    run's budget (and the horizon of the ``final`` anneal).
    """

    def __init__(self, instance: MaxSATInstance, *, seed: int = 0, preset: str = "default",
                 epsilon: Optional[float] = None, step_radius: Optional[float] = None,
                 probe_radius: Optional[float] = None, cost_scale=None, steps: Optional[int] = None,
                 particle_dim: int = 2, amortize: int = MAXSAT_COMMON["amortize"], momentum: bool = True,
                 encoding: str = "sign", init_scale: float = MAXSAT_COMMON["init_scale"], x0: Optional[torch.Tensor] = None,
                 final: Optional[dict] = None):
        if not isinstance(instance, MaxSATInstance):
            raise TypeError(f"instance must be a MaxSATInstance, got {type(instance).__name__}")
        if instance.n_vars < 1:
            raise ValueError("instance must have at least one variable")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
            raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
        check_memory(instance.n_vars, instance.n_clauses, instance.n_lits)
        ref = maxsat_constants(instance.n_vars, preset)
        self.instance, self.seed, self.preset = instance, seed, preset
        self.epsilon = _positive("epsilon", ref["epsilon"] if epsilon is None else epsilon)
        self.step_radius = _positive("step_radius", ref["step_radius"] if step_radius is None else step_radius)
        self.probe_radius = _positive("probe_radius", ref["probe_radius"] if probe_radius is None else probe_radius)
        self.steps = _int("steps", ref["steps"] if steps is None else steps, 0)
        self.final = {}
        for key, value in (final or {}).items():
            if key not in ("epsilon", "step_radius", "probe_radius"):
                raise ValueError(f"final keys must be epsilon, step_radius or probe_radius, got {key!r}")
            self.final[key] = _positive(f"final[{key!r}]", value)
        _int("particle_dim", particle_dim, 1)
        if particle_dim > 8:
            raise ValueError(f"particle_dim must be an int in [1, 8], got {particle_dim!r}")
        self.amortize = _int("amortize", amortize, 1)
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        cost_scale = ref["cost_scale"] if cost_scale is None else cost_scale
        self.problem = MaxSATProblem(instance, encoding=encoding, cost_scale=cost_scale)
        self.cost_scale, self.encoding, self.momentum = cost_scale, encoding, bool(momentum)
        n = instance.n_vars
        if x0 is None:
            x = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            x = x * _positive("init_scale", init_scale)
        else:
            x = torch.as_tensor(x0, dtype=torch.float64).reshape(-1)
            if x.numel() != n or not bool(torch.isfinite(x).all()):
                raise ValueError(f"x0 must hold {n} finite values")
        # radii as schedules: used as they are, not multiplied by eps (the radius rule for schedule objects)
        self.stepper = ParticleStepper(
            n, particle_dim=particle_dim, polytope="orthoplex", solver="softmax",
            epsilon=self._schedule("epsilon"), step_radius=self._schedule("step_radius"),
            probe_radius=self._schedule("probe_radius"), num_probes=1,
            momentum=MAXSAT_COMMON["momentum"] if self.momentum else None,
            momentum_warmup=MAXSAT_COMMON["momentum_warmup"],
            amortize=self.amortize, seed=seed, x0=x, dtype=torch.float64)
        self.n_particles = self.stepper.num_particles
        self.evaluations = 0
        self.best_cost = math.inf
        self.best_assign: Optional[torch.Tensor] = None
        self.last_cost = math.inf
        self.seconds = 0.0

    # -- pieces --------------------------------------------------------------------------------
    def _schedule(self, name: str):
        start = getattr(self, name)
        if name in self.final:
            return Cosine(init=start, target=self.final[name], total_steps=max(1, self.steps))
        return Constant(start)

    @property
    def it(self) -> int:
        """The global step counter (coast steps included)."""
        return self.stepper.step

    @property
    def x(self) -> torch.Tensor:
        """The particles ``[P, d]`` (padding included)."""
        return self.stepper.X

    def assignment(self) -> torch.Tensor:
        """The current hard assignment (bool ``[n]``)."""
        return hard_assignment(self.stepper.center, self.encoding)

    def _track(self, assign: torch.Tensor, cost: float) -> None:
        self.last_cost = cost
        self.evaluations += 1
        if cost < self.best_cost:
            self.best_cost = cost
            self.best_assign = assign.clone()

    def step(self) -> dict:
        """One step; returns ``{"step", "cost", "evaluating", "best"}`` (cost of the state it started from)."""
        st = self.stepper
        t = st.step
        if st.is_coast():
            assign = self.assignment()
            self._track(assign, self.instance.cost(assign))
            st.coast()
            return {"step": t, "cost": self.last_cost, "evaluating": False, "best": self.best_cost}
        proposal = st.propose()
        scored = self.problem.block_costs(st.center, proposal.offsets)
        self._track(scored.assign, scored.cost)
        self.evaluations += scored.costs.numel()
        st.update(proposal, scored.costs)
        return {"step": t, "cost": self.last_cost, "evaluating": True, "best": self.best_cost}

    # -- checkpoints -------------------------------------------------------------------------------
    def config(self) -> dict:
        """Everything that fixes the run's trajectory besides the stepper state (checked on resume)."""
        return {"seed": self.seed, "preset": self.preset, "epsilon": self.epsilon, "step_radius": self.step_radius,
                "probe_radius": self.probe_radius, "cost_scale": self.cost_scale,
                "anneal_steps": self.steps if self.final else None,   # the horizon matters only to an anneal
                "particle_dim": self.stepper.particle_dim, "amortize": self.amortize, "momentum": self.momentum,
                "encoding": self.encoding, "final": dict(self.final)}

    def state_dict(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "instance": instance_fingerprint(self.instance), "config": self.config(),
                "stepper": self.stepper.state_dict(), "evaluations": self.evaluations, "best_cost": self.best_cost,
                "best_assign": self.best_assign, "last_cost": self.last_cost, "seconds": self.seconds}

    def load_state_dict(self, state: dict, where: str = "checkpoint") -> None:
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{where}: not a zoopt maxsat checkpoint")
        if state.get("instance") != instance_fingerprint(self.instance):
            raise ValueError(f"{where}: made for another instance")
        saved, mine = state.get("config"), self.config()
        if saved != mine:
            diff = sorted(k for k in set(saved or {}) | set(mine) if (saved or {}).get(k) != mine.get(k))
            raise ValueError(f"{where}: made with other settings ({', '.join(diff)} differ)")
        try:
            self.stepper.load_state_dict(state["stepper"])
            self.evaluations = int(state["evaluations"])
            self.best_cost, self.last_cost = float(state["best_cost"]), float(state["last_cost"])
            self.best_assign = state["best_assign"]
            self.seconds = float(state["seconds"])
        except (KeyError, TypeError, AttributeError, RuntimeError) as exc:
            raise ValueError(f"{where}: damaged ({type(exc).__name__}: {exc})") from None

    def save(self, path: str) -> None:
        """Write a checkpoint atomically and durably (weights-only torch file)."""
        from zoopt.atomic import save_torch

        save_torch(self.state_dict(), path)

    def load(self, path: str) -> None:
        """Resume from a checkpoint written by :meth:`save` (same instance and settings)."""
        from zoopt.atomic import load_torch

        self.load_state_dict(load_torch(path), where=str(path))

    # -- the loop --------------------------------------------------------------------------------
    @staticmethod
    def _stop_on_interrupt(checkpoint):
        """With a checkpoint path, the first Ctrl-C stops the run after the step in flight (a second
        quits at once); without one, Ctrl-C interrupts as usual."""
        if not checkpoint:
            return contextlib.nullcontext(StopRequest())
        return stop_on_interrupt(lambda: print("\nstopping after this step (Ctrl-C again to quit at once)",
                                               file=sys.stderr, flush=True))

    def run(self, steps: Optional[int] = None, progress: bool = False,
            callback: Optional[Callable[[dict], None]] = None, log_every: int = 0,
            checkpoint: Optional[str] = None, checkpoint_every: int = 0) -> MaxSATResult:
        """Run until the global step reaches ``steps`` (default: the budget; a resumed run continues
        to it) and return the best assignment; ``checkpoint_every`` steps (and at the end) the
        state goes to ``checkpoint``, and with a checkpoint a Ctrl-C saves the finished step there and
        raises :class:`~zoopt.training.interrupt.TrainingInterrupted`."""
        target = self.steps if steps is None else _int("steps", steps, 0)
        if checkpoint_every and not checkpoint:
            raise ValueError("checkpoint_every needs a checkpoint path")
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=target, initial=min(self.it, target), desc="polystep maxsat", unit="step")
        history, t0, seconds0 = [], time.perf_counter(), self.seconds
        with self._stop_on_interrupt(checkpoint) as stop:
            while self.it < target:
                stats = self.step()
                self.seconds = seconds0 + time.perf_counter() - t0
                if log_every and stats["step"] % log_every == 0:
                    history.append({"step": stats["step"], "cost": stats["cost"], "best": self.best_cost,
                                    "evaluations": self.evaluations, "seconds": self.seconds})
                if callback is not None:
                    callback(stats)
                if stop.requested:   # Ctrl-C: the step in flight is done, save it and stop
                    if bar is not None:
                        bar.close()
                    self.save(checkpoint)
                    raise TrainingInterrupted(f"stopped at step {self.it}; resume from {checkpoint}")
                if checkpoint_every and self.it % checkpoint_every == 0 and self.it < target:
                    self.save(checkpoint)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(best=f"{self.best_cost:g}", cost=f"{stats['cost']:g}", refresh=False)
        self.seconds = seconds0 + time.perf_counter() - t0
        if checkpoint:  # before the final state is scored, so a resumed run counts exactly like a straight one
            self.save(checkpoint)
        assign = self.assignment()  # the final state
        self._track(assign, self.instance.cost(assign))
        if bar is not None:
            bar.close()
        history.append({"step": self.it, "cost": self.last_cost, "best": self.best_cost,
                        "evaluations": self.evaluations, "seconds": self.seconds})
        return MaxSATResult(assign=self.best_assign, cost=self.best_cost,
                            report=self.instance.evaluate(self.best_assign), steps=self.it,
                            evaluations=self.evaluations, seconds=self.seconds, history=history)


def solve_maxsat(instance: MaxSATInstance, steps: Optional[int] = None, seed: int = 0, progress: bool = False,
                 **options) -> MaxSATResult:
    """Convenience: ``PolyStepMaxSAT(instance, seed=seed, steps=steps, **options).run(progress=progress)``."""
    return PolyStepMaxSAT(instance, seed=seed, steps=steps, **options).run(progress=progress)


__all__ = ["PolyStepMaxSAT", "MaxSATResult", "solve_maxsat", "maxsat_constants", "reference_constants",
           "hard_assignment", "PRESETS", "COST_SCALES", "check_memory", "solver_bytes"]
