"""Polytope templates, Haar rotations and probe points for many particles at once.

Shapes used throughout: ``P`` particles, ``d`` coordinates per particle, ``V``
vertices per polytope, ``K`` probes per vertex.

* A *template* ``[V, d]`` holds the unit-radius vertices ``u_v`` of a regular
  polytope centred at the origin (orthoplex, simplex or cube).
* Each particle gets its own rotation ``R_i`` in SO(d) (``[P, d, d]``), drawn
  Haar-uniformly and fresh every step; its vertex ``v`` sits at
  ``x_i + r * R_i u_v``.

Randomness is a pure function of ``(seed, step, particle)`` through the
engine's keyed counter generator (:func:`step_rotations`, one implementation in
:mod:`zoopt.kernels.rotations`), so a run resumes bit for bit and any worker
regenerates exactly the rotations of the particles it evaluates.
"""
from __future__ import annotations

import math

import torch

from zoopt import kernels
from zoopt.kernels import normal, vertex_offsets

POLYTOPES = ("orthoplex", "simplex", "cube")
MAX_CUBE_DIM = 16  # 2**16 vertices per particle is already far beyond any sensible use


def _check_dim(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an int >= 1, got {dim!r}")
    return dim


def orthoplex_vertices(dim: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """``[2d, d]``: ``+e_0 .. +e_{d-1}`` then ``-e_0 .. -e_{d-1}``."""
    eye = torch.eye(_check_dim(dim), dtype=dtype, device=device)
    return torch.cat([eye, -eye])


def simplex_vertices(dim: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """``[d+1, d]``: a regular simplex centred at 0 with unit-norm vertices.

    The standard basis of R^{d+1} is centred and written in the orthonormal
    Helmert basis of the hyperplane orthogonal to the all-ones vector.
    """
    d = _check_dim(dim)
    helmert = torch.zeros(d, d + 1, dtype=torch.float64)
    for k in range(1, d + 1):  # row k-1: (1, .., 1, -k, 0, ..) / sqrt(k (k+1))
        helmert[k - 1, :k] = 1.0
        helmert[k - 1, k] = -float(k)
        helmert[k - 1] /= math.sqrt(k * (k + 1))
    verts = helmert.T  # row j = coordinates of e_j (centred) in the hyperplane basis
    verts = verts / verts.norm(dim=1, keepdim=True)
    return verts.to(dtype=dtype, device=device)


def cube_vertices(dim: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """``[2^d, d]``: every sign pattern divided by sqrt(d); bit k of the row index is the sign of axis k."""
    d = _check_dim(dim)
    if d > MAX_CUBE_DIM:
        raise ValueError(f"cube polytope needs dim <= {MAX_CUBE_DIM} (2^dim vertices), got {d}")
    bits = (torch.arange(2 ** d)[:, None] >> torch.arange(d)[None, :]) & 1
    return ((1.0 - 2.0 * bits.to(torch.float64)) / math.sqrt(d)).to(dtype=dtype, device=device)


def polytope_vertices(name: str, dim: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Unit-radius template ``[V, d]`` of ``name`` in ``POLYTOPES``."""
    builders = {"orthoplex": orthoplex_vertices, "simplex": simplex_vertices, "cube": cube_vertices}
    if name not in builders:
        raise ValueError(f"polytope must be one of {POLYTOPES}, got {name!r}")
    return builders[name](dim, dtype=dtype, device=device)


def num_vertices(name: str, dim: int) -> int:
    """``V`` of a polytope without building it."""
    if name not in POLYTOPES:
        raise ValueError(f"polytope must be one of {POLYTOPES}, got {name!r}")
    _check_dim(dim)
    return {"orthoplex": 2 * dim, "simplex": dim + 1, "cube": 2 ** dim}[name]


# -- rotations ----------------------------------------------------------------------------------

ROTATION_TENSOR_ID = 0x50_53_52  # "PSR": keyed-noise stream of PolyStep rotations
JITTER_TENSOR_ID = 0x50_53_4A    # "PSJ": keyed-noise stream of the probe-radius jitter


def step_rotations(seed: int, step: int, particles, dim: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """Haar rotations ``[len(particles), d, d]`` of one step: a pure function of ``(seed, step, particle)``.

    One implementation for every caller (:func:`zoopt.kernels.haar_rotations`:
    the reference on CPU, the CUDA kernel on CUDA devices), so any worker
    regenerates exactly the rotations of the particles it evaluates.
    """
    return kernels.haar_rotations(int(seed), ROTATION_TENSOR_ID, int(step), particles, _check_dim(dim), device=device,
                          dtype=dtype)


def jitter_uniform(seed: int, step: int) -> float:
    """A keyed ``U[0, 1)`` draw for the probe-radius jitter of ``step`` (``Phi`` of a keyed normal)."""
    g = float(normal(int(seed), JITTER_TENSOR_ID, int(step), [0], 1, backend="numpy", dtype=torch.float64)[0, 0])
    return min(0.5 * (1.0 + math.erf(g / math.sqrt(2.0))), 1.0 - 2.0 ** -53)


def biased_rotations(rotations: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Turn column 0 of each rotation onto that particle's ``direction`` ``[P, d]``.

    Column 0 of ``R_i`` is replaced by the unit direction, the frame is
    re-orthonormalized by QR, column 0 is sign-aligned with the direction and
    the last column is flipped where ``det < 0``; so ``R_i e_0`` (the first
    orthoplex vertex) points along the direction. Rows whose direction is zero
    or non-finite keep their rotation. ``d = 1`` is returned unchanged.
    """
    if rotations.dim() != 3 or directions.shape != rotations.shape[:2]:
        raise ValueError(f"rotations [P, d, d] and directions [P, d] must match, got "
                         f"{tuple(rotations.shape)} and {tuple(directions.shape)}")
    d = rotations.shape[1]
    if d == 1:
        return rotations
    norms = directions.norm(dim=1)
    valid = torch.isfinite(norms) & (norms > 1e-12)
    if not bool(valid.any()):
        return rotations
    unit = torch.where(valid[:, None], directions / norms.clamp_min(1e-30)[:, None], rotations[:, :, 0])
    frame = rotations.clone()
    frame[:, :, 0] = unit
    q, _ = torch.linalg.qr(frame)
    align = torch.where((q[:, :, 0] * unit).sum(1) < 0, -1.0, 1.0).to(q.dtype)
    q[:, :, 0] = q[:, :, 0] * align[:, None]
    flip = torch.linalg.det(q) < 0
    q[:, :, -1] = torch.where(flip[:, None], -q[:, :, -1], q[:, :, -1])
    return torch.where(valid[:, None, None], q, rotations)


# -- vertices and probes -----------------------------------------------------------------------

def rotated_vertices(template: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """``R_i u_v`` for every particle and vertex: ``[V, d]`` x ``[P, d, d]`` -> ``[P, V, d]``."""
    return vertex_offsets(rotations, template.to(device=rotations.device, dtype=rotations.dtype))


def probe_scales(num_probes: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """``s_k = k / (K + 1)`` for ``k = 1..K``: where along each vertex ray the loss is probed."""
    if isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 1:
        raise ValueError(f"num_probes must be an int >= 1, got {num_probes!r}")
    return torch.arange(1, num_probes + 1, dtype=dtype, device=device) / (num_probes + 1)


def probe_offsets(template: torch.Tensor, rotations: torch.Tensor, radius, num_probes: int = 1) -> torch.Tensor:
    """Displacements ``rho * s_k * R_i u_v`` of every probe: ``[P, V, K, d]``.

    ``radius`` is a number or a per-particle tensor ``[P]``. Probe point
    ``(i, v, k)`` is ``x_i + probe_offsets[i, v, k]``.
    """
    dirs = rotated_vertices(template, rotations)  # [P, V, d]
    scales = probe_scales(num_probes, dtype=dirs.dtype, device=dirs.device)
    radius = torch.as_tensor(radius, dtype=dirs.dtype, device=dirs.device)
    if radius.dim() == 1:
        radius = radius[:, None, None, None]
    return radius * scales[None, None, :, None] * dirs[:, :, None, :]


def probe_points(centers: torch.Tensor, template: torch.Tensor, rotations: torch.Tensor, radius,
                 num_probes: int = 1) -> torch.Tensor:
    """Probe points ``x_i + rho s_k R_i u_v``: centers ``[P, d]`` -> ``[P, V, K, d]``."""
    return centers[:, None, None, :] + probe_offsets(template, rotations, radius, num_probes)


__all__ = ["POLYTOPES", "orthoplex_vertices", "simplex_vertices", "cube_vertices", "polytope_vertices",
           "num_vertices", "step_rotations", "jitter_uniform", "biased_rotations", "rotated_vertices",
           "probe_scales", "probe_offsets", "probe_points", "ROTATION_TENSOR_ID", "JITTER_TENSOR_ID"]
