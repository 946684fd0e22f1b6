"""``zoopt.EGGROLL``: train a torch module with low-rank evolution strategies.

    opt = zoopt.EGGROLL(model, popsize=256, rank=1, sigma=0.05, lr=0.05, seed=0)
    loss = opt.step((x, y), torch.nn.CrossEntropyLoss())   # the center's loss, before the update

The model's supported layers are swapped for population-aware ones (see
:mod:`.swap`); its code is unchanged. ``step`` runs the whole population on
the batch (every member sees the same rows, so the first layer's base GEMM
runs once), turns each member's loss into a shaped fitness, and hands the
gradient estimate ``sigma/sqrt(N) * sum_i f_i s_i A_i B_i^T / sqrt(r)`` — one
GEMM over pairs per matrix — to a torch.optim optimizer (SGD by default, as
in the paper; Adam and AdamW too). For reinforcement learning and other
custom fitness, use ``members()``/``population()``/``tell()``::

    with opt.population():                 # all members, rows member-major
        actions = model(obs)               # obs [N * envs, obs_dim] -> [N * envs, ...]
    opt.tell(returns_as_loss)              # [N], lower is better
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from zoopt.optim import make_optimizer
from zoopt.shaping import NONFINITE_POLICIES, check_choice, sanitize_fitness
from zoopt.strategy import check_popsize, check_positive

from .noise import full_noise, lowrank_factors, noise_epoch
from .population import Population, PopulationHolder
from .strategy import check_int, sigma_at
from .swap import plan_parameters, swap_layers, unswap
from .update import check_shaping, lowrank_gradient, pair_weights, shape_fitness, vector_gradient


def per_member_loss(loss_fn, out: torch.Tensor, target, n: int) -> torch.Tensor:
    """``loss_fn(out_i, target)`` for each member's slice of member-major ``out``."""
    out = out.reshape(n, -1, *out.shape[1:]) if out.shape[0] % n == 0 else None
    if out is None:
        raise ValueError("the model output's leading dimension is not a multiple of the population size")
    try:
        return torch.vmap(lambda o: loss_fn(o, target))(out).reshape(n).float()
    except Exception:  # loss functions vmap cannot trace: one call per member
        return torch.stack([torch.as_tensor(loss_fn(out[i], target)).reshape(()) for i in range(n)]).float()


