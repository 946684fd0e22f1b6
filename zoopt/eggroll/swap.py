"""Swap a user's layers for population-aware ones in place, without touching their code.

Each supported module (``nn.Linear``, ``nn.Embedding``, ``nn.LayerNorm``,
``nn.RNN``, ``nn.GRU``, ``nn.LSTM`` and their cells; exact types, so user subclasses with their
own forward are left alone) has its class replaced by the population-aware
subclass: the same object, the same parameters and state_dict keys, the plain
forward whenever no population is active. :func:`unswap` restores the classes.

Every trainable parameter gets a tensor id (from its name) and a mode:
``"lowrank"`` for the matrices of those layers, ``vectors`` ("full" or
"frozen") for their 1-D parameters, ``"frozen"`` for excluded parameters and
for parameters of modules without a population-aware version (listed in
``Plan.unsupported``).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from torch import nn

from .layers import SWAPS as LAYER_SWAPS
from .recurrent import SWAPS as RECURRENT_SWAPS
from .noise import tensor_id_for

SWAPS = {**LAYER_SWAPS, **RECURRENT_SWAPS}


@dataclass
class ParamPlan:
    name: str
    param: nn.Parameter
    tensor_id: int
    mode: str


@dataclass
class Plan:
    params: list = field(default_factory=list)        # ParamPlan, in named_parameters order
    unsupported: list = field(default_factory=list)   # names of trainable parameters left frozen

    def perturbed(self):
        return [p for p in self.params if p.mode != "frozen"]


def _excluded(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) or name.startswith(pat + ".") for pat in patterns)


def plan_parameters(model: nn.Module, *, vectors: str = "full", embeddings: bool = True, exclude=()) -> Plan:
    """Decide each trainable parameter's tensor id and mode (see module doc)."""
    if vectors not in ("full", "frozen"):
        raise ValueError(f"vectors must be 'full' or 'frozen', got {vectors!r}")
    if isinstance(exclude, str):
        exclude = (exclude,)
    owner = {}
    for mod_name, module in model.named_modules():
        if type(module) in SWAPS or getattr(module, "_eggroll_original", None) is not None:
            for local, p in module.named_parameters(recurse=False):
                owner.setdefault(id(p), (module, local))
    plan = Plan()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        tid = tensor_id_for(name)
        if id(p) not in owner:
            plan.unsupported.append(name)
            mode = "frozen"
        elif _excluded(name, exclude):
            mode = "frozen"
        else:
            module, _ = owner[id(p)]
            base = getattr(module, "_eggroll_original", type(module))
            if p.dim() == 2 and base is not nn.LayerNorm:
                mode = "lowrank" if (base is not nn.Embedding or embeddings) else "frozen"
            else:
                mode = vectors
        plan.params.append(ParamPlan(name, p, tid, mode))
    return plan


def swap_layers(model: nn.Module, holder, plan: Plan) -> list:
    """Turn supported modules into their population-aware classes; returns the swapped module names."""
    by_param = {id(pp.param): pp for pp in plan.params}
    swapped = []
    for mod_name, module in model.named_modules():
        original = getattr(module, "_eggroll_original", None) or type(module)
        if original not in SWAPS:
            continue
        ids, modes = {}, {}
        for local, p in module.named_parameters(recurse=False):
            pp = by_param.get(id(p))
            ids[local] = pp.tensor_id if pp else 0
            modes[local] = pp.mode if pp else "frozen"
        module._eggroll_original = original
        module.__class__ = SWAPS[original]
        module._eggroll_holder, module._eggroll_ids, module._eggroll_modes = holder, ids, modes
        swapped.append(mod_name)
    return swapped


def unswap(model: nn.Module) -> None:
    """Give every swapped module its original class back."""
    for module in model.modules():
        original = getattr(module, "_eggroll_original", None)
        if original is not None:
            module.__class__ = original
            for attr in ("_eggroll_original", "_eggroll_holder", "_eggroll_ids", "_eggroll_modes"):
                module.__dict__.pop(attr, None)
