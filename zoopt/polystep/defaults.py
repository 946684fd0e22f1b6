"""Step and probe radii for ``zoopt.PolyStep(model)`` chosen from the model's weights.

Why the reference's flat defaults (``epsilon=0.1``, radii ``1.0`` and ``2.0``
times epsilon, so ``alpha = 0.1`` and ``rho = 0.2``) barely move a network in
a subspace: each subspace coordinate moves its layer's weights along a unit
vector (the map's columns are orthonormal), so a block step of ``alpha``
changes the layer by a weight-space distance of at most ``alpha``, spread
over all of its entries. A 64x32 layer initialized by PyTorch has a weight
norm of about 3; a step of 0.1 is 3% of it, and with ``epsilon = 0.1`` the
softmax sees cost gaps far below the temperature at such probes, so the
barycenter stays near the center (issue 17: 0.42 test after 90 s on the
staircase digits net, where the official full-space default reaches 0.73).
In full space one coordinate is one weight, and the same ``0.1`` is already
larger than a typical entry — the reason the same numbers work there.

The rule: radii proportional to the weight norm of the projected layers
(``scale``: their RMS norm, each layer weighted by its number of
coordinates), ``alpha = STEP * scale`` and ``rho = PROBE * scale`` used as
given (not multiplied by epsilon), and ``epsilon = 1`` on the raw loss, so a
probe that changes the cross-entropy by ~1 already gets a clear weight. A
larger model has larger layers, a larger weight norm and so larger radii in
``z``, with the same relative move per step. Measured on the staircase
digits net (scripts/bench_polystep_defaults.py): 0.95 test after ~30 CPU s.
"""
from __future__ import annotations

import math

import torch

from .schedules import Constant

STEP = 2.5      # step radius alpha, in units of the projected layers' weight norm
PROBE = 0.6     # probe radius rho (probes at rho / 2), same units
EPSILON = 1.0   # softmax temperature on the raw loss


def weight_scale(subspace, theta: torch.Tensor) -> float:
    """RMS Frobenius norm of the projected weight tensors, weighted by their coordinates (1.0 when none)."""
    num = den = 0.0
    for layer in subspace.layers:
        if layer.kind == "identity":
            continue
        w = theta[layer.param_start:layer.param_start + layer.numel]
        num += layer.n_coords * float(w.double().pow(2).sum())
        den += layer.n_coords
    scale = math.sqrt(num / den) if den else 0.0
    return scale if scale > 0 and math.isfinite(scale) else 1.0


def subspace_defaults(subspace, theta: torch.Tensor) -> dict:
    """``epsilon``, ``step_radius`` and ``probe_radius`` for a model in a subspace."""
    scale = weight_scale(subspace, theta)
    return {"epsilon": EPSILON, "step_radius": Constant(STEP * scale), "probe_radius": Constant(PROBE * scale)}


FULL_SPACE = {"epsilon": 0.1, "step_radius": 1.0, "probe_radius": 2.0}  # the reference's (radii times epsilon)

__all__ = ["weight_scale", "subspace_defaults", "FULL_SPACE", "STEP", "PROBE", "EPSILON"]
