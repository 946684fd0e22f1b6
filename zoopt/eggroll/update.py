"""EGGROLL's fitness shaping (the engine's z-score and centered ranks of :mod:`zoopt.shaping`, plus the
group-wise z-score) and gradient estimate: the one tell of ``EGGROLLES``, which ``zoopt.EGGROLL`` drives.

For a matrix with factors ``A_k, B_k`` of pair ``k`` and pair weight
``w_k = f_2k - f_2k+1`` (f the shaped fitness, lower loss = lower f)::

    G_W = sigma / sqrt(N) * sum_i f_i s_i A_i B_i^T / sqrt(r)
        = sigma / sqrt(N r) * [A_1 w_1 | ... | A_P w_P] @ [B_1 | ... | B_P]^T      (one GEMM)

and for a vector ``G_v = sigma / sqrt(N) * sum_k w_k eps_k``. The optimizer
steps against ``G`` (minimization); with SGD that is the paper's
``theta <- theta - lr * G``.
"""
from __future__ import annotations

import math

import torch

from zoopt.shaping import centered_ranks, zscore

from zoopt.kernels import lowrank_factors, normal

SHAPINGS = ("zscore", "centered_rank", "raw")


def check_shaping(fitness_shaping: str, group_size: int, popsize: int) -> tuple:
    """Validated ``(fitness_shaping, group_size)``; groups must be even and divide popsize."""
    if fitness_shaping not in SHAPINGS:
        raise ValueError(f"fitness_shaping must be one of {SHAPINGS}, got {fitness_shaping!r}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 0:
        raise ValueError(f"group_size must be an int >= 0, got {group_size!r}")
    if group_size and (group_size % 2 or popsize % group_size):
        raise ValueError(f"group_size must be even and divide popsize={popsize}, got {group_size}")
    return fitness_shaping, group_size


def shape_fitness(fitness: torch.Tensor, method: str = "zscore", group_size: int = 0, eps: float = 1e-5) -> torch.Tensor:
    """EGGROLL's shaping. ``zscore``: ``(R - mean) / sqrt(var + eps)`` (eps inside the root);
    with ``group_size = G > 0``, each group of G consecutive members subtracts its own mean and
    all divide by the global std. ``centered_rank``: ranks in [-0.5, 0.5]. ``raw``: unchanged."""
    if method not in SHAPINGS:
        raise ValueError(f"fitness_shaping must be one of {SHAPINGS}, got {method!r}")
    f = fitness.to(torch.float64)
    if method == "raw":
        return f.to(torch.float32)
    if method == "centered_rank":
        return centered_ranks(f).to(torch.float32)
    if not group_size:
        return zscore(f, eps).to(torch.float32)
    if f.numel() % group_size:
        raise ValueError(f"group_size {group_size} must divide the population size {f.numel()}")
    groups = f.view(-1, group_size)   # each group's own mean, the global std (eps inside the root)
    return ((groups - groups.mean(1, keepdim=True)).reshape(-1) / torch.sqrt(f.var(unbiased=False) + eps)).to(
        torch.float32)


def pair_weights(shaped: torch.Tensor) -> torch.Tensor:
    """``w_k = f_2k - f_2k+1``: antithetic pairs share one noise draw."""
    return shaped[0::2] - shaped[1::2]


def lowrank_gradient(seed: int, tensor_id: int, epoch: int, weights: torch.Tensor, m: int, n: int, rank: int,
                     sigma: float, popsize: int, chunk: int = 256, device=None) -> torch.Tensor:
    """``G_W [m, n]`` from pair weights ``[P]`` (pairs 0..P-1), noise regenerated ``chunk`` pairs at a time."""
    grad = torch.zeros(m, n, device=device)
    for start in range(0, weights.numel(), chunk):
        w = weights[start:start + chunk].to(device=device, dtype=torch.float32)
        A, B = lowrank_factors(seed, tensor_id, epoch, torch.arange(start, start + w.numel()), m, n, rank,
                               device=device)
        P = w.numel()
        aw = (A * w[:, None, None]).permute(1, 0, 2).reshape(m, P * rank)
        grad.addmm_(aw, B.permute(0, 2, 1).reshape(P * rank, n))
    return grad * (sigma / math.sqrt(popsize * rank))


def vector_gradient(seed: int, tensor_id: int, epoch: int, weights: torch.Tensor, numel: int, sigma: float,
                    popsize: int, chunk: int = 256, device=None) -> torch.Tensor:
    """``G_v [numel]`` from pair weights ``[P]``."""
    grad = torch.zeros(numel, device=device)
    for start in range(0, weights.numel(), chunk):
        w = weights[start:start + chunk].to(device=device, dtype=torch.float32)
        eps = normal(seed, tensor_id, epoch, torch.arange(start, start + w.numel()), numel, device=device)
        grad.addmv_(eps.t(), w)
    return grad * (sigma / math.sqrt(popsize))
