"""Step and probe radii and the temperature for ``zoopt.PolyStep(model)``, chosen from the model's size.

Two scales decide whether a PolyStep step helps: the size of a move
against the size of the weights, and the cost differences a step sees
against the softmax temperature epsilon.

* **Radii from the weights.** Each subspace coordinate moves its layer's
  weights along a unit vector (the map's columns are orthonormal), so a
  block move of ``r`` changes the layer by a weight-space distance ``r``
  spread over all of its entries. The reference's flat ``alpha = 0.1``,
  ``rho = 0.2`` are 3% of a 64x32 layer's weight norm (about 3) and far
  less of a large one. Here both radii are fixed fractions of ``scale``, the
  RMS Frobenius norm of the projected weight tensors (each weighted by its
  number of coordinates): ``alpha = STEP * scale``, ``rho = PROBE * scale``,
  used as given (not multiplied by epsilon). A larger model has larger
  layers and so larger radii in ``z``, with the same relative move.
* **Epsilon from the cost spread.** The loss differences between a
  particle's probes differ by orders of magnitude between networks and
  during a run: on the staircase digits net the median particle's range is
  ~0.013 at the start, on the zoo SNN on digits (spike counts as logits)
  it is ~0.2 with outliers up to 8. A fixed epsilon is either far above the
  spread (the barycenter stays at the center: issue 17's 0.42 test after
  90 s on the staircase net) or far below it on some particles (the softmax
  turns into argmin, every such particle jumps the whole step radius, and
  with ``alpha = 2.5 scale`` one step put ``|z|`` at twice the weight norm
  and the SNN at a constant prediction, 7.8% test). With ``SPREAD`` the
  facade divides each evaluated step's costs by the median over particles
  of (max - min of the particle's costs) before the softmax, so
  ``EPSILON = 1`` means "the typical particle's probes differ by one
  temperature": every step moves the typical particle a similar fraction
  of alpha whatever the loss's units, and alpha alone sets the step length.

Measured with ``scripts/bench_polystep_defaults.py`` (one thread, CPU seconds;
see the report of issue 17 for the figures): with ``STEP = 0.05`` and
``PROBE = 0.1`` the staircase net passes 85% test after ~10 CPU s and the SNN
learns steadily; step radii of 0.15-0.5 scale are faster on the staircase but
stall the SNN (``|z|`` grows past the weight norm while the loss stays flat).
"""
from __future__ import annotations

import math

import torch

from .schedules import Constant

STEP = 0.05     # step radius alpha, in units of the projected layers' weight norm
PROBE = 0.1     # probe radius rho (probes at rho / 2), same units
EPSILON = 1.0   # softmax temperature, in units of the step's median per-particle cost range (SPREAD)
SPREAD = True   # divide each step's costs by that range (zoopt.PolyStep's cost_spread)


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
    """``epsilon``, ``step_radius``, ``probe_radius`` and ``cost_spread`` for a model in a subspace."""
    scale = weight_scale(subspace, theta)
    return {"epsilon": EPSILON, "step_radius": Constant(STEP * scale), "probe_radius": Constant(PROBE * scale),
            "cost_spread": SPREAD}


def median_spread(costs: torch.Tensor, num_particles: int) -> float:
    """Median over particles of (max - min) of each particle's costs (member order ``(i, v, k)``), over the
    particles whose costs are all finite; 0.0 when there is none."""
    c = torch.as_tensor(costs).reshape(num_particles, -1).double()
    c = c[torch.isfinite(c).all(dim=1)]
    if not c.numel():
        return 0.0
    spread = float((c.max(dim=1).values - c.min(dim=1).values).median())
    return spread if math.isfinite(spread) else 0.0


def spread_scaled(costs: torch.Tensor, num_particles: int) -> tuple[torch.Tensor, float]:
    """``(costs / median_spread, median_spread)``; the costs unchanged where the spread is 0 (a flat step:
    every weight is equal anyway)."""
    spread = median_spread(costs, num_particles)
    return (costs / spread if spread > 0 else costs), spread


FULL_SPACE = {"epsilon": 0.1, "step_radius": 1.0, "probe_radius": 2.0,  # the reference's (radii times epsilon)
              "cost_spread": False}

__all__ = ["weight_scale", "subspace_defaults", "median_spread", "spread_scaled", "FULL_SPACE", "STEP", "PROBE",
           "EPSILON", "SPREAD"]
