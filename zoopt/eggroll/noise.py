"""EGGROLL's keyed perturbation noise: low-rank factors for matrices, full-rank noise for the rest.

Member ``i`` uses pair ``k = i // 2`` and sign ``s = +1`` for even ``i``, ``-1``
for odd ``i`` (:func:`zoopt.kernels.antithetic_pairs`). A weight matrix ``W``
(m x n, forward ``x W^T``) with tensor id ``t`` gets, for pair ``k`` at noise
epoch ``e = generation // noise_reuse``, the factors
``A, B = zoopt.kernels.lowrank_factors(seed, t, e, k, m, n, r)`` (one keyed draw
of ``(n + m) * r`` normals, ``B`` its first ``n`` rows) and the member's weight is
``W + s * sigma * A B^T / sqrt(r)``. Any other tensor gets
``s * sigma * zoopt.kernels.normal(seed, t, e, k, numel)``. Nothing is stored:
any worker regenerates any pair's noise from the key.
"""
from __future__ import annotations

import zlib

MODES = ("lowrank", "full", "frozen")


def tensor_id_for(name: str) -> int:
    """A stable 31-bit id from a parameter's name (same-shaped layers get independent noise)."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def noise_epoch(generation: int, noise_reuse: int) -> int:
    """The noise generation: ``generation // noise_reuse``; 0 forever when ``noise_reuse == 0``."""
    return 0 if noise_reuse == 0 else generation // noise_reuse
