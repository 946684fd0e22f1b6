"""Building blocks of the non-differentiable model zoo (polystep.md §4.1).

Every block has a hard forward (what PolyStep trains: zero or no gradient
through the discrete operation) and a smooth surrogate forward, switched by
its ``smooth`` attribute, with the same parameters, so an Adam baseline can
train the "smooth twin". All forwards are vmap-safe (no data-dependent Python
control flow, no in-place updates of inputs): both PolyStep implementations
evaluate candidates through ``torch.vmap(functional_call(...))``.

Constants are Python floats, never buffers: the official package lays out a
model from its ``state_dict()``, so a buffer would become a "parameter" there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INT8_SCALE = 0.01


def quantize_int8(w: torch.Tensor, scale: float = INT8_SCALE) -> torch.Tensor:
    """Fake INT8 quantization ``clamp(round(w / scale), -128, 127) * scale``."""
    return torch.clamp(torch.round(w / scale), -128, 127) * scale


def staircase(x: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """``floor(levels * sigmoid(x)) / levels``: a staircase in [0, 1] with zero gradient."""
    return torch.floor(torch.sigmoid(x) * levels) / levels


def lif_step(mem: torch.Tensor, current: torch.Tensor, beta: float, threshold: float,
             smooth: bool, temperature: float):
    """One leaky integrate-and-fire step: ``mem <- beta*mem + current``, spike where
    ``mem >= threshold``, reset the spiking neurons to 0. The smooth surrogate spikes
    ``sigmoid(temperature * (mem - threshold))`` and resets softly ``mem * (1 - spike)``."""
    mem = beta * mem + current
    if smooth:
        spike = torch.sigmoid(temperature * (mem - threshold))
    else:
        spike = (mem >= threshold).to(mem.dtype)
    return spike, mem * (1.0 - spike)


class Staircase(nn.Module):
    """Staircase activation; smooth twin: plain sigmoid."""

    def __init__(self, levels: int = 5, smooth: bool = False):
        super().__init__()
        self.levels, self.smooth = int(levels), bool(smooth)

    def forward(self, x):
        return torch.sigmoid(x) if self.smooth else staircase(x, self.levels)


class Dense(nn.Linear):
    """``activation(x @ W.T + b)``: a linear layer and its activation as one stage."""

    def __init__(self, in_features: int, out_features: int, activation: nn.Module | None = None):
        super().__init__(in_features, out_features)
        self.activation = activation if activation is not None else nn.Identity()

    def forward(self, x):
        return self.activation(super().forward(x))


class QuantizedDense(Dense):
    """Linear layer whose weight and bias are INT8-quantized in the forward (scale 0.01).

    Weight initialised as ``randn * 0.1``, bias as zeros (as the paper's model).
    Smooth twin: the unquantized linear layer.
    """

    def __init__(self, in_features: int, out_features: int, activation: nn.Module | None = None,
                 scale: float = INT8_SCALE, smooth: bool = False):
        super().__init__(in_features, out_features, activation)
        self.scale, self.smooth = float(scale), bool(smooth)
        with torch.no_grad():
            self.weight.copy_(torch.randn(out_features, in_features) * 0.1)
            self.bias.zero_()

    def forward(self, x):
        if self.smooth:
            w, b = self.weight, self.bias
        else:
            w, b = quantize_int8(self.weight, self.scale), quantize_int8(self.bias, self.scale)
        return self.activation(F.linear(x, w, b))


class LIFHidden(nn.Module):
    """Hidden LIF population driven by a *static* input current for ``steps`` steps.

    Input: the current ``[B, H]`` (computed once by the stage before: W1·x is
    the same at every time step). Output: the spike train ``[B, steps, H]``
    (batch first, like every stage's input and output). No parameters.
    """

    def __init__(self, steps: int = 15, beta: float = 0.95, threshold: float = 1.0,
                 smooth: bool = False, temperature: float = 10.0):
        super().__init__()
        self.steps, self.beta, self.threshold = int(steps), float(beta), float(threshold)
        self.smooth, self.temperature = bool(smooth), float(temperature)

    def zoopt_fused_tail(self, rest):
        """``current [R, H] -> rest(self(current))`` as one compiled kernel when ``rest`` is a single hard
        :class:`LIFReadout` (the SNN after its input stage; :mod:`zoopt.kernels.fused_tails`), else None.

        The staged evaluator of :mod:`zoopt.polystep.evaluate` calls it to skip the ``[R, steps, H]``
        spike train in memory; tensors the kernel does not take (GPU, other dtypes) run this forward.
        """
        if self.smooth or len(rest) != 1 or type(rest[0]) is not LIFReadout or rest[0].smooth:
            return None
        try:
            from zoopt.kernels import fused_tails
        except ImportError:
            return None
        if not fused_tails.available():
            return None
        readout = rest[0]

        def run(current):
            if not fused_tails.supports(current, readout.weight):
                return readout(self(current))
            return fused_tails.lif_counts(current, readout.weight, readout.bias, self.steps, self.beta, self.threshold,
                                    readout.beta, readout.threshold)
        return run

    def forward(self, current):
        mem = torch.zeros_like(current)
        spikes = []
        for _ in range(self.steps):
            spike, mem = lif_step(mem, current, self.beta, self.threshold, self.smooth, self.temperature)
            spikes.append(spike)
        return torch.stack(spikes, dim=1)


class LIFReadout(nn.Linear):
    """Output LIF layer: spike train ``[B, T, H]`` -> summed output spike counts ``[B, C]``.

    The synaptic currents of all T steps come from one GEMM; only the
    membrane recursion loops over time. The counts are used directly as logits.
    """

    def __init__(self, in_features: int, out_features: int, beta: float = 0.95, threshold: float = 1.0,
                 smooth: bool = False, temperature: float = 10.0):
        super().__init__(in_features, out_features)
        self.beta, self.threshold = float(beta), float(threshold)
        self.smooth, self.temperature = bool(smooth), float(temperature)

    zoopt_affine = True  # forward = activation(F.linear(x, weight, bias)): PolyStep's linear route applies

    @property
    def activation(self):
        """The membrane dynamics after the linear map: currents ``[B, T, C]`` -> spike counts ``[B, C]``."""
        return self.counts

    def forward(self, spikes):
        return self.counts(super().forward(spikes))  # currents [B, T, C] from one GEMM

    def counts(self, currents):
        """Output spike counts ``[B, C]`` of the readout LIF neurons driven by ``currents [B, T, C]``."""
        mem = torch.zeros_like(currents[:, 0])
        total = torch.zeros_like(currents[:, 0])
        for t in range(currents.shape[1]):
            spike, mem = lif_step(mem, currents[:, t], self.beta, self.threshold, self.smooth, self.temperature)
            total = total + spike
        return total


def one_hot_argmax(scores: torch.Tensor) -> torch.Tensor:
    """One-hot of the row argmax (ties -> the first), built by comparison so it is vmap-safe."""
    idx = scores.argmax(dim=-1, keepdim=True)
    return (torch.arange(scores.shape[-1], device=scores.device) == idx).to(scores.dtype)


class ArgmaxAttention(nn.Module):
    """Hard attention over ``slots`` learned keys: each input picks the key most similar
    to it (argmax of ``h·k``) and gates the value transform: ``values(h) * sigmoid(k*)``.

    Keys initialised as ``randn * 0.5``. Smooth twin: softmax over the
    similarities and the softmax-weighted key.
    """

    def __init__(self, dim: int, slots: int = 8, smooth: bool = False):
        super().__init__()
        self.keys = nn.Parameter(torch.randn(slots, dim) * 0.5)
        self.values = nn.Linear(dim, dim)
        self.smooth = bool(smooth)

    def forward(self, h):
        sim = h @ self.keys.t()
        weights = torch.softmax(sim, dim=-1) if self.smooth else one_hot_argmax(sim)
        return self.values(h) * torch.sigmoid(weights @ self.keys)


class HardMoE(nn.Module):
    """Top-1 mixture of experts: a linear gate picks one of ``experts`` experts per input
    (argmax); each expert is ``Linear -> ReLU -> Linear``. All experts are evaluated and
    masked (vmap-safe, as the paper's model). Smooth twin: softmax-gated mixture."""

    def __init__(self, dim: int, hidden: int, experts: int = 4, smooth: bool = False):
        super().__init__()
        self.gate = nn.Linear(dim, experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim)) for _ in range(experts))
        self.smooth = bool(smooth)

    def route(self, h):
        """Mixing weights ``[B, experts]``: one-hot top-1 (hard) or softmax (smooth)."""
        logits = self.gate(h)
        return torch.softmax(logits, dim=-1) if self.smooth else one_hot_argmax(logits)

    def forward(self, h):
        outs = torch.stack([expert(h) for expert in self.experts], dim=-2)  # [B, E, dim]
        return (self.route(h).unsqueeze(-1) * outs).sum(dim=-2)
