"""Keyed Haar rotations in SO(d) and rotated polytope vertex offsets (PolyStep).

Particle ``i`` of a step takes the keyed normal stream of pair ``particles[i]``
under ``(seed, tensor_id, generation)`` and builds its rotation by the subgroup
algorithm (a product of Householder reflections):

* start from ``Q = diag(1, .., 1, (-1)^(d-1))`` so the product has det +1;
* for ``k = 2 .. d``: ``g`` = stream elements ``k(k-1)/2 - 1 .. +k``, ``u = g / |g|``,
  ``w = e_1 - u`` and ``Q[d-k:, d-k:] <- H Q[d-k:, d-k:]`` with
  ``H = I - 2 w w^T / |w|^2`` (the reflection taking ``e_1`` to ``u``).

With ``u`` uniform on each sphere the product is Haar-distributed on SO(d)
(Diaconis & Shahshahani's subgroup algorithm). It needs ``d(d+1)/2 - 1`` normals
instead of the ``d^2`` of QR, has no det or sign fix-up, and every step is well
conditioned (``1 - u_1`` is formed without cancellation), so a float32 GPU kernel
(``rotations.cu``) matches the float64 reference to rounding for every draw; a
QR of a near-singular Gaussian matrix does not have that property.

Vertex offsets of a step: ``offsets[i, v] = radius * R_i u_v`` for a template
``[V, d]`` of unit vertices (``zoopt.polystep.geometry.polytope_vertices``).
"""
from __future__ import annotations

import numpy as np
import torch

from . import backend as _backend
from .noise import _pairs_array, normal_numpy, normal_torch

MAX_KERNEL_DIM = 64  # the CUDA kernel keeps one reflection vector of d floats per thread


def normals_per_rotation(d: int) -> int:
    """How many keyed normals one rotation in SO(d) consumes."""
    return d * (d + 1) // 2 - 1


def _check_d(d) -> int:
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d must be an int >= 1, got {d!r}")
    return int(d)


def _reflect_all(g_blocks, d, xp):
    """Shared numpy/torch body: ``g_blocks[k]`` is ``[P, k]`` normals for k = 2..d."""
    count = g_blocks["count"]
    q = xp["eye"](d, count)
    for k in range(2, d + 1):
        g = g_blocks[k]
        g0 = g[:, 0]
        tail = (g[:, 1:] ** 2).sum(1)
        norm = xp["sqrt"](g0 * g0 + tail)
        w0 = xp["where"](g0 > 0, tail / (norm * (norm + g0)), 1.0 - g0 / norm)
        w = xp["cat"]([w0[:, None], -g[:, 1:] / norm[:, None]])
        wsq = w0 * w0 + tail / (norm * norm)
        degenerate = ~(wsq > 1e-30)
        if degenerate.any():
            w[degenerate] = 0.0
            w[degenerate, 0] = 1.0
            wsq = xp["where"](degenerate, 1.0, wsq)
        block = q[:, d - k:, d - k:]
        dot = (w[:, :, None] * block).sum(1) * (2.0 / wsq)[:, None]  # [P, k] over columns
        q[:, d - k:, d - k:] = block - w[:, :, None] * dot[:, None, :]
    return q


def _np_ops():
    def eye(d, count):
        q = np.broadcast_to(np.eye(d), (count, d, d)).copy()
        if d % 2 == 0:
            q[:, d - 1, d - 1] = -1.0
        return q
    return {"eye": eye, "sqrt": np.sqrt, "where": np.where, "cat": lambda xs: np.concatenate(xs, axis=1)}


def _torch_ops(device, dtype):
    def eye(d, count):
        q = torch.eye(d, dtype=dtype, device=device).expand(count, d, d).clone()
        if d % 2 == 0:
            q[:, d - 1, d - 1] = -1.0
        return q
    return {"eye": eye, "sqrt": torch.sqrt, "where": lambda c, a, b: torch.where(c, a, b) if torch.is_tensor(a) and torch.is_tensor(b)
            else torch.where(c, torch.as_tensor(a, dtype=dtype, device=device), torch.as_tensor(b, dtype=dtype, device=device)),
            "cat": lambda xs: torch.cat(xs, dim=1)}


