"""Transport plans over a cost matrix ``[P, V]`` and the barycentric step.

* :func:`softmax_plan`: one-sided entropic OT (only the row marginal is
  enforced), ``W_iv = softmax_v(-C_iv / (scale * eps))`` row by row. PolyStep's
  default solver.
* :func:`sinkhorn_plan`: two-sided entropic OT in the log domain with uniform
  marginals ``a = 1/P``, ``b = 1/V``, warm-started from the previous duals.
* :func:`barycentric_step`: each particle moves to the weighted barycenter of
  its own rotated polytope, ``delta_i = alpha R_i (sum_v w_iv u_v)`` with the
  row weights normalized to sum 1, so ``|delta_i| <= alpha``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch

SCALE_COSTS = ("mean", "max_cost")
NONFINITE_FLOOR = 1e6


def sanitize_costs(costs: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Promote to float32 (at least) and replace non-finite entries by ``max(2 max|finite| + 1, 1e6)``.

    Returns ``(clean, number replaced)``; an all-non-finite matrix becomes all ``1e6``.
    """
    costs = costs.to(torch.float64 if costs.dtype == torch.float64 else torch.float32)
    bad = ~torch.isfinite(costs)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return costs, 0
    finite = costs[~bad]
    worst = max(2.0 * float(finite.abs().max()) + 1.0, NONFINITE_FLOOR) if finite.numel() else NONFINITE_FLOOR
    return torch.where(bad, torch.full_like(costs, worst), costs), n_bad


def scale_costs(costs: torch.Tensor, scale_cost: Union[float, str] = 1.0) -> torch.Tensor:
    """``C / scale``: a positive number, ``"mean"`` (mean |C|) or ``"max_cost"`` (max |C|)."""
    if isinstance(scale_cost, str):
        if scale_cost not in SCALE_COSTS:
            raise ValueError(f"scale_cost must be a number > 0 or one of {SCALE_COSTS}, got {scale_cost!r}")
        ref = costs.abs().mean() if scale_cost == "mean" else costs.abs().max()
        return costs / ref.clamp_min(1e-12)
    if isinstance(scale_cost, bool) or not isinstance(scale_cost, (int, float)) or not scale_cost > 0 \
            or not math.isfinite(scale_cost):
        raise ValueError(f"scale_cost must be a number > 0 or one of {SCALE_COSTS}, got {scale_cost!r}")
    return costs if scale_cost == 1 else costs / scale_cost


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return float(eps)


def _check_costs(costs: torch.Tensor) -> None:
    if not isinstance(costs, torch.Tensor) or costs.dim() != 2:
        raise ValueError(f"costs must be a 2-D tensor [P, V], got {getattr(costs, 'shape', type(costs))}")


def softmax_plan(costs: torch.Tensor, eps: float, scale_cost: Union[float, str] = 1.0) -> torch.Tensor:
    """Row-stochastic weights ``[P, V]``: each row is ``softmax(-C_i / eps)`` (after ``scale_cost``).

    This is the plan of entropic OT with only the row marginal enforced; the
    ``1/P`` row mass is left out because the barycentric step normalizes rows.
    """
    _check_costs(costs)
    eps = _check_eps(eps)
    return torch.softmax(-scale_costs(costs, scale_cost) / eps, dim=1)


@dataclass
class SinkhornResult:
    plan: torch.Tensor      # [P, V], sums to 1 overall; rows ~ a, columns ~ b
    f: torch.Tensor         # row duals [P]
    g: torch.Tensor         # column duals [V]
    iterations: int
    converged: bool
    error: float            # L1 row-marginal violation at exit


