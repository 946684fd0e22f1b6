"""Module x low-rank: how a ``ModuleProblem`` evaluates an EGGROLL spec.

Registered for ``LowRankSpec.kind`` with :func:`zoopt.problems.module.register_structured`:
the problem's model (its layers swapped for population-aware ones, see
:mod:`.swap`) holds the spec's center and runs every member of a slice in one
forward: one shared GEMM per layer plus each member's rank-r correction. No
member's weights are built. The per-process helper (:class:`PopulationModel`)
lives in ``problem.cache``, so a Ray actor builds its own from the model it
received once.

Every member's loss depends only on its own noise and the batch (antithetic
pairs stay in one group) and on which members share its forward: the
problem's ``chunk`` members at a time, from the start of each slice. Evaluators
cut slices at multiples of ``chunk``, so in process or across Ray actors the
forwards, and the losses, are the same bit for bit.
"""
from __future__ import annotations

import torch

from zoopt.problems.module import load_flat

from .population import Population, PopulationHolder
from .swap import check_blocks, plan_from_blocks, swap_layers

CACHE_KEY = "eggroll"


def per_member_loss(loss_fn, out: torch.Tensor, target, n: int) -> torch.Tensor:
    """``loss_fn(out_i, target)`` for each member's slice of member-major ``out``; ``[n]`` float32."""
    if out.shape[0] % n:
        raise ValueError(f"the model output's leading dimension {out.shape[0]} is not a multiple of the "
                         f"{n} members (rows must be member-major)")
    out = out.reshape(n, -1, *out.shape[1:])
    try:
        return torch.vmap(lambda o: loss_fn(o, target))(out).reshape(n).float()
    except Exception:  # loss functions vmap cannot trace: one call per member
        return torch.stack([torch.as_tensor(loss_fn(out[i], target)).reshape(()) for i in range(n)]).float()


def _holder_of(model: torch.nn.Module):
    for module in model.modules():
        holder = getattr(module, "_eggroll_holder", None)
        if holder is not None:
            return holder
    return PopulationHolder()


class PopulationModel:
    """A problem's model ready for population forwards of specs with ``blocks``."""

    def __init__(self, problem, blocks):
        self.blocks = blocks
        self.model = problem.model
        check_blocks(self.model, problem.names, blocks)
        self.holder = _holder_of(self.model)
        swap_layers(self.model, self.holder, plan_from_blocks(self.model, problem.names, blocks))
        first = next(iter(self.model.parameters()), None)
        self.device = first.device if first is not None else torch.device("cpu")
        self._loaded = None

    def load(self, spec) -> None:
        """Write the spec's center into the model (once per spec). A spec whose center is a list of
        tensors (``parts``: the module optimizer's) is written tensor by tensor, skipping the tensors
        that already are the model's: in process, nothing is copied."""
        if self._loaded is spec:
            return
        parts = getattr(spec, "parts", ())
        if parts:
            params = [p for p in self.model.parameters() if p.requires_grad]
            if len(params) != len(parts):
                raise ValueError(f"the spec has {len(parts)} tensors for the model's {len(params)} trainable")
            with torch.no_grad():
                for p, part in zip(params, parts):
                    if not _same_tensor(p, part):
                        p.copy_(part)
        else:
            load_flat(self.model, spec.center)
        self._loaded = spec


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
            and a.dtype == b.dtype and a.device == b.device)


def population_model(problem, spec) -> PopulationModel:
    helper = problem.cache.get(CACHE_KEY)
    if helper is None or helper.blocks != spec.blocks:
        helper = problem.cache[CACHE_KEY] = PopulationModel(problem, spec.blocks)
    return helper


@torch.no_grad()
def evaluate_lowrank(problem, spec, members: torch.Tensor, x, y) -> torch.Tensor:
    """Each member's ``problem.loss_fn(model(x), y)``; ``x`` is shared by all members."""
    helper = population_model(problem, spec)
    helper.load(spec)
    if isinstance(x, torch.Tensor):
        x = x.to(helper.device)
    if isinstance(y, torch.Tensor):
        y = y.to(helper.device)
    step = problem.chunk + problem.chunk % 2  # whole antithetic pairs per forward; evaluators split at chunks
    losses = []
    for start in range(0, members.numel(), step):
        part = members[start:start + step]
        pop = Population(part, seed=spec.seed, epoch=spec.epoch, sigma=spec.sigma, rank=spec.rank,
                         device=helper.device, shared=x)
        with helper.holder.activate(pop):
            out = problem.model(x)
        losses.append(per_member_loss(problem.loss_fn, out, y, part.numel()))
    return torch.cat(losses) if losses else torch.empty(0)
