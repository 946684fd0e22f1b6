"""The zero-order hypergradient controller (paper Eqs. 4–8), vectorised over G explored values.

At a sync, with per-replica mean window losses L_r and the values E[r, g] each replica used:

    w = softmax((mean(L) − L) / σ)          lower loss → larger weight
    Δ = Σ_r w_r E[r] − mean_r E[r]           > 0 when the high-value replicas did better
    v ← β v + (1 − β) Δ
    base ← (1 − γ) mean_r E[r] + λ v

A replica whose loss is not finite gets weight 0 (it diverged: evidence against its value).
"""
from __future__ import annotations

import math

import torch


def decay_from_floor(start, floor, num_syncs: int) -> list[float]:
    """Per-sync decay γ = 1 − (floor/start)^(1/K) that takes ``start`` to ``floor`` in K syncs.

    Replaces the paper's Eq. 6, whose sign makes the LR grow with OneCycle's default factors
    (research note A.6-4). Raises ValueError unless 0 ≤ γ < 1, i.e. 0 < floor ≤ start.
    """
    starts, floors = list(start), list(floor)
    if len(starts) != len(floors):
        raise ValueError(f"lr_floor: expected {len(starts)} values (one per param group), got {len(floors)}")
    out = []
    for s, f in zip(starts, floors):
        if not (f > 0 and f <= s):
            raise ValueError(f"lr_floor must satisfy 0 < floor <= the base value when auto-LR starts ({s:.3g}), "
                             f"got {f!r}: the decay γ would leave [0, 1)")
        gamma = 1.0 - (f / s) ** (1.0 / num_syncs) if num_syncs > 0 else 0.0
        if not 0.0 <= gamma < 1.0:
            raise ValueError(f"derived decay γ={gamma} is outside [0, 1)")
        out.append(gamma)
    return out


class ZeroOrderController:
    """Momentum-smoothed cross-replica hypergradient step on G base values (one per group).

    ``temperature`` σ sets the softmax scale and must match the size of the *differences*
    between replicas' window-mean losses; ``meta_lr`` λ is the step; ``momentum`` β smooths Δ;
    ``decay`` γ (scalar or one per value) shrinks the base each sync; ``lower``/``upper`` clamp it.
    """

    def __init__(self, n_values: int, temperature=0.1, meta_lr=0.5, momentum=0.9, decay=0.0,
                 lower=None, upper=None):
        if not temperature > 0:
            raise ValueError(f"temperature σ must be > 0, got {temperature!r}")
        if not meta_lr >= 0:
            raise ValueError(f"meta step λ must be >= 0, got {meta_lr!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum β must be in [0, 1), got {momentum!r}")
        decay = [float(decay)] * n_values if not isinstance(decay, (list, tuple)) else [float(d) for d in decay]
        if len(decay) != n_values or any(not 0.0 <= d < 1.0 for d in decay):
            raise ValueError(f"decay γ must be in [0, 1) (one per value), got {decay!r}")
        self.temperature = float(temperature)
        self.meta_lr = float(meta_lr)
        self.momentum = float(momentum)
        self.decay = torch.tensor(decay, dtype=torch.float64)
        self.lower, self.upper = lower, upper
        self.velocity = torch.zeros(n_values, dtype=torch.float64)
        self.last = {}

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        """Softmax weights over replicas; non-finite losses get weight 0 (uniform if all are)."""
        losses = losses.to(torch.float64)
        finite = torch.isfinite(losses)
        if not finite.any():
            return torch.full_like(losses, 1.0 / len(losses))
        mean = losses[finite].mean()
        scores = torch.where(finite, (mean - losses) / self.temperature, torch.full_like(losses, -math.inf))
        return torch.softmax(scores, dim=0)

    def update(self, losses: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """New base values ``[G]`` from losses ``[N]`` and the values used ``[N, G]``."""
        values = values.to(torch.float64)
        if values.dim() != 2 or values.shape[0] != losses.shape[0]:
            raise ValueError(f"values must be [N, G] with N={losses.shape[0]}, got {tuple(values.shape)}")
        w = self.weights(losses)
        mean_value = values.mean(0)
        delta = (w[:, None] * values).sum(0) - mean_value
        self.velocity = self.momentum * self.velocity + (1 - self.momentum) * delta
        base = (1 - self.decay) * mean_value + self.meta_lr * self.velocity
        if self.lower is not None or self.upper is not None:
            lo = None if self.lower is None else torch.as_tensor(self.lower, dtype=torch.float64)
            hi = None if self.upper is None else torch.as_tensor(self.upper, dtype=torch.float64)
            base = base.clamp(min=lo, max=hi)
        self.last = {"weights": w, "delta": delta, "velocity": self.velocity.clone(), "base": base.clone()}
        return base

    def state_dict(self) -> dict:
        return {"velocity": self.velocity.clone(), "decay": self.decay.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.velocity = state["velocity"].clone().to(torch.float64)
        self.decay = state["decay"].clone().to(torch.float64)
