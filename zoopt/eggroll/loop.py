"""Parameters a user-defined module owns directly (a positional embedding, a custom norm's weight).

Such a module's code reads its parameters anywhere, so there is no shared
product to split: inside a population its forward runs once per member, with
that member's parameters (``p + s sigma eps``, full-rank keyed noise, or
``W + s sigma A B^T / sqrt(r)`` for the matrices of a user subclass of a torch
layer, built one member at a time) and a one-member population active for the
population-aware layers inside it. The
per-member inputs are the member's rows of member-major tensors; tensors every
member shares are passed whole. Outputs are stacked member-major. Cost: one
forward of the module per member (the layers inside it still never build a
member's weights).

The swapped class is made per user class (:func:`loop_class`); a pickled
module records the user's class and its state, so a Ray actor that unpickles
the model makes the same class again.
"""
from __future__ import annotations

import torch

from .layers import _PopulationAware
from .population import Population

_CLASSES: dict = {}


def owns_parameters(module: torch.nn.Module, original: type) -> bool:
    """True for a module of a user-defined class (not torch's) with trainable parameters of its own."""
    if original.__module__.split(".")[0] == "torch":
        return False
    return any(p.requires_grad for p in module.parameters(recurse=False))


def _split(value, pop: Population, i: int):
    """Member ``i``'s part of an argument: its rows of a member-major tensor, else the value itself."""
    if isinstance(value, torch.Tensor):
        if value.dim() and not pop.is_shared(value) and value.shape[0] % pop.n == 0:
            return value.reshape(pop.n, -1, *value.shape[1:])[i]
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_split(v, pop, i) for v in value)
    return value


def _stack(outs: list):
    first = outs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outs, 0)
    if isinstance(first, (tuple, list)):
        return type(first)(_stack([o[k] for o in outs]) for k in range(len(first)))
    if isinstance(first, dict):
        return {k: _stack([o[k] for o in outs]) for k in first}
    raise TypeError(f"{type(first).__name__} output of a member-loop module cannot be stacked per member")


def _member_delta(pop: Population, module, name: str, p: torch.Tensor, i: int) -> torch.Tensor:
    """Member ``i``'s perturbation of parameter ``name`` (``p``'s shape)."""
    tid = module._eggroll_ids[name]
    if module._eggroll_modes[name] == "full":
        return pop.vector_noise(tid, tuple(p.shape), dtype=p.dtype)[i]
    A, B = pop.factors(tid, p.shape[0], p[0].numel(), dtype=p.dtype)
    group = i // pop.group
    return (pop.lowrank_scale.reshape(-1)[i].to(p.dtype) * (A[group] @ B[group].T)).view(p.shape)


class MemberLoop(_PopulationAware):
    """Mixin: the module's own forward, once per member inside a population (see module doc)."""

    def __reduce_ex__(self, protocol):
        # pickled as (the user's class, the state): the loop class is made again where it is loaded
        return _new_loop, (self._eggroll_original,), self.__getstate__()

    def forward(self, *args, **kwargs):
        pop = self._population()
        original = self._eggroll_original.forward
        if pop is None or getattr(self, "_eggroll_looping", False):
            return original(self, *args, **kwargs)
        own = {name: p for name, p in self._parameters.items()
               if p is not None and self._eggroll_modes.get(name) in ("full", "lowrank")}
        if not own:  # nothing of its own perturbed (vectors="frozen", excluded): one pass for all members
            return original(self, *args, **kwargs)
        outs = []
        try:
            self._eggroll_looping = True
            for i in range(pop.n):
                member_args = [_split(a, pop, i) for a in args]
                member_kwargs = {k: _split(v, pop, i) for k, v in kwargs.items()}
                shared = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and pop.is_shared(a)]
                sub = Population(pop.members[i:i + 1], seed=pop.seed, epoch=pop.epoch, sigma=pop.sigma,
                                 rank=pop.rank, device=pop.device)
                for a in shared:
                    sub.mark_shared(a)
                for name, p in own.items():
                    self._parameters[name] = p + _member_delta(pop, self, name, p, i)
                with self._eggroll_holder.activate(sub):
                    outs.append(original(self, *member_args, **member_kwargs))
        finally:
            for name, p in own.items():
                self._parameters[name] = p
            self._eggroll_looping = False
        pop.expanded = True
        return _stack(outs)


def loop_class(cls: type) -> type:
    """The member-loop subclass of user class ``cls`` (made once per class)."""
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"MemberLoop{cls.__name__}", (MemberLoop, cls), {"__module__": cls.__module__})
    return _CLASSES[cls]


def _new_loop(cls: type):
    """Unpickling: an empty instance of ``cls``'s member-loop class (its state follows)."""
    loop = loop_class(cls)
    return loop.__new__(loop)
