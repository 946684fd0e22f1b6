"""The six networks of polystep.md §4.1, each written as a chain of stages.

| name      | network (inputs flattened, 784 for MNIST)                          | params (10 classes) |
|-----------|--------------------------------------------------------------------|---------------------|
| snn       | fc1 784->128, hard LIF (beta 0.95, thr 1, reset 0) x 15 steps,     | 101,770             |
|           | fc2 128->10 + LIF, output spike counts as logits                    |                     |
| int8      | fc1 784->128 ReLU, INT8-quantized 128->128 ReLU, fc2 128->10       | 118,282             |
| argmax    | fc1 784->128 ReLU, argmax attention over 8 keys, fc2 128->10       | 119,306             |
| staircase | 784->128->128->10 with floor(5·sigmoid(x))/5 after the first two   | 118,282             |
| moe       | fc1 784->128 ReLU, hard top-1 MoE (4 experts 128->128->128), 128->C | 234,382 (C=10)      |
| mlp       | fc1 784->128 ReLU, fc2 128->10 (differentiable check)              | 101,770             |

The paper's MoE classifies the 20 classes of MNIST+Fashion-MNIST (235,672
params) and its argmax model runs on Fashion-MNIST; neither data set is
available offline here, so every model runs on MNIST (10 classes).
Parameter names and shapes match the paper's models (``fc1.weight``,
``quant.weight``, ``attn.keys``, ``moe.experts.0.0.weight``, ...), so the
official ``polystep`` package and ``zoopt.PolyStep`` optimize the same networks.

Smooth twins (``smooth=True``; same parameters, surrogate forward, for the
Adam baseline): sigmoid(10·(mem - thr)) spikes with soft reset, the
unquantized layer, softmax attention, plain sigmoid, softmax gating.

Stage protocol (shared with ``zoopt.polystep``)
------------------------------------------------
``model.stages()`` returns ``[(name, module), ...]`` in forward order with
``module is getattr(model, name)``; ``model(x)`` equals applying the modules
one after another to ``x.flatten(1)``. Each trainable parameter belongs to
exactly one stage: model parameter ``f"{name}.{local}"`` is the stage's
parameter ``local``, so ``functional_call(module, {local: ...}, (h,))`` runs
one stage with candidate weights. A candidate that perturbs only parameters
of stage k can reuse the output of stages ``0..k-1`` computed once with the
current weights (PolyStep's staged evaluator, :mod:`zoopt.polystep.evaluate`).
Stages may have no parameters (the SNN's hidden LIF population) and may pass non-2-D
tensors (the SNN passes its spike train ``[B, T, 128]``), but every stage's
input and output has the batch as its leading dimension, so candidates can be
stacked into the batch. The SNN's first
stage is the input current W1·x + b1, computed once, not at every time step.
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import ArgmaxAttention, Dense, HardMoE, LIFHidden, LIFReadout, QuantizedDense, Staircase


class StagedNet(nn.Module):
    """Base class: ``forward`` is the composition of ``stages()`` on the flattened input."""

    stage_names: tuple = ()

    def __init__(self, smooth: bool = False):
        super().__init__()
        self._smooth = bool(smooth)

    def stages(self) -> list:
        """``[(name, module), ...]`` in forward order (see the module docstring)."""
        return [(name, getattr(self, name)) for name in self.stage_names]

    def forward(self, x):
        h = x.flatten(1)
        for _, stage in self.stages():
            h = stage(h)
        return h

    @property
    def smooth(self) -> bool:
        """Whether the surrogate (smooth twin) forward is active."""
        return self._smooth

    def set_smooth(self, smooth: bool) -> "StagedNet":
        """Switch every block between its hard forward and its smooth surrogate (in place)."""
        self._smooth = bool(smooth)
        for m in self.modules():
            if m is not self and hasattr(m, "smooth"):
                m.smooth = bool(smooth)
        return self


class SpikingNet(StagedNet):
    """Hard-LIF SNN; stages: ``fc1`` (input current, once) -> ``lif1`` (spike train) -> ``fc2`` (LIF counts)."""

    stage_names = ("fc1", "lif1", "fc2")

    def __init__(self, in_features=784, hidden=128, num_classes=10, steps=15, beta=0.95, threshold=1.0,
                 smooth=False, temperature=10.0):
        super().__init__(smooth)
        self.fc1 = nn.Linear(in_features, hidden)
        self.lif1 = LIFHidden(steps, beta, threshold, smooth, temperature)
        self.fc2 = LIFReadout(hidden, num_classes, beta, threshold, smooth, temperature)


class QuantizedMLP(StagedNet):
    """INT8 MLP; stages ``fc1`` (ReLU) -> ``quant`` (INT8, ReLU) -> ``fc2``."""

    stage_names = ("fc1", "quant", "fc2")

    def __init__(self, in_features=784, hidden=128, num_classes=10, smooth=False):
        super().__init__(smooth)
        self.fc1 = Dense(in_features, hidden, nn.ReLU())
        self.quant = QuantizedDense(hidden, hidden, nn.ReLU(), smooth=smooth)
        self.fc2 = nn.Linear(hidden, num_classes)


class ArgmaxAttentionNet(StagedNet):
    """Argmax attention; stages ``fc1`` (ReLU) -> ``attn`` (8 keys) -> ``fc2``."""

    stage_names = ("fc1", "attn", "fc2")

    def __init__(self, in_features=784, hidden=128, num_classes=10, slots=8, smooth=False):
        super().__init__(smooth)
        self.fc1 = Dense(in_features, hidden, nn.ReLU())
        self.attn = ArgmaxAttention(hidden, slots, smooth)
        self.fc2 = nn.Linear(hidden, num_classes)


class StaircaseNet(StagedNet):
    """Staircase MLP; stages ``fc1`` (staircase) -> ``fc2`` (staircase) -> ``fc3``."""

    stage_names = ("fc1", "fc2", "fc3")

    def __init__(self, in_features=784, hidden=128, num_classes=10, levels=5, smooth=False):
        super().__init__(smooth)
        self.fc1 = Dense(in_features, hidden, Staircase(levels, smooth))
        self.fc2 = Dense(hidden, hidden, Staircase(levels, smooth))
        self.fc3 = nn.Linear(hidden, num_classes)


class HardMoENet(StagedNet):
    """Hard top-1 MoE; stages ``fc1`` (ReLU) -> ``moe`` (4 experts) -> ``fc_out``."""

    stage_names = ("fc1", "moe", "fc_out")

    def __init__(self, in_features=784, hidden=128, num_classes=10, experts=4, smooth=False):
        super().__init__(smooth)
        self.fc1 = Dense(in_features, hidden, nn.ReLU())
        self.moe = HardMoE(hidden, hidden, experts, smooth)
        self.fc_out = nn.Linear(hidden, num_classes)


class MLP(StagedNet):
    """Plain MLP (the differentiable check); stages ``fc1`` (ReLU) -> ``fc2``. Its twin is itself."""

    stage_names = ("fc1", "fc2")

    def __init__(self, in_features=784, hidden=128, num_classes=10, smooth=False):
        super().__init__(smooth)
        self.fc1 = Dense(in_features, hidden, nn.ReLU())
        self.fc2 = nn.Linear(hidden, num_classes)


MODELS = {"snn": SpikingNet, "int8": QuantizedMLP, "argmax": ArgmaxAttentionNet,
          "staircase": StaircaseNet, "moe": HardMoENet, "mlp": MLP}


def make_model(name: str, *, smooth: bool = False, seed: int = 0, in_features: int = 784,
               num_classes: int = 10, **kwargs) -> StagedNet:
    """Build zoo model ``name`` (one of ``MODELS``) with initial weights a pure function of ``seed``.

    The global torch RNG is left untouched. ``kwargs`` go to the model class
    (e.g. ``steps`` for the SNN, ``hidden``).
    """
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    for arg, value in (("in_features", in_features), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be an int >= 1, got {value!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[name](in_features=in_features, num_classes=num_classes, smooth=smooth, **kwargs)


def smooth_twin(model: StagedNet) -> StagedNet:
    """A copy of ``model`` with the same parameter values and the smooth surrogate forward."""
    import copy

    return copy.deepcopy(model).set_smooth(True)
