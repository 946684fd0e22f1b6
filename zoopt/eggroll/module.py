"""``zoopt.EGGROLL``: train a torch module with low-rank evolution strategies.

    opt = zoopt.EGGROLL(model, popsize=256, rank=1, sigma=0.05, lr=0.05, seed=0)
    loss = opt.step((x, y), torch.nn.CrossEntropyLoss())   # the center's loss, before the update

A facade over the engine's roles: the strategy is :class:`.EGGROLLES` on the
model's trainable parameters (one block per parameter, keyed by its name; the
parameters themselves are its center, updated in place one tensor at a time: no
flat copy of the model, no dense gradient of it), the problem is a ``ModuleProblem`` whose evaluation of low-rank specs runs the
population-aware layers (:mod:`.problem`), and an evaluator (in process, or
``evaluator="ray"``) scores the members. The model's supported layers are
swapped for population-aware ones (:mod:`.swap`); its code is unchanged.

Batches: ``step((x, y), loss_fn)`` ships the tensors with the generation;
with ``data=(x_train, y_train)``, ``step((epoch, k, batch_size), loss_fn)``
names rows ``k * batch_size ...`` of epoch ``epoch``'s order
(``zoopt.problems.epoch_order(len(x_train), data_seed, epoch)``), so Ray
actors, which received the model and the data once, get only those ints.

For reinforcement learning and other custom fitness, use
``members()``/``population()``/``tell()``::

    with opt.population():                 # all members, rows member-major
        actions = model(obs)               # obs [N * envs, obs_dim] -> [N * envs, ...]
    opt.tell(returns_as_loss)              # [N], lower is better
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from zoopt.problems.module import BATCH_KEY, ModuleProblem, batch_entry, same_loss
from zoopt.strategy import check_popsize
from zoopt.workers import make_evaluator

from .population import Population, PopulationHolder
from .strategy import EGGROLLES, check_int
from .swap import plan_parameters, swap_layers, unswap
from .update import pair_weights, shape_fitness


def _no_data(generation):
    raise ValueError("this EGGROLL has no data=(x_train, y_train): pass the batch as (x, y) tensors")


def default_chunk(popsize: int) -> int:
    """Members per population forward: ``popsize // 4`` (even), at least 64, at most ``popsize``.
    Fewer, larger forwards are cheaper in one process; four of them feed up to four Ray actors."""
    return min(popsize, max(64, popsize // 4 // 2 * 2))


class EGGROLL:
    """EGGROLL optimizer for a torch module (see module doc).

    Arguments: ``popsize`` (even), ``rank`` r, ``sigma``, ``lr``; ``optimizer``
    "sgd" | "adam" | "adamw" | a torch.optim class; ``fitness_shaping`` "zscore"
    (default) | "centered_rank" | "raw"; ``group_size`` for group-wise z-scores;
    ``noise_reuse`` (1: fresh noise every step, 0: never); ``vectors`` "full" |
    "frozen" for biases, norms and bare parameters; ``embeddings=False`` freezes
    embeddings; ``exclude`` parameter-name patterns to freeze (e.g. the head);
    ``strict`` (default True) raises when a trainable parameter cannot be
    perturbed, False warns and leaves it frozen; ``sigma_decay`` /
    ``sigma_schedule(step)`` and ``lr_schedule(step) -> factor`` (a LambdaLR);
    ``chunk`` members per forward (default ``popsize // 4``, at least 64): evaluators split
    the members at multiples of it, so every member's loss comes from the same forward
    whichever evaluator (or how many Ray actors) ran it: bit-identical runs. Lower it for
    memory, or to give Ray actors more ranges than ``popsize / chunk``.
    ``evaluator``: None / "local" | "ray" | an evaluator object, built with
    ``evaluator_options``; ``data``/``data_seed``: the training split that
    batches named ``(epoch, k, batch_size)`` index. ``keep_best=True`` keeps the best member ever
    scored as ``strategy.best_x`` (a full copy of the parameters, built at every new best);
    by default only its loss ``strategy.best_f`` is kept.
    """

    def __init__(self, model: nn.Module, popsize: int = 256, rank: int = 1, sigma: float = 0.05, lr: float = 0.05,
                 seed: int = 0, *, optimizer="sgd", weight_decay: float = 0.0, fitness_shaping: str = "zscore",
                 group_size: int = 0, noise_reuse: int = 1, vectors: str = "full", embeddings: bool = True,
                 exclude=(), strict: bool = True, sigma_decay: float = 1.0, sigma_schedule=None, lr_schedule=None,
                 chunk: int | None = None, nonfinite: str = "worst", noise_chunk: int = 256,
                 optimizer_kwargs: dict | None = None, evaluator=None, evaluator_options: dict | None = None,
                 data=None, data_seed: int = 0, keep_best: bool = False):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_popsize(popsize, antithetic=True)
        chunk = None if chunk is None else check_int("chunk", chunk, 1)
        if lr_schedule is not None and not callable(lr_schedule):
            raise TypeError("lr_schedule must be a callable step -> value")
        if evaluator_options is not None and not isinstance(evaluator_options, dict):
            raise TypeError(f"evaluator_options must be a dict, got {type(evaluator_options).__name__}")
        if data is not None and not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise TypeError("data must be (x_train, y_train)")
        self.model = model
        self.plan = plan_parameters(model, vectors=vectors, embeddings=embeddings, exclude=exclude)
        if self.plan.unsupported:
            message = (f"EGGROLL cannot perturb {self.plan.unsupported} (supported: Linear, Embedding, Conv1d/2d/3d, "
                       "norms, RNN/GRU/LSTM and their cells, MultiheadAttention, parameters of your own modules); "
                       "freeze them with exclude=[...], or pass strict=False to train without them")
            if strict:
                raise ValueError(message)
            warnings.warn(message, stacklevel=2)
        if not self.plan.perturbed():
            raise ValueError("model has no parameter EGGROLL can perturb")
        self.strategy = EGGROLLES(
            params=[pp.param for pp in self.plan.params], popsize=popsize, sigma=sigma, lr=lr, rank=rank,
            modes=[pp.mode for pp in self.plan.params],
            tensor_ids=[pp.tensor_id for pp in self.plan.params], names=[pp.name for pp in self.plan.params],
            optimizer=optimizer, weight_decay=weight_decay, fitness_shaping=fitness_shaping, group_size=group_size,
            noise_reuse=noise_reuse, sigma_decay=sigma_decay, sigma_schedule=sigma_schedule, seed=seed,
            nonfinite=nonfinite, noise_chunk=noise_chunk, optimizer_kwargs=optimizer_kwargs, keep_best=keep_best)
        self.scheduler = (torch.optim.lr_scheduler.LambdaLR(self.strategy.optimizer, lr_schedule)
                          if lr_schedule is not None else None)

        self.chunk = chunk or default_chunk(popsize)
        self.data = data
        self.problem = ModuleProblem(model, None, data if data is not None else _no_data, chunk=self.chunk,
                                     seed=data_seed)
        self.evaluator = make_evaluator(evaluator, **(evaluator_options or {}))
        self.holder = PopulationHolder()  # arguments checked: now the model's layers change class
        self.swapped = swap_layers(model, self.holder, self.plan)
        self.last_fitness = None

    # -- strategy state -----------------------------------------------------------
    @property
    def popsize(self) -> int:
        return self.strategy.popsize

    @property
    def rank(self) -> int:
        return self.strategy.rank

    @property
    def seed(self) -> int:
        return self.strategy.seed

    @property
    def noise_reuse(self) -> int:
        return self.strategy.noise_reuse

    @property
    def generation(self) -> int:
        return self.strategy.generation

    @generation.setter
    def generation(self, value: int) -> None:
        self.strategy._pending = None
        self.strategy.generation = int(value)

    @property
    def sigma(self) -> float:
        return self.strategy.sigma

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer that moves the weights along the ES gradient estimate; a torch LR
        scheduler drives its lr: ``StepLR(opt.optimizer, ...)``. Its state (lr included) is in
        :meth:`state_dict`."""
        return self.strategy.optimizer

    @property
    def param_groups(self) -> list:
        """``optimizer.param_groups``: ``[0]["lr"]`` is the learning rate of the next update."""
        return self.strategy.optimizer.param_groups

    def spec(self):
        """This generation's ``LowRankSpec`` (the strategy's pending ask)."""
        return self.strategy.ask()

    # -- population ---------------------------------------------------------------
    def members(self) -> torch.Tensor:
        return torch.arange(self.popsize)

    def population(self, members=None, shared=None):
        """Context manager: inside it the model evaluates ``members`` (default: all) at once.
        ``shared``: a tensor every member sees (its rows are not repeated per member)."""
        members = self.members() if members is None else torch.as_tensor(members, dtype=torch.int64)
        if members.numel() and (int(members.min()) < 0 or int(members.max()) >= self.popsize):
            raise ValueError(f"members must lie in [0, {self.popsize})")
        spec = self.spec()
        device = self.plan.perturbed()[0].param.device
        pop = Population(members, seed=spec.seed, epoch=spec.epoch, sigma=spec.sigma, rank=spec.rank,
                         device=device, shared=shared)
        return self.holder.activate(pop)

    def _entry(self, batch) -> tuple:
        """``batch`` as the spec names it: ``(x, y)`` by value or ``(epoch, k, batch_size)`` rows of ``data``."""
        return batch_entry(batch, self.data is not None, "this EGGROLL")

    def _rows(self, entry) -> tuple:
        """The ``(x, y)`` tensors of a batch entry."""
        return self.problem.batches.rows(*entry) if len(entry) == 3 else entry

    def _use_loss(self, loss_fn) -> None:
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(output, target), got {type(loss_fn).__name__}")
        if self.problem.loss_fn is None or not same_loss(loss_fn, self.problem.loss_fn):
            if self.problem.loss_fn is not None:  # a new problem object: evaluators re-ship it once
                old = self.problem
                self.problem = ModuleProblem(self.model, None, old.batches, chunk=old.chunk)
            self.problem.loss_fn = loss_fn

    @torch.no_grad()
    def evaluate(self, batch, loss_fn, members=None) -> torch.Tensor:
        """Each member's loss on ``batch`` (x shared by all members); ``[len(members)]``."""
        self._use_loss(loss_fn)
        spec = self.spec()
        spec.extras[BATCH_KEY] = self._entry(batch)
        return self.evaluator(self.problem, spec, members)

    @torch.no_grad()
    def member_parameters(self, member: int) -> dict:
        """Member ``member``'s materialized parameters ``{name: tensor}`` (the naive reference;
        the population forward never builds them)."""
        member = int(member)
        if not 0 <= member < self.popsize:
            raise ValueError(f"member must be in [0, {self.popsize}), got {member}")
        flat = self.spec().points([member])
        params = dict(self.model.named_parameters())
        out = self.problem.unflatten(flat)
        return {name: value[0].to(params[name].dtype) for name, value in out.items()}

    # -- update -------------------------------------------------------------------
    @torch.no_grad()
    def gradients(self, fitness) -> dict:
        """Gradient estimates ``{param name: G}`` for a fitness vector ``[popsize]`` (lower is better)."""
        f = torch.as_tensor(fitness, dtype=torch.float32).reshape(-1)
        w = pair_weights(shape_fitness(f, self.strategy.fitness_shaping, self.strategy.group_size))
        spec = self.spec()
        return {pp.name: self.strategy.block_gradient(spec, i, w) for i, pp in enumerate(self.plan.params)
                if pp.mode != "frozen"}

    def tell(self, fitness) -> dict:
        """Apply one update from the population's fitness ``[popsize]``; writes the new center into the model."""
        f = torch.as_tensor(fitness, dtype=torch.float32).reshape(-1).cpu()
        if f.numel() != self.popsize:
            raise ValueError(f"fitness must have {self.popsize} values, got {f.numel()}")
        self.spec()
        stats = self.strategy.tell(f)  # updates the model's parameters in place
        if self.scheduler is not None:
            self.scheduler.step()
        self.last_fitness = f
        return {**stats, "sigma": self.sigma}

    def step(self, batch, loss_fn) -> float:
        """One generation on ``batch`` (``(x, y)`` or ``(epoch, k, batch_size)``); updates the model in
        place and returns the center's loss on the batch (before the update)."""
        entry = self._entry(batch)
        x, y = self._rows(entry)
        with torch.no_grad():
            center_loss = float(loss_fn(self.model(x), y))
        self.tell(self.evaluate(entry, loss_fn))
        return center_loss

    # -- checkpoints ----------------------------------------------------------------
    def state_dict(self) -> dict:
        """A snapshot (deep copy: later steps do not change it)."""
        self.strategy._pending = None  # the pending ask is a pure function of the state
        state = self.strategy.state_dict()
        state["scheduler"] = self.scheduler.state_dict() if self.scheduler is not None else None
        return state

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("name") != "eggroll":
            raise ValueError(f"state_dict is for {state.get('name') if isinstance(state, dict) else state!r}, "
                             "not 'eggroll'")
        self.strategy.load_state_dict(state)  # writes the center into the model's parameters
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    def close(self) -> None:
        """Release the evaluator's workers (Ray actors)."""
        close = getattr(self.evaluator, "close", None)
        if close is not None:
            close()

    def detach(self) -> None:
        """Restore the model's original layer classes."""
        unswap(self.model)

    def __repr__(self) -> str:
        n = sum(pp.param.numel() for pp in self.plan.perturbed())
        return (f"EGGROLL(popsize={self.popsize}, rank={self.rank}, sigma={self.sigma:g}, "
                f"params={n}, swapped={len(self.swapped)})")
