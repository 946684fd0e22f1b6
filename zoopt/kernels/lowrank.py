"""Low-rank perturbation factors (EGGROLL) and the population correction term: one dispatch each.

Factor layout, for a weight ``W`` of shape ``m x n`` (forward ``x W^T``): pair ``k``
draws one keyed stream of ``(n + m) * r`` normals under ``(seed, tensor_id,
generation)``, read row-major as a ``[n + m, r]`` matrix whose rows ``0 .. n-1``
are ``B_k`` (input side) and rows ``n .. n+m-1`` are ``A_k`` (output side):
``B_k[j, c]`` is element ``j * r + c`` and ``A_k[i, c]`` is element
``(n + i) * r + c``. This is the split of the EGGROLL reference code. A member's
weight is ``W + scale * A_k B_k^T`` (EGGROLL: ``scale = sign * sigma / sqrt(r)``),
and its output for inputs ``x`` is ``x W^T + scale * (x B_k) A_k^T``.

Member ``i`` uses pair ``k = i // 2`` with sign ``+1`` (even ``i``) or ``-1`` (odd ``i``):
:func:`antithetic_pairs`. Any subset of pairs regenerates exactly its own factors.
EGGROLL's population layers call :func:`lowrank_correction` on CUDA tensors (the fused
kernel draws the factors in registers); elsewhere they run the same algebra as batched
torch products on :func:`lowrank_factors`.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from . import backend as _backend
from .noise import _pairs_array, normal

FUSED_RANKS = (1, 2, 4)
FUSED_MAX_ROWS = 32  # rows of x per member up to which the fused kernel is the default


def _check_dims(**dims) -> None:
    for name, value in dims.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def lowrank_factors(seed: int, tensor_id: int, generation: int, pairs, m: int, n: int, r: int,
                    device=None, dtype=torch.float32, backend: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """Factors ``A [len(pairs), m, r]`` and ``B [len(pairs), n, r]`` of an ``m x n`` weight
    (unit scale, no sign): views of one keyed draw ``[pairs, n + m, r]`` (see module doc)."""
    _check_dims(m=m, n=n, r=r)
    flat = normal(seed, tensor_id, generation, pairs, (m + n) * r, device=device, dtype=dtype, backend=backend)
    z = flat.view(-1, n + m, r)
    return z[:, n:], z[:, :n]


def antithetic_pairs(members) -> Tuple[torch.Tensor, torch.Tensor]:
    """Member ``2k`` -> (pair ``k``, sign ``+1``), member ``2k+1`` -> (pair ``k``, sign ``-1``):
    ``(pairs int64, signs float32)``."""
    idx = torch.as_tensor(members.cpu() if isinstance(members, torch.Tensor) else np.asarray(members),
                          dtype=torch.int64).reshape(-1)
    if idx.numel() and int(idx.min()) < 0:
        raise ValueError("members must be ints >= 0")
    return idx // 2, 1.0 - 2.0 * (idx % 2).to(torch.float32)


def fuses(device, dtype, r: int) -> bool:
    """True when :func:`lowrank_correction` runs the fused CUDA kernel for tensors on ``device``."""
    return (_backend.resolve("auto", device) == "cupy" and r in FUSED_RANKS
            and dtype in (torch.float32, torch.bfloat16))


def _as_rows(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.dim() == 2:
        return t[:, None, :]
    if t.dim() != 3:
        raise ValueError(f"{name} must be [M, d] or [M, T, d], got shape {tuple(t.shape)}")
    return t


def lowrank_correction(out: torch.Tensor, x: torch.Tensor, seed: int, tensor_id: int, generation: int,
                       pairs, scales, r: int, backend: str = "auto", fused="auto") -> torch.Tensor:
    """Add every member's low-rank term in place: ``out[i] += scales[i] * (x[i] @ B_k) @ A_k^T``.

    ``out`` is ``[M, m]`` or ``[M, T, m]`` (typically the shared GEMM ``x @ W^T``),
    ``x`` is ``[M, n]`` or ``[M, T, n]``, ``pairs[i]`` is member ``i``'s pair ``k``
    and ``scales[i]`` its coefficient (EGGROLL: ``sign * sigma / sqrt(r)``).
    ``fused``: on the CuPy backend, True generates the factors inside the kernel
    (ranks 1, 2, 4; float32/bfloat16), False materialises them and uses two
    einsums, ``"auto"`` fuses when the rank allows and ``T <= 32``. Other backends
    always run the unfused version. Returns ``out``.
    """
    _check_dims(r=r)
    out3, x3 = _as_rows(out, "out"), _as_rows(x, "x")
    members, rows, m = out3.shape
    if x3.shape[:2] != (members, rows):
        raise ValueError(f"x {tuple(x.shape)} and out {tuple(out.shape)} must agree on members and rows")
    pair_arr = _pairs_array(pairs)
    scale_arr = np.atleast_1d(np.asarray(scales.cpu() if isinstance(scales, torch.Tensor) else scales, dtype=np.float64))
    if len(pair_arr) != members or scale_arr.shape != (members,):
        raise ValueError(f"pairs and scales need one entry per member ({members}), got {len(pair_arr)} and {scale_arr.shape}")
    if fused not in (True, False, "auto"):
        raise ValueError(f"fused must be True, False or 'auto', got {fused!r}")
    which = _backend.resolve(backend, out.device)
    if which == "cupy":
        from . import cupy_backend
        can_fuse = r in FUSED_RANKS and out.dtype in (torch.float32, torch.bfloat16) and x.dtype == out.dtype \
            and out.is_contiguous() and x.is_contiguous()
        if fused is True and not can_fuse:
            raise ValueError(f"fused=True needs r in {FUSED_RANKS}, matching float32/bfloat16 contiguous out and x")
        if can_fuse and (fused is True or (fused == "auto" and rows <= FUSED_MAX_ROWS)):
            cupy_backend.lowrank_correction(out3, x3, seed, tensor_id, generation, pair_arr, scale_arr, r)
            return out
    _unfused_correction(out3, x3, seed, tensor_id, generation, pair_arr, scale_arr, r, which)
    return out


def _unfused_correction(out3, x3, seed, tensor_id, generation, pair_arr, scale_arr, r, which):
    m, n = out3.shape[2], x3.shape[2]
    unique, inverse = np.unique(pair_arr, return_inverse=True)  # antithetic members share one draw
    a, b = lowrank_factors(seed, tensor_id, generation, unique, m, n, r, device=out3.device,
                           dtype=x3.dtype, backend=which)
    index = torch.as_tensor(inverse, device=out3.device)
    proj = torch.einsum("mtn,mnr->mtr", x3, b[index])
    proj = proj * torch.as_tensor(scale_arr, dtype=proj.dtype, device=proj.device)[:, None, None]
    out3 += torch.einsum("mtr,mkr->mtk", proj, a[index]).to(out3.dtype)