class EGGROLL:
    """EGGROLL optimizer for a torch module (see module doc).

    Arguments: ``popsize`` (even), ``rank`` r, ``sigma``, ``lr``; ``optimizer``
    "sgd" | "adam" | "adamw" | a torch.optim class; ``fitness_shaping`` "zscore"
    (default) | "centered_rank" | "raw"; ``group_size`` for group-wise z-scores;
    ``noise_reuse`` (1: fresh noise every step, 0: never); ``vectors`` "full" |
    "frozen" for biases and norms; ``embeddings=False`` freezes embeddings;
    ``exclude`` parameter-name patterns to freeze (e.g. the head);
    ``sigma_decay`` / ``sigma_schedule(step)`` and ``lr_schedule(step) -> factor``
    (a LambdaLR); ``chunk`` members per forward (memory bound).
    """

    def __init__(self, model: nn.Module, popsize: int = 256, rank: int = 1, sigma: float = 0.05, lr: float = 0.05,
                 seed: int = 0, *, optimizer="sgd", weight_decay: float = 0.0, fitness_shaping: str = "zscore",
                 group_size: int = 0, noise_reuse: int = 1, vectors: str = "full", embeddings: bool = True,
                 exclude=(), sigma_decay: float = 1.0, sigma_schedule=None, lr_schedule=None,
                 chunk: int | None = None, nonfinite: str = "worst", noise_chunk: int = 256,
                 optimizer_kwargs: dict | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.popsize = check_popsize(popsize, antithetic=True)
        self.rank = check_int("rank", rank, 1)
        self.sigma0 = check_positive("sigma", sigma)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
            raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
        self.seed = seed
        self.noise_reuse = check_int("noise_reuse", noise_reuse, 0)
        self.noise_chunk = check_int("noise_chunk", noise_chunk, 1)
        self.chunk = None if chunk is None else check_int("chunk", chunk, 1)
        self.fitness_shaping, self.group_size = check_shaping(fitness_shaping, group_size, self.popsize)
        if not 0 < sigma_decay <= 1:
            raise ValueError(f"sigma_decay must be in (0, 1], got {sigma_decay}")
        for name, fn in (("sigma_schedule", sigma_schedule), ("lr_schedule", lr_schedule)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be a callable step -> value")
        self.sigma_decay, self.sigma_schedule = float(sigma_decay), sigma_schedule
        self.nonfinite = check_choice("nonfinite", nonfinite, NONFINITE_POLICIES)
        self.plan = plan_parameters(model, vectors=vectors, embeddings=embeddings, exclude=exclude)
        if not self.plan.perturbed():
            raise ValueError("model has no parameter EGGROLL can perturb (supported: Linear, Embedding, "
                             f"LayerNorm, RNN, GRU, LSTM and their cells); unsupported: {self.plan.unsupported}")
        self.holder = PopulationHolder()
        self.swapped = swap_layers(model, self.holder, self.plan)
        self.optimizer = make_optimizer(optimizer, [pp.param for pp in self.plan.perturbed()], lr=lr,
                                        weight_decay=weight_decay, **(optimizer_kwargs or {}))
        self.scheduler = (torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_schedule)
                          if lr_schedule is not None else None)
        self.generation = 0
        self.last_fitness = None

    # -- population ---------------------------------------------------------------
    @property
    def sigma(self) -> float:
        return sigma_at(self.sigma0, self.generation, self.sigma_decay, self.sigma_schedule)

    def members(self) -> torch.Tensor:
        return torch.arange(self.popsize)

    def population(self, members=None, shared=None):
        """Context manager: inside it the model evaluates ``members`` (default: all) at once.
        ``shared``: a tensor every member sees (its rows are not repeated per member)."""
        members = self.members() if members is None else torch.as_tensor(members, dtype=torch.int64)
        if members.numel() and (int(members.min()) < 0 or int(members.max()) >= self.popsize):
            raise ValueError(f"members must lie in [0, {self.popsize})")
        device = next(iter(self.plan.perturbed())).param.device
        pop = Population(members, seed=self.seed, epoch=noise_epoch(self.generation, self.noise_reuse),
                         sigma=self.sigma, rank=self.rank, device=device, shared=shared)
        return self.holder.activate(pop)

    @torch.no_grad()
    def evaluate(self, batch, loss_fn, members=None) -> torch.Tensor:
        """Each member's loss on ``batch = (x, y)`` (x shared by all members); ``[len(members)]``."""
        x, y = batch
        members = self.members() if members is None else torch.as_tensor(members, dtype=torch.int64)
        step = self.chunk or members.numel()
        if step % 2 and step < members.numel():
            step += 1  # keep antithetic pairs in one forward
        losses = []
        for start in range(0, members.numel(), step):
            part = members[start:start + step]
            with self.population(part, shared=x):
                out = self.model(x)
            losses.append(per_member_loss(loss_fn, out, y, part.numel()))
        return torch.cat(losses)

    @torch.no_grad()
    def member_parameters(self, member: int) -> dict:
        """Member ``member``'s materialized parameters ``{name: tensor}`` (the naive fallback;
        the population forward never builds them)."""
        member = int(member)
        if not 0 <= member < self.popsize:
            raise ValueError(f"member must be in [0, {self.popsize}), got {member}")
        pair, sign = member // 2, 1.0 - 2.0 * (member % 2)
        epoch = noise_epoch(self.generation, self.noise_reuse)
        out = {}
        for pp in self.plan.params:
            p = pp.param.detach()
            if pp.mode == "lowrank":
                A, B = lowrank_factors(self.seed, pp.tensor_id, epoch, [pair], *p.shape, self.rank, device=p.device)
                p = p + (sign * self.sigma / math.sqrt(self.rank)) * (A[0] @ B[0].T)
            elif pp.mode == "full":
                eps = full_noise(self.seed, pp.tensor_id, epoch, [pair], p.numel(), device=p.device)
                p = p + (sign * self.sigma) * eps[0].reshape(p.shape)
            out[pp.name] = p
        return out

    # -- update -------------------------------------------------------------------
    @torch.no_grad()
    def gradients(self, fitness: torch.Tensor) -> dict:
        """Gradient estimates ``{param name: G}`` for a fitness vector ``[popsize]`` (lower is better)."""
        shaped = shape_fitness(fitness, self.fitness_shaping, self.group_size)
        w = pair_weights(shaped)
        epoch = noise_epoch(self.generation, self.noise_reuse)
        grads = {}
        for pp in self.plan.perturbed():
            p = pp.param
            if pp.mode == "lowrank":
                g = lowrank_gradient(self.seed, pp.tensor_id, epoch, w, *p.shape, self.rank, self.sigma,
                                     self.popsize, self.noise_chunk, device=p.device)
            else:
                g = vector_gradient(self.seed, pp.tensor_id, epoch, w, p.numel(), self.sigma, self.popsize,
                                    self.noise_chunk, device=p.device).reshape(p.shape)
            grads[pp.name] = g.to(p.dtype)
        return grads

    def tell(self, fitness) -> dict:
        """Apply one update from the population's fitness ``[popsize]``; returns stats."""
        f = torch.as_tensor(fitness, dtype=torch.float32).reshape(-1).cpu()
        if f.numel() != self.popsize:
            raise ValueError(f"fitness must have {self.popsize} values, got {f.numel()}")
        f, n_bad = sanitize_fitness(f, self.nonfinite)
        grads = self.gradients(f)
        for pp in self.plan.perturbed():
            pp.param.grad = grads[pp.name]
        self.optimizer.step()
        for pp in self.plan.perturbed():
            pp.param.grad = None
        if self.scheduler is not None:
            self.scheduler.step()
        self.generation += 1
        self.last_fitness = f
        return {"generation": self.generation, "mean": float(f.mean()), "min": float(f.min()),
                "max": float(f.max()), "sigma": self.sigma, "nonfinite": n_bad}

    def step(self, batch, loss_fn) -> float:
        """One generation on ``batch = (x, y)``; updates the model in place and returns the
        center's loss on the batch (before the update)."""
        with torch.no_grad():
            x, y = batch
            center_loss = float(loss_fn(self.model(x), y))
        self.tell(self.evaluate(batch, loss_fn))
        return center_loss

    # -- checkpoints ----------------------------------------------------------------
    def state_dict(self) -> dict:
        """A snapshot (deep copy: later steps do not change it)."""
        return copy.deepcopy({"name": "eggroll", "generation": self.generation, "seed": self.seed,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None})

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != "eggroll":
            raise ValueError(f"state_dict is for {state.get('name')!r}, not 'eggroll'")
        self.generation, self.seed = state["generation"], state["seed"]
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    def detach(self) -> None:
        """Restore the model's original layer classes."""
        unswap(self.model)

    def __repr__(self) -> str:
        n = sum(pp.param.numel() for pp in self.plan.perturbed())
        return (f"EGGROLL(popsize={self.popsize}, rank={self.rank}, sigma={self.sigma:g}, "
                f"params={n}, swapped={len(self.swapped)})")
