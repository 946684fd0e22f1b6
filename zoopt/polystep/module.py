"""``zoopt.PolyStep``: train a torch module with PolyStep, one minibatch per ``step``.

A facade over the engine's roles: the trainable parameters are
``theta = theta_base + Pi z`` (hybrid random subspace,
:mod:`zoopt.polystep.subspace`; ``rank=None`` is full space), the coordinates
``z`` are searched by :class:`~zoopt.polystep.strategy.PolyStepES` (one tell),
its block specs are scored by a :class:`~zoopt.problems.module.ModuleProblem`
whose ``"block"`` evaluation is the staged evaluator
(:mod:`zoopt.polystep.problem`), and an Evaluator (in process, or Ray actors)
splits the members. ``step(batch, loss_fn)`` returns the center's loss on the
batch before the move; coast steps (``amortize > 1``) evaluate only the center.

Batches: ``(x, y)`` tensors travel by value; ``(epoch, k, batch_size)`` names
rows of ``data=(x_train, y_train)`` as :func:`~zoopt.problems.module.epoch_order`
orders them, so with Ray the model and the training split reach each actor
once and a generation ships only keys, scalars and ``z``.

Learning rate: ``opt.optimizer`` is a torch optimizer holding one number, the
multiplier of the step radius alpha (1.0 by default), so a torch LR scheduler
drives it: ``StepLR(opt.optimizer, 10, gamma=0.5)`` halves every move
after ten steps; ``opt.param_groups`` is its ``param_groups``.
"""
from __future__ import annotations

import copy
import numbers
from dataclasses import replace
from typing import Optional

import torch
from torch import nn

from zoopt.problems.module import BATCH_KEY, ModuleProblem, batch_entry, same_loss
from zoopt.workers import make_evaluator

from .defaults import FULL_SPACE, spread_scaled, subspace_defaults
from .problem import BlockSetup, helpers
from .schedules import Schedule, resolve_radius
from .strategy import PolyStepES
from .subspace import SPARSE_THRESHOLD_BYTES


def _no_data(generation):
    raise ValueError("this PolyStep has no data=(x_train, y_train): pass each batch as (x, y) tensors")


class StepRadiusScale(torch.optim.Optimizer):
    """The PolyStep facade's learning rate as a torch optimizer, so torch's LR schedulers (which
    accept only ``torch.optim.Optimizer`` instances) can drive it: ``param_groups[0]["lr"]``
    multiplies the step radius alpha of every evaluated step. It moves no tensor: its one
    parameter is an empty placeholder (torch refuses an empty list), and :meth:`step`, called
    once per PolyStep step, only marks the step for the schedulers."""

    def __init__(self, lr: float = 1.0):
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
            raise TypeError(f"lr must be a number (the step radius multiplier), got {type(lr).__name__}")
        super().__init__([torch.zeros(0)], {"lr": float(lr)})
        _ = self.lr  # reading it checks the value

    @property
    def lr(self) -> float:
        lr = float(self.param_groups[0]["lr"])
        if not (lr >= 0 and lr < float("inf")):
            raise ValueError(f"PolyStep lr (the step radius multiplier) must be finite and >= 0, got {lr!r}")
        return lr

    def step(self, closure=None):
        return None


class _ScaledRadius(Schedule):
    """The stepper's step radius (a number times epsilon, or a schedule) times the live lr."""

    def __init__(self, radius, epsilon: Schedule, scale: StepRadiusScale):
        self.radius, self.epsilon, self.scale = radius, epsilon, scale

    def at(self, t: int) -> float:
        return resolve_radius(self.radius, self.epsilon.at(t), t) * self.scale.lr


