"""Swap a user's layers for population-aware ones in place, without touching their code.

Each supported module (exact types, so user subclasses of torch layers with
their own forward are left alone) has its class replaced by its
population-aware subclass: the same object, the same parameters and
state_dict keys, the plain forward whenever no population is active.
:func:`unswap` restores the classes. Supported:

* low-rank matrices (``A B^T`` per member): ``nn.Linear``, ``nn.Embedding``,
  ``nn.Conv1d/2d/3d`` (the kernel seen as a matrix), ``nn.RNN``/``GRU``/``LSTM``
  and their cells, ``nn.MultiheadAttention`` (its projections);
* full-rank keyed noise: biases, norms (``LayerNorm``, ``BatchNorm1d/2d/3d``,
  ``GroupNorm``, ``RMSNorm``), and parameters a user-defined module owns
  directly (a positional embedding, a custom norm's weight): such a module runs
  once per member inside a population (:mod:`.loop`). A user subclass of a
  layer above (its own forward) runs the same way, its matrices still low-rank.

Every trainable parameter gets a tensor id (from its name) and a mode:
``"lowrank"`` for the matrices above, ``vectors`` ("full" or "frozen") for the
rest, ``"frozen"`` for excluded parameters and for parameters of torch modules
without a population-aware version (``Plan.unsupported``).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from torch import nn

from .attention import SWAPS as ATTENTION_SWAPS
from .conv import SWAPS as CONV_SWAPS
from .layers import SWAPS as LAYER_SWAPS
from .loop import loop_class, owns_parameters
from .noise import tensor_id_for
from .norms import NORMS, SWAPS as NORM_SWAPS
from .recurrent import SWAPS as RECURRENT_SWAPS

SWAPS = {**LAYER_SWAPS, **RECURRENT_SWAPS, **CONV_SWAPS, **NORM_SWAPS, **ATTENTION_SWAPS}
VECTOR_ONLY = NORMS  # their parameters take full-rank noise whatever their shape
MATRIX_LAYERS = tuple(cls for cls in SWAPS if cls not in NORMS)
MATRIX_EXCEPTIONS = {nn.MultiheadAttention: ("bias_k", "bias_v")}  # not supported: left frozen


@dataclass
class ParamPlan:
    name: str
    param: nn.Parameter
    tensor_id: int
    mode: str


@dataclass
class Plan:
    params: list = field(default_factory=list)        # ParamPlan, in named_parameters order
    unsupported: list = field(default_factory=list)   # names of trainable parameters EGGROLL cannot perturb
    excluded: list = field(default_factory=list)      # names frozen on request (exclude, vectors, embeddings)

    def perturbed(self):
        return [p for p in self.params if p.mode != "frozen"]


def _excluded(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) or name.startswith(pat + ".") for pat in patterns)


def _original(module: nn.Module):
    return getattr(module, "_eggroll_original", None) or type(module)


def _swap_class(module: nn.Module):
    """The population-aware class for ``module``, or None."""
    original = _original(module)
    if original in SWAPS:
        return SWAPS[original]
    if owns_parameters(module, original):
        return loop_class(original)
    return None


def capability(module: nn.Module, local: str, param) -> str | None:
    """How the population forward can perturb ``module``'s parameter ``local``: "lowrank", "full" or None."""
    original = _original(module)
    if local in MATRIX_EXCEPTIONS.get(original, ()):
        return None
    if param.dim() < 2 or original in VECTOR_ONLY:
        return "full"
    if original in SWAPS:
        return "lowrank"
    # a user module (member loop): a subclass of a torch layer keeps its matrices low-rank; bare ones are full
    return "lowrank" if issubclass(original, MATRIX_LAYERS) else "full"


def _owners(model: nn.Module) -> dict:
    owner = {}
    for module in model.modules():
        if _swap_class(module) is not None:
            for local, p in module.named_parameters(recurse=False):
                owner.setdefault(id(p), (module, local))
    return owner


def plan_parameters(model: nn.Module, *, vectors: str = "full", embeddings: bool = True, exclude=()) -> Plan:
    """Decide each trainable parameter's tensor id and mode (see module doc)."""
    if vectors not in ("full", "frozen"):
        raise ValueError(f"vectors must be 'full' or 'frozen', got {vectors!r}")
    if isinstance(exclude, str):
        exclude = (exclude,)
    owner = _owners(model)
    plan = Plan()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        cap = capability(*owner[id(p)], p) if id(p) in owner else None
        if _excluded(name, exclude):
            mode = "frozen"
        elif cap is None:
            plan.unsupported.append(name)
            mode = "frozen"
        elif cap == "lowrank":
            mode = "lowrank" if (_original(owner[id(p)][0]) is not nn.Embedding or embeddings) else "frozen"
        else:
            mode = vectors
        if mode == "frozen" and name not in plan.unsupported:
            plan.excluded.append(name)
        plan.params.append(ParamPlan(name, p, tensor_id_for(name), mode))
    return plan


def plan_from_blocks(model: nn.Module, names, blocks) -> Plan:
    """The plan a spec's blocks describe (one block per trainable parameter, in order)."""
    params = dict(model.named_parameters())
    return Plan(params=[ParamPlan(n, params[n], b.tensor_id, b.mode) for n, b in zip(names, blocks)])


def check_blocks(model: nn.Module, names, blocks) -> None:
    """Raise unless the population forward perturbs every block as the spec says."""
    if len(names) != len(blocks):
        raise ValueError(f"the spec has {len(blocks)} blocks for the model's {len(names)} trainable parameters")
    owner = _owners(model)
    params = dict(model.named_parameters())
    for name, b in zip(names, blocks):
        p = params[name]
        if tuple(p.shape) != tuple(b.shape):
            raise ValueError(f"block {b.name} has shape {b.shape}, parameter {name} has {tuple(p.shape)}")
        cap = capability(*owner[id(p)], p) if id(p) in owner else None
        if b.mode != "frozen" and b.mode != cap:
            raise ValueError(f"parameter {name}: the population forward cannot apply {b.mode!r} noise "
                             f"(it supports {cap or 'none'}); evaluate with ModuleProblem(structured=False)")


def swap_layers(model: nn.Module, holder, plan: Plan) -> list:
    """Turn supported modules into their population-aware classes; returns the swapped module names."""
    by_param = {id(pp.param): pp for pp in plan.params}
    swapped = []
    for mod_name, module in model.named_modules():
        cls = _swap_class(module)
        if cls is None:
            continue
        ids, modes = {}, {}
        for local, p in module.named_parameters(recurse=False):
            pp = by_param.get(id(p))
            ids[local] = pp.tensor_id if pp else 0
            modes[local] = pp.mode if pp else "frozen"
        module._eggroll_original = _original(module)
        module.__class__ = cls
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