def sinkhorn_plan(costs: torch.Tensor, eps: float, *, f_init: Optional[torch.Tensor] = None,
                  g_init: Optional[torch.Tensor] = None, scale_cost: Union[float, str] = 1.0,
                  threshold: float = 1e-6, check_every: int = 10, max_iter: int = 2000) -> SinkhornResult:
    """Log-domain Sinkhorn with uniform marginals ``a = 1/P`` and ``b = 1/V``.

    Alternates ``f = eps log a - eps LSE_v((g_v - C_iv)/eps)`` and
    ``g = eps log b - eps LSE_i((f_i - C_iv)/eps)``; the plan is
    ``exp((f_i + g_v - C_iv) / eps)``. Column marginals are exact after each
    ``g`` update; every ``check_every`` iterations the L1 row error is compared
    with ``threshold``. ``f_init`` / ``g_init`` warm-start the duals (ignored
    when their shapes don't match).
    """
    _check_costs(costs)
    eps = _check_eps(eps)
    if max_iter < 1 or check_every < 1:
        raise ValueError(f"max_iter and check_every must be >= 1, got {max_iter} and {check_every}")
    c = scale_costs(costs, scale_cost)
    n_rows, n_cols = c.shape
    log_a = -math.log(n_rows)
    log_b = -math.log(n_cols)
    f = f_init.to(c) if f_init is not None and f_init.shape == (n_rows,) else torch.zeros(n_rows, dtype=c.dtype, device=c.device)
    g = g_init.to(c) if g_init is not None and g_init.shape == (n_cols,) else torch.zeros(n_cols, dtype=c.dtype, device=c.device)
    if not (torch.isfinite(f).all() and torch.isfinite(g).all()):
        f, g = torch.zeros_like(f), torch.zeros_like(g)
    err, it, converged = math.inf, 0, False
    while it < max_iter:
        it += 1
        f = eps * log_a - eps * torch.logsumexp((g[None, :] - c) / eps, dim=1)
        g = eps * log_b - eps * torch.logsumexp((f[:, None] - c) / eps, dim=0)
        if it % check_every == 0 or it == max_iter:
            log_plan = (f[:, None] + g[None, :] - c) / eps
            err = float((torch.exp(torch.logsumexp(log_plan, dim=1)) - 1.0 / n_rows).abs().sum())
            if err < threshold:
                converged = True
                break
    plan = torch.exp((f[:, None] + g[None, :] - c) / eps)
    return SinkhornResult(plan=plan, f=f, g=g, iterations=it, converged=converged, error=err)


def normalize_rows(weights: torch.Tensor) -> torch.Tensor:
    """Divide each row by its realized sum (rows that sum to 0 become uniform)."""
    sums = weights.sum(dim=1, keepdim=True)
    uniform = torch.full_like(weights, 1.0 / weights.shape[1])
    return torch.where(sums > 0, weights / sums.clamp_min(torch.finfo(weights.dtype).tiny), uniform)


def template_step(weights: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """``sum_v w_iv u_v`` in template coordinates ``[P, d]`` (rows of ``weights`` normalized first)."""
    return normalize_rows(weights) @ template.to(weights.dtype)


def barycentric_step(weights: torch.Tensor, template: torch.Tensor, rotations: torch.Tensor, radius) -> torch.Tensor:
    """Displacement of every particle to its barycenter: ``[P, d]``.

    ``delta_i = alpha R_i (sum_v w_iv u_v)`` with ``weights [P, V]`` normalized
    per row, ``template [V, d]``, ``rotations [P, d, d]`` and ``radius`` (alpha)
    a number or a per-particle tensor ``[P]``. A convex combination of unit
    vertices has norm <= 1, so ``|delta_i| <= alpha``.
    """
    local = template_step(weights, template).to(rotations.dtype)  # [P, d]
    delta = torch.einsum("pij,pj->pi", rotations, local)
    radius = torch.as_tensor(radius, dtype=delta.dtype, device=delta.device)
    return delta * (radius[:, None] if radius.dim() == 1 else radius)


__all__ = ["sanitize_costs", "scale_costs", "softmax_plan", "sinkhorn_plan", "SinkhornResult", "normalize_rows",
           "template_step", "barycentric_step", "SCALE_COSTS"]
