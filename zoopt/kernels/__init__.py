"""Perturbation kernels: keyed counter-based noise with one dispatch.

Every function returns torch tensors and takes ``backend="auto" | "numpy" |
"torch" | "cupy"``. The numpy implementation is the ground truth; the torch one
runs on any device; the CuPy one launches the CUDA kernels shipped as ``*.cu``
files in this package. ``"auto"`` picks CuPy when ``cupy.cuda.is_available()``
and the target device is CUDA, torch otherwise.

* :func:`normal` — keyed N(0, 1), full-rank noise for any slice of pairs/elements;
* :func:`lowrank_factors`, :func:`lowrank_correction` — EGGROLL factors ``[pairs, m+n, r]``
  and the population's rank-r output term (fused on the GPU);
* :func:`haar_rotations`, :func:`vertex_offsets` — PolyStep's keyed SO(d) rotations;
* :func:`int_noise` — keyed small-integer noise for int8 EGGROLL.
"""
from __future__ import annotations

import torch

from .backend import BACKENDS, as_device, cupy_available, resolve
from .int_noise import int_noise, int_noise_numpy, int_noise_torch, int_probabilities, int_thresholds
from .lowrank import antithetic_pairs, lowrank_correction, lowrank_factors, split_factors
from .noise import _pairs_array, normal_numpy, normal_torch, raw_bits_numpy
from .philox import philox_numpy, philox_torch
from .rotations import (haar_rotations, haar_rotations_numpy, haar_rotations_torch, normals_per_rotation,
                        step_geometry, vertex_offsets)


def normal(seed: int, tensor_id: int, generation: int, pairs, numel: int, start: int = 0,
           device=None, dtype=torch.float32, backend: str = "auto") -> torch.Tensor:
    """Keyed standard normals ``[len(pairs), numel]`` as a torch tensor on ``device``.

    ``backend="auto"`` uses the CuPy kernel for CUDA devices when CuPy sees a GPU
    and the torch implementation otherwise (faster than numpy on CPU too);
    ``"numpy"`` runs the reference and copies to ``device``.
    """
    device = as_device(device)
    which = resolve(backend, device)
    if which == "numpy":
        arr = normal_numpy(seed, tensor_id, generation, pairs, numel, start)
        return torch.from_numpy(arr).to(device=device, dtype=dtype)
    if which == "cupy":
        from .noise import _check_key, _block_range
        from . import cupy_backend
        _check_key(seed, tensor_id, generation)
        _block_range(start, numel)
        return cupy_backend.normal(seed, tensor_id, generation, _pairs_array(pairs), numel, start, device, dtype)
    return normal_torch(seed, tensor_id, generation, pairs, numel, start, device=device, dtype=dtype)


__all__ = ["normal", "normal_numpy", "normal_torch", "raw_bits_numpy", "philox_numpy", "philox_torch", "BACKENDS",
           "cupy_available", "resolve", "lowrank_factors", "split_factors", "antithetic_pairs", "lowrank_correction",
           "haar_rotations", "haar_rotations_numpy", "haar_rotations_torch", "normals_per_rotation", "vertex_offsets",
           "step_geometry", "int_noise", "int_noise_numpy", "int_noise_torch", "int_thresholds", "int_probabilities"]
