"""Warm noisy initialisation (paper Eq. 9): every rank starts from the checkpoint plus its own noise.

θ_r = θ̄_0 + ε_r. The paper draws ε_r ~ N(0, ν²‖θ̄_0‖²/d) with the norm and size d of the whole
model; the authors' README draws it per tensor, std = ν·‖p‖/√numel(p) = ν·RMS(p), which keeps
small tensors (norm gains, biases) from being swamped by the scale of the large ones. We use the
per-tensor form (a tensor of zeros stays zero). ν = 0.01 in the paper.

Each rank draws from its own CPU generator seeded by (seed, rank), so the streams differ between
ranks, do not touch the global RNG, and give the same numbers on any device (the distributed
scheduler and the single-process simulation draw identical ε_r).
"""
from __future__ import annotations

import torch

_RANK_STRIDE = 1_000_003          # a prime: (seed, rank) pairs map to distinct generator seeds


def warm_noise(params, nu: float, rank: int, seed: int = 0) -> list[torch.Tensor]:
    """ε_r for ``params`` (one tensor per parameter, same shape/dtype/device), std ν·RMS(p)."""
    if not nu >= 0:
        raise ValueError(f"init_noise ν must be >= 0, got {nu!r}")
    if not isinstance(rank, int) or rank < 0:
        raise ValueError(f"rank must be a non-negative integer, got {rank!r}")
    if not isinstance(seed, int):
        raise TypeError(f"init seed must be an int, got {type(seed).__name__}")
    g = torch.Generator(device="cpu")
    g.manual_seed((seed * _RANK_STRIDE + rank) % (2 ** 63))
    out = []
    for p in params:
        data = p.detach()
        rms = data.double().pow(2).mean().sqrt() if data.numel() else torch.zeros((), dtype=torch.float64)
        z = torch.randn(data.shape, generator=g, dtype=torch.float64)
        out.append((float(nu) * rms.cpu() * z).to(device=data.device, dtype=data.dtype))
    return out


@torch.no_grad()
def perturb_(params, nu: float, rank: int, seed: int = 0) -> None:
    """θ ← θ + ε_rank in place (a no-op for ν = 0)."""
    params = list(params)
    if nu == 0:
        return
    for p, eps in zip(params, warm_noise(params, nu, rank, seed)):
        p.add_(eps)
