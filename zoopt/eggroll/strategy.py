"""EGGROLLES: ask/tell EGGROLL for flat vectors (``zoopt.minimize(..., method="eggroll")``) or for a list of
tensors updated in place (``params=``: the module optimizer hands it a model's parameters).

The vector is one full-rank block by default; ``shapes=[(m, n), (k,), ...]``
cuts it into tensors, the 2-D ones perturbed by rank-``r`` factors (``modes``
and ``tensor_ids`` set each block's mode and noise key, as the module
optimizer does for a model's parameters). Frozen blocks never move, whatever
the optimizer's weight decay. ``ask()``
returns a :class:`LowRankSpec`; ``tell()`` shapes the fitness and hands the
gradient estimate of :mod:`.update` to a torch.optim optimizer, one block at a
time: each block is a parameter of the optimizer (elementwise optimizers give
the same steps as on the whole vector), and no dense gradient of the whole
vector is ever built.

With ``params=[tensors]`` the center *is* those tensors: float32 ones are
updated in place, others through a float32 master copy written back after each
update. No flat copy exists; ``center`` (and a spec's ``center``) concatenates
the tensors on demand (checkpoints, shipping to Ray actors, ``points()``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from zoopt.strategy import Strategy, as_center, check_positive

from .noise import noise_epoch
from .spec import LowRankSpec, make_blocks
from .update import check_shaping, lowrank_gradient, pair_weights, shape_fitness, vector_gradient


def check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def sigma_at(sigma0: float, generation: int, decay: float, schedule) -> float:
    """sigma for ``generation``: ``schedule(generation)`` when given, else ``sigma0 * decay**generation``."""
    if schedule is not None:
        return float(schedule(generation))
    return sigma0 * decay ** generation


def _concat(parts) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in parts])


@dataclass
class TensorsLowRankSpec(LowRankSpec):
    """A :class:`LowRankSpec` whose center is a list of tensors (``parts``, one per block): ``center``
    concatenates them when read, ``with_center`` gives a plain spec without them (what evaluators ship)."""

    parts: tuple = field(default=(), repr=False, compare=False)

    @property
    def center(self) -> torch.Tensor:
        return _concat(self.parts) if self.parts else self._center

    @center.setter
    def center(self, value) -> None:  # the dataclass __init__ sets it (None: the parts are the center)
        self._center = value

    @property
    def dim(self) -> int:
        return sum(p.numel() for p in self.parts) if self.parts else int(self._center.numel())

    def with_center(self, center: torch.Tensor) -> LowRankSpec:
        kept = {f.name: getattr(self, f.name) for f in fields(LowRankSpec) if f.name != "center"}
        return LowRankSpec(center=center, **kept)


class EGGROLLES(Strategy):
    """Ask/tell EGGROLL on a flat vector or on tensors (``params``); see the module doc.

    ``keep_best=False`` tracks ``best_f`` only: the best member's full vector is not built (a language
    model's worth of floats whenever a minibatch gives a new best)."""

    name = "eggroll"

    def __init__(self, x0=None, *, dim: int | None = None, params=None, popsize: int = 64, sigma: float = 0.05,
                 lr: float = 0.05, rank: int = 1, shapes=None, vectors: str = "full", modes=None, tensor_ids=None,
                 names=None, optimizer="sgd",
                 weight_decay: float = 0.0, fitness_shaping: str = "zscore", group_size: int = 0,
                 noise_reuse: int = 1, sigma_decay: float = 1.0, sigma_schedule=None, seed: int = 0,
                 nonfinite: str = "worst", noise_chunk: int = 256, optimizer_kwargs: dict | None = None,
                 keep_best: bool = True):
        super().__init__(popsize, seed=seed, nonfinite=nonfinite, antithetic=True)
        self.sigma0 = check_positive("sigma", sigma)
        self.rank = check_int("rank", rank, 1)
        self.noise_reuse = check_int("noise_reuse", noise_reuse, 0)
        self.noise_chunk = check_int("noise_chunk", noise_chunk, 1)
        if not 0 < sigma_decay <= 1:
            raise ValueError(f"sigma_decay must be in (0, 1], got {sigma_decay}")
        if sigma_schedule is not None and not callable(sigma_schedule):
            raise TypeError("sigma_schedule must be a callable generation -> sigma")
        self.sigma_decay, self.sigma_schedule = float(sigma_decay), sigma_schedule
        self.fitness_shaping, self.group_size = check_shaping(fitness_shaping, group_size, self.popsize)
        self.keep_best = bool(keep_best)
        if params is not None:
            self._init_tensors(params, x0, dim, shapes)
            shapes = [tuple(t.shape) for t in self._targets]
        else:
            if x0 is None:
                if dim is None:
                    raise ValueError("give x0, dim or params")
                x0 = torch.zeros(check_int("dim", dim, 1))
            self._flat, self._targets = as_center(x0), None
        dim = self._flat.numel() if self._flat is not None else sum(t.numel() for t in self._targets)
        self.blocks = make_blocks(shapes if shapes is not None else [(dim,)], dim, tensor_ids=tensor_ids,
                                  vectors=vectors, modes=modes, names=names)
        if self._flat is not None:  # each block a view of the flat center
            self._parts = [self._flat[b.offset:b.offset + b.numel].view(b.shape) for b in self.blocks]
        self._trained = [i for i, b in enumerate(self.blocks) if b.mode != "frozen"]
        if not self._trained:
            raise ValueError("every block is frozen: nothing to optimize")
        # the optimizer's parameters share each block's storage: its in-place step moves the center itself
        self._opt_params = [torch.nn.Parameter(self._parts[i], requires_grad=False) for i in self._trained]
        from zoopt.optim import make_optimizer

        self.optimizer = make_optimizer(optimizer, self._opt_params, lr=lr, weight_decay=weight_decay,
                                        **(optimizer_kwargs or {}))

    def _init_tensors(self, params, x0, dim, shapes) -> None:
        if x0 is not None or dim is not None or shapes is not None:
            raise ValueError("params gives the center and the shapes: pass no x0, dim or shapes with it")
        params = list(params)
        if not params or not all(isinstance(t, torch.Tensor) for t in params):
            raise TypeError("params must be a non-empty list of tensors")
        self._flat, self._targets, self._parts = None, [t.detach() for t in params], []
        for i, t in enumerate(self._targets):
            if t.is_complex() or not t.is_floating_point():
                raise TypeError(f"params[{i}] must be a real floating tensor, got {t.dtype}")
            if not torch.isfinite(t).all():
                raise ValueError(f"params[{i}] must be finite everywhere")
            # float32 tensors are the center itself; others get a float32 master copy
            self._parts.append(t if t.dtype == torch.float32 else t.to(torch.float32))

    # -- center ---------------------------------------------------------------------
    @property
    def center(self) -> torch.Tensor:
        """The flat center: the strategy's own vector, or (``params``) a concatenated copy of the tensors."""
        return self._flat if self._flat is not None else _concat(self._parts)

    @property
    def mean(self) -> torch.Tensor:
        return self._flat.clone() if self._flat is not None else _concat(self._parts)

    def _write_back(self) -> None:
        """Copy float32 masters into tensors of other dtypes (float32 ones are the masters)."""
        if self._targets is not None:
            with torch.no_grad():
                for target, part in zip(self._targets, self._parts):
                    if target is not part:
                        target.copy_(part)

    @property
    def sigma(self) -> float:
        return sigma_at(self.sigma0, self.generation, self.sigma_decay, self.sigma_schedule)

    def _ask(self) -> LowRankSpec:
        kw = dict(popsize=self.popsize, generation=self.generation, seed=self.seed, sigma=self.sigma,
                  rank=self.rank, noise_reuse=self.noise_reuse, blocks=self.blocks)
        if self._flat is not None:
            return LowRankSpec(center=self._flat, **kw)
        return TensorsLowRankSpec(center=None, parts=tuple(self._parts), **kw)

    # -- update ---------------------------------------------------------------------
    def block_gradient(self, spec: LowRankSpec, i: int, weights: torch.Tensor) -> torch.Tensor:
        """Block ``i``'s gradient estimate (its shape) for pair weights ``[P]``; frozen blocks get zeros."""
        block, device = self.blocks[i], self._parts[i].device
        epoch = noise_epoch(spec.generation, spec.noise_reuse)
        if block.mode == "lowrank":
            g = lowrank_gradient(spec.seed, block.tensor_id, epoch, weights, *block.matrix, spec.rank, spec.sigma,
                                 spec.popsize, self.noise_chunk, device=device)
        elif block.mode == "full":
            g = vector_gradient(spec.seed, block.tensor_id, epoch, weights, block.numel, spec.sigma, spec.popsize,
                                self.noise_chunk, device=device)
        else:
            g = torch.zeros(block.numel, device=device)
        return g.reshape(block.shape)

    def gradient(self, spec: LowRankSpec, shaped: torch.Tensor) -> torch.Tensor:
        """The flat gradient estimate for shaped fitness ``[N]`` (built whole: for inspection; ``tell``
        steps one block at a time)."""
        w = pair_weights(shaped)
        return torch.cat([self.block_gradient(spec, i, w).reshape(-1) for i in range(len(self.blocks))])

    def _tell(self, spec: LowRankSpec, fitness: torch.Tensor) -> None:
        w = pair_weights(shape_fitness(fitness, self.fitness_shaping, self.group_size))
        for param, i in zip(self._opt_params, self._trained):
            param.grad = self.block_gradient(spec, i, w).to(param.dtype)
            self.optimizer.step()  # only the block with a gradient moves
            param.grad = None
        self._write_back()

    # -- checkpoints ------------------------------------------------------------------
    def _state(self) -> dict:
        # a snapshot (later steps must not change it): torch's optimizer state_dict references live tensors
        return {"center": self.mean, "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def _load(self, state: dict) -> None:
        center = state["center"].reshape(-1)
        with torch.no_grad():
            for b, part in zip(self.blocks, self._parts):
                part.copy_(center[b.offset:b.offset + b.numel].view(b.shape))
        self._write_back()
        self.optimizer.load_state_dict(self._per_block(state["optimizer"]))

    def _per_block(self, saved: dict) -> dict:
        """Optimizer state of the one-parameter layout (the whole flat vector as one parameter, as
        checkpoints before blocks were parameters hold it) split into this optimizer's per-block layout;
        a checkpoint of the per-block layout passes unchanged."""
        groups = saved["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != 1:
            return saved
        dim = sum(b.numel for b in self.blocks)
        old = saved["state"].get(groups[0]["params"][0], {})
        state = {}
        for j, i in enumerate(self._trained):
            b = self.blocks[i]
            state[j] = {k: (v.reshape(-1)[b.offset:b.offset + b.numel].view(b.shape).clone()
                            if isinstance(v, torch.Tensor) and v.dim() == 1 and v.numel() == dim else copy.deepcopy(v))
                        for k, v in old.items()}
        return {"state": state, "param_groups": [{**groups[0], "params": list(range(len(self._trained)))}]}
