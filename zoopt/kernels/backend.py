"""Which implementation serves a kernels call: ``"numpy"`` (the reference), ``"torch"``
(any device) or ``"cupy"`` (CUDA kernels from the ``.cu`` files in this package).

``"auto"`` picks CuPy when ``cupy.cuda.is_available()`` and the target device is a
CUDA device, torch otherwise. ``import cupy`` succeeds on machines without a GPU,
so availability is always asked of the runtime, never inferred from the import.
"""
from __future__ import annotations

import functools

import torch

BACKENDS = ("auto", "numpy", "torch", "cupy")


@functools.lru_cache(maxsize=1)
def cupy_available() -> bool:
    """True when CuPy imports and sees a CUDA device."""
    try:
        import cupy
        return bool(cupy.cuda.is_available())
    except Exception:  # ImportError, or a broken CUDA install
        return False


def as_device(device) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


def resolve(backend: str, device) -> str:
    """The concrete backend for ``backend`` on ``device``; raises where it cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = as_device(device)
    if backend == "auto":
        return "cupy" if device.type == "cuda" and cupy_available() else "torch"
    if backend == "cupy":
        if device.type != "cuda":
            raise ValueError(f"backend='cupy' needs a CUDA device, got device={device}")
        if not cupy_available():
            raise RuntimeError("backend='cupy' needs CuPy with a visible CUDA device "
                               "(pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12)")
    return backend
