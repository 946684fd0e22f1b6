"""Perturbation kernels: keyed counter-based noise, one dispatch per operation.

Every function returns torch tensors and takes ``backend="auto" | "numpy" |
"torch" | "cupy"``. The numpy implementation is the ground truth; the torch
one runs on any device; the CuPy one launches the CUDA kernels whose sources
ship in the top-level ``kernels/`` folder. ``"auto"`` picks CuPy when
``cupy.cuda.is_available()`` and the target device is CUDA, torch otherwise.

* :func:`normal` — keyed N(0, 1): full-rank noise for any slice of pairs/elements;
* :func:`lowrank_factors`, :func:`lowrank_correction` — EGGROLL factors ``(A, B)`` and the
  population's rank-r output term (fused on the GPU); :func:`antithetic_pairs`;
* :func:`haar_rotations`, :func:`vertex_offsets` — PolyStep's keyed SO(d) rotations;
* :func:`int_noise` — keyed int8 noise ``round(16 N(0, 1))`` for integer EGGROLL.
"""
from __future__ import annotations

from .backend import BACKENDS, cupy_available, resolve
from .int_noise import int_noise, int_noise_numpy, int_noise_torch, int_probabilities, int_thresholds
from .lowrank import antithetic_pairs, fuses, lowrank_correction, lowrank_factors
from .noise import normal, normal_numpy, normal_torch, raw_bits_numpy
from .philox import philox_numpy, philox_torch
from .rotations import (haar_rotations, haar_rotations_numpy, haar_rotations_torch, normals_per_rotation,
                        vertex_offsets)

__all__ = ["normal", "normal_numpy", "normal_torch", "raw_bits_numpy", "philox_numpy", "philox_torch", "BACKENDS",
           "cupy_available", "resolve", "lowrank_factors", "antithetic_pairs", "lowrank_correction", "fuses",
           "haar_rotations", "haar_rotations_numpy", "haar_rotations_torch", "normals_per_rotation", "vertex_offsets",
           "int_noise", "int_noise_numpy", "int_noise_torch", "int_thresholds", "int_probabilities"]