def _blocks(stream, d, count):
    blocks = {"count": count}
    for k in range(2, d + 1):
        off = k * (k - 1) // 2 - 1
        blocks[k] = stream[:, off:off + k]
    return blocks


def haar_rotations_numpy(seed: int, tensor_id: int, generation: int, particles, d: int) -> np.ndarray:
    """Reference rotations ``[len(particles), d, d]`` in float64 (the ground truth)."""
    d = _check_d(d)
    pair_arr = _pairs_array(particles)
    stream = normal_numpy(seed, tensor_id, generation, pair_arr, normals_per_rotation(d), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # np.where evaluates both branches
        return _reflect_all(_blocks(stream, d, len(pair_arr)), d, _np_ops())


def haar_rotations_torch(seed: int, tensor_id: int, generation: int, particles, d: int,
                         device=None, dtype=torch.float32) -> torch.Tensor:
    """The same rotations computed with torch on ``device`` (float64 where the device has it)."""
    d = _check_d(d)
    device = _backend.as_device(device)
    pair_arr = _pairs_array(particles)
    compute = torch.float32 if device.type == "mps" else torch.float64
    stream = normal_torch(seed, tensor_id, generation, pair_arr, normals_per_rotation(d), device=device,
                          dtype=torch.float32).to(compute)
    q = _reflect_all(_blocks(stream, d, len(pair_arr)), d, _torch_ops(device, compute))
    return q.to(dtype)


def haar_rotations(seed: int, tensor_id: int, generation: int, particles, d: int, device=None,
                   dtype=torch.float32, backend: str = "auto") -> torch.Tensor:
    """Keyed Haar rotations ``[len(particles), d, d]`` in SO(d) on ``device`` (see module doc).

    ``particles`` plays the role of the pair index: any subset regenerates exactly
    its own rotations. ``backend`` as in :func:`zoopt.kernels.normal`; the CuPy
    kernel handles ``d <= 64`` and float32 math (other dims fall back to torch).
    """
    d = _check_d(d)
    device = _backend.as_device(device)
    which = _backend.resolve(backend, device)
    if which == "cupy" and d <= MAX_KERNEL_DIM:
        from . import cupy_backend
        return cupy_backend.haar_rotations(seed, tensor_id, generation, _pairs_array(particles), d, device).to(dtype)
    if which == "numpy":
        return torch.from_numpy(haar_rotations_numpy(seed, tensor_id, generation, particles, d)).to(device=device, dtype=dtype)
    return haar_rotations_torch(seed, tensor_id, generation, particles, d, device=device, dtype=dtype)


def vertex_offsets(rotations: torch.Tensor, template: torch.Tensor, radius: float = 1.0,
                   backend: str = "auto") -> torch.Tensor:
    """``radius * R_i u_v`` for every particle and vertex: ``[P, d, d]``, ``[V, d]`` -> ``[P, V, d]``."""
    if rotations.dim() != 3 or rotations.shape[1] != rotations.shape[2]:
        raise ValueError(f"rotations must be [P, d, d], got {tuple(rotations.shape)}")
    if template.dim() != 2 or template.shape[1] != rotations.shape[1]:
        raise ValueError(f"template must be [V, d] with d={rotations.shape[1]}, got {tuple(template.shape)}")
    which = _backend.resolve(backend, rotations.device)
    if which == "cupy" and rotations.dtype == torch.float32:
        from . import cupy_backend
        return cupy_backend.vertex_offsets(rotations, template, float(radius))
    return radius * torch.einsum("pab,vb->pva", rotations, template.to(device=rotations.device, dtype=rotations.dtype))