class PolyStep:
    """PolyStep optimizer for ``model`` (updates it in place).

    Subspace: ``rank`` (None = full parameter space), ``max_subspace_dim``,
    ``subspace_seed`` (fixed map, 0 by default as in the paper runs, not the
    run seed), ``absorb_interval`` (0 = never; fold ``Pi z`` into
    ``theta_base`` and reset ``z``, the velocity and the bias direction every
    that many steps). Particles: ``particle_dim`` (8 in a subspace, 2 in full
    space by default), ``polytope``, ``solver`` (default softmax in a
    subspace, sinkhorn in full space), ``epsilon``, ``step_radius``,
    ``probe_radius`` (None: chosen from the model's weights in a subspace,
    :mod:`zoopt.polystep.defaults`; the reference's 0.1 / 1.0 / 2.0 in full
    space; plain numbers are multiplied by epsilon), ``cost_spread`` (divide
    each evaluated step's costs by the median over particles of their
    max - min before the softmax, so epsilon is in units of the typical
    cost spread; None: on with the subspace defaults, i.e. when ``epsilon``
    is not given, off otherwise; the divisor is ``last_stats["cost_spread"]``), ``num_probes``,
    ``probe_jitter``, ``scale_cost``, ``momentum``, ``momentum_warmup``,
    ``biased_rotation``, ``amortize``.
    ``structured=False`` forces the generic vmap evaluation; ``compile``
    (True, False or "auto": only for large candidate stacks) lets
    ``torch.compile`` fuse the stages after a perturbed affine stage.
    Engine: ``evaluator`` (None or "local": in process; "ray": Ray actors,
    configured by ``evaluator_options``; or an evaluator object), ``data``
    ``(x_train, y_train)`` held by the problem so batches can be named by
    ``(epoch, k, batch_size)``, ``data_seed`` the seed of their epoch order.
    ``lr`` multiplies the step radius alpha (1.0: the radius as given); it is
    ``param_groups[0]["lr"]`` of :attr:`optimizer`, which torch LR schedulers
    accept (coast steps replay the last evaluated move, already scaled).
    """

    def __init__(self, model: nn.Module, *, rank: Optional[int] = 4, max_subspace_dim: Optional[int] = None,
                 subspace_seed: int = 0, particle_dim: Optional[int] = None, solver: Optional[str] = None,
                 epsilon=None, step_radius=None, probe_radius=None, absorb_interval: int = 0, seed: int = 0,
                 structured: bool = True, activation_bytes: Optional[int] = None,
                 sparse_threshold_bytes: int = SPARSE_THRESHOLD_BYTES, compile="auto", evaluator=None,
                 evaluator_options: Optional[dict] = None, data=None, data_seed: int = 0, lr: float = 1.0,
                 cost_spread: Optional[bool] = None, **options):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(absorb_interval, bool) or not isinstance(absorb_interval, int) or absorb_interval < 0:
            raise ValueError(f"absorb_interval must be an int >= 0, got {absorb_interval!r}")
        if rank is None and max_subspace_dim is not None:
            raise ValueError("max_subspace_dim needs a subspace (rank is None means full space)")
        if data is not None and (not isinstance(data, (tuple, list)) or len(data) != 2):
            raise TypeError("data must be None or a pair (x_train, y_train)")
        self.model = model
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model has no trainable parameters")
        dtype = params[0].dtype
        if particle_dim is None:
            particle_dim = 8 if rank is not None else 2
        if solver is None:
            solver = "softmax" if rank is not None else "sinkhorn"
        theta_base = torch.cat([p.detach().reshape(-1) for p in params]).clone()
        setup = BlockSetup(base=theta_base, rank=rank, subspace_seed=subspace_seed, max_subspace_dim=max_subspace_dim,
                           sparse_threshold_bytes=sparse_threshold_bytes, structured=structured,
                           activation_bytes=activation_bytes, compile=compile)
        self.problem = ModuleProblem(model, None, tuple(data) if data is not None else _no_data, seed=data_seed)
        self.problem.block_setup = setup
        self._helpers = helpers(self.problem, particle_dim)
        auto = subspace_defaults(self.subspace, theta_base) if rank is not None else FULL_SPACE
        hyper = {name: auto[name] if value is None else value for name, value in
                 (("epsilon", epsilon), ("step_radius", step_radius), ("probe_radius", probe_radius))}
        if cost_spread is None:  # the default temperature is in spread units; a given epsilon is in loss units
            cost_spread = auto["cost_spread"] if epsilon is None else False
        self.cost_spread = bool(cost_spread)
        self.strategy = PolyStepES(torch.zeros(self.subspace.dim), particle_dim=particle_dim, solver=solver,
                                   seed=seed, dtype=dtype, auto_coast=False, **hyper, **options)
        self.optimizer = StepRadiusScale(lr)
        self.stepper.step_radius = _ScaledRadius(self.stepper.step_radius, self.stepper.epsilon, self.optimizer)
        # ranges of whole particles when an evaluator splits the members
        per = self.strategy.stepper.num_vertices * self.strategy.stepper.num_probes
        self.problem.chunk = per * max(1, self.problem.chunk // per)
        self.absorb_interval = absorb_interval
        self.evaluations = 0  # candidate forward passes (the one center forward per step is not counted)
        self.last_stats: dict = {}
        self.evaluator = make_evaluator(evaluator, **(evaluator_options or {}))  # last: may start Ray actors

    # -- parameters ------------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        return self.stepper.seed

    @property
    def param_groups(self) -> list:
        """The learning rate's groups (:class:`StepRadiusScale`): one, whose ``"lr"`` scales alpha."""
        return self.optimizer.param_groups

    @property
    def stepper(self):
        """The particle state (:class:`~zoopt.polystep.particles.ParticleStepper`)."""
        return self.strategy.stepper

    @property
    def subspace(self):
        return self._helpers.subspace

    @property
    def block_evaluator(self):
        """The staged candidate evaluator of this process (:class:`~zoopt.polystep.evaluate.BlockEvaluator`)."""
        return self._helpers.evaluator

    @property
    def theta_base(self) -> torch.Tensor:
        return self.problem.block_setup.base

    @property
    def evaluations_per_step(self) -> int:
        """Candidates per evaluated step, ``P V K``."""
        return self.stepper.popsize

    def theta(self) -> torch.Tensor:
        """The current flat parameters ``theta_base + Pi z``."""
        return self._helpers.theta_of(self.theta_base, self.stepper.center)

    def _write(self) -> torch.Tensor:
        self._helpers.z = None  # the model may have been changed by the caller: write theta again
        return self._helpers.at_center(self.theta_base, self.stepper.center)

    def _new_problem(self, **setup_changes) -> None:
        """A changed problem object, so an evaluator that shipped the old one ships this one."""
        problem = copy.copy(self.problem)
        problem.cache = self.problem.cache  # same model, map and evaluator in this process
        problem.block_setup = replace(self.problem.block_setup, **setup_changes)
        self.problem = problem

    def absorb(self) -> None:
        """``theta_base <- theta_base + Pi z``, ``z <- 0`` (the model is unchanged)."""
        self._new_problem(base=self.theta())
        self.stepper.X = torch.zeros_like(self.stepper.X)
        self.stepper.reset_dynamics()

    def _use_loss(self, loss_fn) -> None:
        shipped = self.problem.loss_fn
        if shipped is not None and getattr(self.evaluator, "name", None) != "local" and \
                not same_loss(loss_fn, shipped):
            self._new_problem()  # a new problem object: evaluators ship it (and the loss) once
        self.problem.loss_fn = loss_fn

    def _batch(self, batch):
        """``spec.extras`` entry naming the batch: ``(x, y)`` by value or ``(epoch, k, batch_size)``."""
        return batch_entry(batch, self.problem.batches is not _no_data, "this PolyStep")

    # -- the step --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, batch, loss_fn) -> float:
        """One PolyStep step on ``batch``; returns the center's loss on it before the move."""
        named = self._batch(batch)
        self._use_loss(loss_fn)
        self._write()
        if self.stepper.is_coast():
            x, y = self.problem.batch_for(_Named(named))
            loss = float(loss_fn(self.model(x), y))
            self.stepper.coast()
            self.optimizer.step()
            self.last_stats = {"step": self.stepper.step, "coast": True}
        else:
            spec = self.strategy.ask()
            spec.extras[BATCH_KEY] = named
            fitness = self.evaluator(self.problem, spec)
            x, y = self.problem.batch_for(spec)  # the model still holds theta(z): nothing moved yet
            loss = float(loss_fn(self.model(x), y))
            spread = None
            if self.cost_spread:
                fitness, spread = spread_scaled(fitness, self.stepper.num_particles)
            self.strategy.tell(fitness)
            self.optimizer.step()
            self.last_stats = self.strategy.last_stats
            if spread is not None:
                self.last_stats = {**self.last_stats, "cost_spread": spread}
            self.evaluations += spec.popsize
        if self.absorb_interval and self.stepper.step % self.absorb_interval == 0:
            self.absorb()
        self._helpers.at_center(self.theta_base, self.stepper.center)
        return loss

    def close(self) -> None:
        """Release the evaluator's workers (Ray actors)."""
        self.evaluator.close()

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything the next step depends on (the subspace map is rebuilt from its seed)."""
        return {"name": "polystep", "strategy": self.strategy.state_dict(), "theta_base": self.theta_base.clone(),
                "evaluations": self.evaluations, "subspace_dim": self.subspace.dim,
                "lr": copy.deepcopy(self.optimizer.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != "polystep" or state.get("subspace_dim") != self.subspace.dim or \
                "strategy" not in state:
            raise ValueError("state_dict is not from a PolyStep optimizer with this model and subspace")
        self.strategy.load_state_dict(state["strategy"])
        self._new_problem(base=state["theta_base"].clone())
        self.evaluations = int(state["evaluations"])
        if state.get("lr") is not None:  # states saved before the lr existed resume at lr 1
            self.optimizer.load_state_dict(state["lr"])
        self._write()


class _Named:
    """A stand-in spec naming a batch, for the center's loss on coast steps."""

    def __init__(self, named):
        self.extras = {BATCH_KEY: named}
        self.generation = 0


__all__ = ["PolyStep", "StepRadiusScale"]
