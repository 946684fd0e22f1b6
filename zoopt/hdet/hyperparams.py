"""Other scalar hyperparameters explored the HDET way (paper Remark 1).

Each :class:`ExploredScalar` has its own base value h̄, spread α_h, permutation stream and
controller: replica r uses h_r = h̄·ρ^h[π_h(r)] from step 0, and at every auto-LR sync the base
moves by the same Δ/v update as the LR. The value must leave the architecture unchanged (so
that weights can be averaged) and change the loss differentially.

Training loss is biased for regularisers (a larger dropout p raises the training loss by itself,
so the training signal drives p to 0). ``signal="heldout"`` makes the controller read the loss
passed as ``heldout_loss`` to ``step`` instead (e.g. a small validation batch evaluated without
the regulariser); ``signal="train"`` is the paper's (only) signal.
"""
from __future__ import annotations

from typing import Callable

import torch

from zoopt.hdet.controller import ZeroOrderController
from zoopt.hdet.permutation import PermutationStream, spread_multipliers

SIGNALS = ("train", "heldout")


class ExploredScalar:
    """One scalar hyperparameter: ``apply(value)`` writes a replica's value into the model/optimizer.

    ``lower``/``upper`` clamp the base (e.g. dropout p in [0, 1)); ``auto=False`` keeps the base
    fixed (spread and averaging only); ``temperature``/``meta_lr``/``momentum`` as for the LR.
    """

    def __init__(self, name: str, base: float, apply: Callable[[float], None], spread: float = 0.1,
                 signal: str = "train", auto: bool = True, temperature: float = 0.1, meta_lr: float = 0.5,
                 momentum: float = 0.9, lower: float | None = None, upper: float | None = None):
        if not callable(apply):
            raise TypeError(f"apply for {name!r} must be callable(value)")
        if signal not in SIGNALS:
            raise ValueError(f"signal for {name!r} must be one of {SIGNALS}, got {signal!r}")
        self.name = name
        self.base = float(base)
        self.apply = apply
        self.spread = float(spread)
        self.signal = signal
        self.auto = bool(auto)
        self.controller_args = dict(temperature=temperature, meta_lr=meta_lr, momentum=momentum,
                                    lower=lower, upper=upper)
        self.bind(1, 0)

    def bind(self, n_replicas: int, perm_seed: int) -> None:
        """Size the spread and permutation stream for ``n_replicas`` (called by the scheduler)."""
        self.rho = spread_multipliers(n_replicas, self.spread)
        self.stream = PermutationStream(n_replicas, perm_seed)
        self.perm = torch.arange(n_replicas)
        self.controller = ZeroOrderController(1, **self.controller_args)

    def value_for(self, replica: int) -> float:
        return self.base * float(self.rho[int(self.perm[replica])])

    def values(self) -> torch.Tensor:
        """``[N, 1]`` values of all replicas (float64)."""
        return (self.base * self.rho[self.perm]).unsqueeze(1)

    def update(self, losses: torch.Tensor) -> None:
        """Controller step from the replicas' window-mean losses, then a fresh permutation."""
        if not self.auto:
            return
        self.base = float(self.controller.update(losses, self.values())[0])
        self.perm = self.stream.draw(1)[0]

    def state_dict(self) -> dict:
        return {"base": self.base, "perm": self.perm.clone(), "stream": self.stream.state_dict(),
                "controller": self.controller.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.base = state["base"]
        self.perm = state["perm"].clone()
        self.stream.load_state_dict(state["stream"])
        self.controller.load_state_dict(state["controller"])


def weight_decay(optimizer: torch.optim.Optimizer, base: float, groups=None, **kwargs) -> ExploredScalar:
    """Explore ``weight_decay`` of the given param groups (all by default)."""
    idx = range(len(optimizer.param_groups)) if groups is None else groups

    def apply(value):
        for i in idx:
            optimizer.param_groups[i]["weight_decay"] = value
    return ExploredScalar("weight_decay", base, apply, **kwargs)


def dropout(model: torch.nn.Module, base: float, **kwargs) -> ExploredScalar:
    """Explore the ``p`` of every ``nn.Dropout*`` module in ``model`` (clamped to [0, 0.95])."""
    mods = [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    if not mods:
        raise ValueError("dropout: the model has no nn.Dropout modules")

    def apply(value):
        for m in mods:
            m.p = value
    kwargs.setdefault("lower", 0.0)
    kwargs.setdefault("upper", 0.95)
    return ExploredScalar("dropout", base, apply, **kwargs)


def label_smoothing(loss_module: torch.nn.CrossEntropyLoss, base: float, **kwargs) -> ExploredScalar:
    """Explore ``label_smoothing`` of a ``nn.CrossEntropyLoss`` (clamped to [0, 1])."""
    if not hasattr(loss_module, "label_smoothing"):
        raise TypeError("label_smoothing: expected an nn.CrossEntropyLoss")

    def apply(value):
        loss_module.label_smoothing = value
    kwargs.setdefault("lower", 0.0)
    kwargs.setdefault("upper", 1.0)
    return ExploredScalar("label_smoothing", base, apply, **kwargs)


def module_attribute(module: torch.nn.Module, attribute: str, base: float, name=None, **kwargs) -> ExploredScalar:
    """Explore any float attribute, e.g. an attention temperature ``attn.temperature``."""
    if not hasattr(module, attribute):
        raise ValueError(f"module has no attribute {attribute!r}")

    def apply(value):
        setattr(module, attribute, value)
    return ExploredScalar(name or attribute, base, apply, **kwargs)
