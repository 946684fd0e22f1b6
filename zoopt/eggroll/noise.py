"""EGGROLL's keyed perturbation noise: low-rank factors for matrices, full-rank noise for vectors.

Member ``i`` uses pair ``k = i // 2`` and sign ``s = +1`` for even ``i``, ``-1``
for odd ``i``. A weight matrix ``W`` (m x n, forward ``x W^T``) with tensor id
``t`` gets, for pair ``k`` at noise epoch ``e = generation // noise_reuse``::

    z = normal(seed, t, e, k, (n + m) * r).view(n + m, r)
    B = z[:n]   (n x r, input side)      A = z[n:]   (m x r, output side)

and the member's weight is ``W + s * sigma * A B^T / sqrt(r)``. Vectors get
``s * sigma * normal(seed, t, e, k, numel)``. Nothing is stored: any worker
regenerates any pair's factors from the key.
"""
from __future__ import annotations

import zlib

import torch

from zoopt.kernels import normal

MODES = ("lowrank", "full", "frozen")


def tensor_id_for(name: str) -> int:
    """A stable 31-bit id from a parameter's name (same-shaped layers get independent noise)."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def noise_epoch(generation: int, noise_reuse: int) -> int:
    """The noise generation: ``generation // noise_reuse``; 0 forever when ``noise_reuse == 0``."""
    return 0 if noise_reuse == 0 else generation // noise_reuse


def pairs_and_signs(members: torch.Tensor):
    """Pair index ``i // 2`` and antithetic sign (+1 even, -1 odd) of each member."""
    members = torch.as_tensor(members, dtype=torch.int64)
    return members // 2, 1.0 - 2.0 * (members % 2).to(torch.float32)


def lowrank_factors(seed: int, tensor_id: int, epoch: int, pairs, m: int, n: int, rank: int,
                    device=None, dtype=torch.float32):
    """Factors ``A [P, m, r]`` and ``B [P, n, r]`` of the given pairs (unit scale, no sign)."""
    pairs = torch.as_tensor(pairs, dtype=torch.int64).reshape(-1)
    z = normal(seed, tensor_id, epoch, pairs, (n + m) * rank, device=device, dtype=dtype)
    z = z.view(pairs.numel(), n + m, rank)
    return z[:, n:], z[:, :n]


def full_noise(seed: int, tensor_id: int, epoch: int, pairs, numel: int, device=None, dtype=torch.float32):
    """Full-rank noise ``[P, numel]`` of the given pairs (unit scale, no sign)."""
    pairs = torch.as_tensor(pairs, dtype=torch.int64).reshape(-1)
    return normal(seed, tensor_id, epoch, pairs, numel, device=device, dtype=dtype)
