"""Perturbation kernels: keyed counter-based noise with one dispatch.

``normal(...)`` returns torch tensors. The numpy implementation is the ground
truth; the torch one runs on any device. CuPy kernels (when present and a GPU
is visible) plug in behind the same call.
"""
from __future__ import annotations

import torch

from .noise import normal_numpy, normal_torch, raw_bits_numpy
from .philox import philox_numpy, philox_torch

BACKENDS = ("auto", "numpy", "torch")


def normal(seed: int, tensor_id: int, generation: int, pairs, numel: int, start: int = 0,
           device=None, dtype=torch.float32, backend: str = "auto") -> torch.Tensor:
    """Keyed standard normals ``[len(pairs), numel]`` as a torch tensor on ``device``.

    ``backend="auto"`` uses the torch implementation (faster than numpy on CPU
    too); ``"numpy"`` runs the reference and copies to ``device``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    if backend == "numpy":
        arr = normal_numpy(seed, tensor_id, generation, pairs, numel, start)
        return torch.from_numpy(arr).to(device=device, dtype=dtype)
    return normal_torch(seed, tensor_id, generation, pairs, numel, start, device=device, dtype=dtype)


__all__ = ["normal", "normal_numpy", "normal_torch", "raw_bits_numpy", "philox_numpy", "philox_torch", "BACKENDS"]
