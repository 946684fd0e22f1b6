"""Keyed Gaussian noise: a value is a pure function of
``(run seed, tensor id, generation, member pair, element index)``.

Layout of one Philox call: key = the 64-bit run seed; counter =
``(element // 4, tensor_id, generation, pair)``. Its four 32-bit words become
four uniforms ``((x >> 8) + 0.5) / 2**24`` and, by Box-Muller on lanes (0, 1)
and (2, 3), four standard normals for elements ``4b .. 4b+3``. Any slice of
pairs or elements therefore regenerates exactly the values of the whole.

The numpy reference computes the uniforms and normals in float64. The torch
and compiled paths work in float32, where ``(x >> 8) + 0.5`` rounds to even
once ``x >> 8 >= 2**23``; their normals equal the reference to float32
rounding (about 3e-5 at worst), and the raw bits are identical everywhere.

Keying by tensor id is what keeps same-shaped layers independent: public ES
code that reseeds one stream per tensor correlates them.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np
import torch

from . import backend as _backend
from . import philox_c
from .philox import MASK32, philox_numpy, philox_torch

PairsLike = Union[int, Sequence[int], np.ndarray, torch.Tensor]
TWO_PI = 2.0 * math.pi
INV_2_24 = 1.0 / float(1 << 24)


def _check_key(seed: int, tensor_id: int, generation: int) -> None:
    for name, value, bits in (("seed", seed, 64), ("tensor_id", tensor_id, 32), ("generation", generation, 32)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if not 0 <= int(value) < (1 << bits):
            raise ValueError(f"{name} must be in [0, 2**{bits}), got {value}")


def _pairs_array(pairs: PairsLike) -> np.ndarray:
    if isinstance(pairs, torch.Tensor):
        pairs = pairs.detach().cpu().numpy()
    arr = np.atleast_1d(np.asarray(pairs, dtype=np.int64))
    if arr.ndim != 1:
        raise ValueError(f"pairs must be an int or a 1-D sequence, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > MASK32):
        raise ValueError("pairs must lie in [0, 2**32)")
    return arr


def _block_range(start: int, numel: int):
    if start < 0 or numel < 0:
        raise ValueError(f"start and numel must be >= 0, got start={start}, numel={numel}")
    first = start // 4
    last = (start + numel + 3) // 4  # exclusive
    return first, last, start - 4 * first


def normal_numpy(seed: int, tensor_id: int, generation: int, pairs: PairsLike, numel: int,
                 start: int = 0, dtype=np.float32) -> np.ndarray:
    """Reference keyed normals, shape ``[len(pairs), numel]`` (elements start..start+numel)."""
    _check_key(seed, tensor_id, generation)
    pair_arr = _pairs_array(pairs)
    first, last, offset = _block_range(start, numel)
    blocks = np.arange(first, last, dtype=np.uint64)[None, :]
    x0, x1, x2, x3 = philox_numpy(blocks, np.uint64(tensor_id), np.uint64(generation),
                                  pair_arr.astype(np.uint64)[:, None], seed & MASK32, seed >> 32)
    u = [((x >> np.uint32(8)).astype(np.float64) + 0.5) * INV_2_24 for x in (x0, x1, x2, x3)]
    r01 = np.sqrt(-2.0 * np.log(u[0]))
    r23 = np.sqrt(-2.0 * np.log(u[2]))
    z = np.stack([r01 * np.cos(TWO_PI * u[1]), r01 * np.sin(TWO_PI * u[1]),
                  r23 * np.cos(TWO_PI * u[3]), r23 * np.sin(TWO_PI * u[3])], axis=-1)
    z = z.reshape(len(pair_arr), -1)[:, offset:offset + numel]
    return z.astype(dtype, copy=False)


def normal_torch(seed: int, tensor_id: int, generation: int, pairs: PairsLike, numel: int,
                 start: int = 0, device=None, dtype=torch.float32) -> torch.Tensor:
    """Keyed normals computed with torch on ``device``; same bits as :func:`normal_numpy`,
    floats equal to rounding (the transcendental functions run in float32)."""
    _check_key(seed, tensor_id, generation)
    pair_arr = _pairs_array(pairs)
    first, last, offset = _block_range(start, numel)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cpu" and philox_c.available():
        return _normal_cpu_tiled(seed, tensor_id, generation, pair_arr, first, last, offset, numel).to(dtype)
    u0, u1, u2, u3 = _uniforms_torch(seed, tensor_id, generation, pair_arr, first, last, device)
    r01 = torch.sqrt(-2.0 * torch.log(u0))
    r23 = torch.sqrt(-2.0 * torch.log(u2))
    z = torch.stack([r01 * torch.cos(TWO_PI * u1), r01 * torch.sin(TWO_PI * u1),
                     r23 * torch.cos(TWO_PI * u3), r23 * torch.sin(TWO_PI * u3)], dim=-1)
    z = z.reshape(len(pair_arr), -1)[:, offset:offset + numel]
    return z.to(dtype)


# Blocks per tile of the CPU path: 48 bytes a block of working set (uniform, cos/sin and output
# planes) that stays near the core, against ~40 us of Python per tile; 2**15..2**17 measured
# alike inside an EGGROLL forward.
TILE_BLOCKS = 1 << 16


def _tiles(npairs: int, nblocks: int, tile: int):
    """``(pair0, pair1, block0, block1)`` tiles of about ``tile`` blocks covering the grid."""
    if nblocks >= tile:
        return [(p, p + 1, b, min(b + tile, nblocks)) for p in range(npairs) for b in range(0, nblocks, tile)]
    step = max(1, tile // max(nblocks, 1))
    return [(p, min(p + step, npairs), 0, nblocks) for p in range(0, npairs, step)]


def _normal_cpu_tiled(seed, tensor_id, generation, pair_arr, first, last, offset, numel) -> torch.Tensor:
    """The torch path's exact arithmetic, tile by tile in cache: the compiled kernel writes the
    planes ``u0, u2, 2pi u1, 2pi u3`` (the products rounded as torch's scalar multiply), torch
    computes ``sqrt(-2 log u)`` in place and ``cos``/``sin`` (its float32 functions give the same
    bits whatever the tensor's length or offset; its sqrt is not always correctly rounded, so it
    stays in torch), and a compiled pass writes the products ``r * cos|sin`` interleaved (exact
    IEEE multiplies). The values equal the untiled computation bit for bit."""
    P, nblocks = len(pair_arr), last - first
    if P == 0 or numel == 0:
        return torch.empty(P, numel)
    z = torch.empty(P, nblocks, 4)
    pairs = torch.from_numpy(pair_arr)
    k0, k1 = seed & MASK32, seed >> 32
    tiles = _tiles(P, nblocks, TILE_BLOCKS)
    cap = max((p1 - p0) * (b1 - b0) for p0, p1, b0, b1 in tiles)
    u_buf, cs_buf = torch.empty(4 * cap), torch.empty(4 * cap)
    for p0, p1, b0, b1 in tiles:
        shape = (p1 - p0, b1 - b0)
        u = u_buf[:4 * shape[0] * shape[1]].view(4, *shape)
        philox_c.philox_planes(u, pairs[p0:p1], first + b0, tensor_id, generation, k0, k1,
                               order=(0, 2, 1, 3), mult=(1.0, 1.0, TWO_PI, TWO_PI))
        u[:2].log_().mul_(-2.0).sqrt_()                  # radii sqrt(-2 log u0), sqrt(-2 log u2)
        cs = cs_buf[:4 * shape[0] * shape[1]].view(2, 2, *shape)
        torch.cos(u[2:], out=cs[0])
        torch.sin(u[2:], out=cs[1])
        # z[p, b, 2j + k] = radius_j * (cos, sin)_k(theta_j): exact products, one compiled pass
        philox_c.polar_interleave(z[p0:p1, b0:b1], u[:2], cs)
    return z.view(P, -1)[:, offset:offset + numel]


def _uniforms_torch(seed, tensor_id, generation, pair_arr, first, last, device):
    blocks = torch.arange(first, last, dtype=torch.int64, device=device)[None, :]
    pair_t = torch.as_tensor(pair_arr, dtype=torch.int64, device=device)[:, None]
    tid = torch.tensor(tensor_id, dtype=torch.int64, device=device)
    gen = torch.tensor(generation, dtype=torch.int64, device=device)
    x0, x1, x2, x3 = philox_torch(blocks, tid, gen, pair_t, seed & MASK32, seed >> 32)
    return tuple(((x >> 8).to(torch.float32) + 0.5) * INV_2_24 for x in (x0, x1, x2, x3))


def normal(seed: int, tensor_id: int, generation: int, pairs: PairsLike, numel: int, start: int = 0,
           device=None, dtype=torch.float32, backend: str = "auto") -> torch.Tensor:
    """Keyed standard normals ``[len(pairs), numel]`` on ``device``: the one dispatch every keyed draw uses.

    ``backend="auto"`` runs the CUDA kernel (``noise.cu``) for CUDA tensors when CuPy sees a
    GPU and the torch implementation otherwise (compiled Philox on CPU); ``"numpy"`` runs
    the reference and copies to ``device``.
    """
    device = _backend.as_device(device)
    which = _backend.resolve(backend, device)
    if which == "numpy":
        arr = normal_numpy(seed, tensor_id, generation, pairs, numel, start)
        return torch.from_numpy(arr).to(device=device, dtype=dtype)
    if which == "cupy":
        from . import cupy_backend
        _check_key(seed, tensor_id, generation)
        _block_range(start, numel)
        return cupy_backend.normal(seed, tensor_id, generation, _pairs_array(pairs), numel, start, device, dtype)
    return normal_torch(seed, tensor_id, generation, pairs, numel, start, device=device, dtype=dtype)


def raw_bits_numpy(seed: int, tensor_id: int, generation: int, pairs: PairsLike, blocks) -> np.ndarray:
    """The raw Philox words, shape ``[len(pairs), len(blocks), 4]`` (what GPU kernels are checked against)."""
    _check_key(seed, tensor_id, generation)
    pair_arr = _pairs_array(pairs)
    b = np.asarray(blocks, dtype=np.uint64)[None, :]
    words = philox_numpy(b, np.uint64(tensor_id), np.uint64(generation),
                         pair_arr.astype(np.uint64)[:, None], seed & MASK32, seed >> 32)
    return np.stack(words, axis=-1)
