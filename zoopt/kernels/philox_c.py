"""A compiled CPU path for the Philox words, their uniforms and keyed int8 noise (bit-identical to
:mod:`.philox` and :mod:`.int_noise`).

The torch implementation spends ~120 memory-bound int64 passes per block; a
plain C loop does the same arithmetic in registers, ~20x faster on CPU. The
library is built once per cache folder by :mod:`zoopt.kernels.cext`; without a
compiler, or with ``ZOOPT_NO_CEXT=1``, :func:`available` is False and callers
use the torch path. Only integer arithmetic and two exact float32 operations
(``(x >> 8) + 0.5``, then a power-of-two scale) run here, so the output
equals the torch path bit for bit.
"""
from __future__ import annotations

import ctypes

import torch

from .cext import CLibrary

# The first flag set adds SIMD clones chosen at load time (GCC/Clang with ifunc); the second is the
# fallback. No -ffast-math: the float32 steps must round exactly as torch does.
CFLAGS = ["-O3", "-fPIC", "-shared"]
FLAG_SETS = (CFLAGS + ["-DZOOPT_CLONES"], CFLAGS)


def _declare(lib: ctypes.CDLL) -> None:
    lib.philox_planes.restype = None
    lib.philox_planes.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                  ctypes.c_int64, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32,
                                  ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p]
    lib.philox_int8.restype = None
    lib.philox_int8.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p,
                                ctypes.c_int, ctypes.c_int]
    lib.philox_simd.restype = ctypes.c_int
    lib.philox_simd.argtypes = [ctypes.c_int]
    lib.polar_interleave.restype = None
    lib.polar_interleave.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                     ctypes.c_int64, ctypes.c_int64]


_LIBRARY = CLibrary("philox", FLAG_SETS, _declare)
available = _LIBRARY.available


IDENTITY = (0, 1, 2, 3)


def simd_level(cap: int = -1) -> int:
    """The SIMD path the words are computed with: 2 AVX-512F, 1 AVX2, 0 scalar (the same bits on
    each). ``cap`` lowers (or restores, with 2) the highest level used; -1 only reports."""
    if not available():
        raise RuntimeError("the compiled Philox library is not available (no C compiler, or ZOOPT_NO_CEXT set)")
    return int(_LIBRARY.lib.philox_simd(int(cap)))


_CONSTANTS: dict = {}


def _constants(order: tuple, mult: tuple):
    """The ``order`` / ``mult`` arrays handed to C, built once per distinct value."""
    key = (order, mult)
    if key not in _CONSTANTS:
        if len(order) != 4 or sorted(order) != [0, 1, 2, 3] or len(mult) != 4:
            raise ValueError(f"order must permute (0, 1, 2, 3) and mult have 4 values, got {order}, {mult}")
        _CONSTANTS[key] = (torch.tensor(order, dtype=torch.int32), torch.tensor(mult, dtype=torch.float32))
    return _CONSTANTS[key]


def philox_planes(out: torch.Tensor, pairs: torch.Tensor, first: int, tensor_id: int, generation: int,
                  k0: int, k1: int, order=IDENTITY, mult=(1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """Fill ``out [4, len(pairs), nblocks]`` (float32, contiguous): plane ``w`` holds the uniforms of
    word ``order[w]`` of blocks ``first .. first+nblocks``, times ``mult[w]`` rounded to float32."""
    if out.dtype != torch.float32 or not out.is_contiguous() or out.dim() != 3 or out.shape[0] != 4:
        raise ValueError("out must be a contiguous float32 tensor [4, pairs, blocks]")
    pairs = pairs.to(device="cpu", dtype=torch.int64).contiguous()
    if pairs.numel() != out.shape[1]:
        raise ValueError(f"out has {out.shape[1]} pair rows for {pairs.numel()} pairs")
    order_t, mult_t = _constants(tuple(order), tuple(float(m) for m in mult))
    if not available():
        raise RuntimeError("the compiled Philox library is not available (no C compiler, or ZOOPT_NO_CEXT set)")
    if out.numel():
        _LIBRARY.lib.philox_planes(out.data_ptr(), pairs.data_ptr(), pairs.numel(), first, out.shape[2],
                           tensor_id, generation, k0, k1, order_t.data_ptr(), mult_t.data_ptr())
    return out


def int8_noise(pairs: torch.Tensor, start: int, numel: int, tensor_id: int, generation: int, k0: int, k1: int,
               table: torch.Tensor, clip: int) -> torch.Tensor:
    """Keyed int8 noise ``[len(pairs), numel]`` on the CPU (see :mod:`.int_noise`; ``table`` int32 thresholds)."""
    if not available():
        raise RuntimeError("the compiled Philox library is not available (no C compiler, or ZOOPT_NO_CEXT set)")
    pairs = pairs.to(device="cpu", dtype=torch.int64).contiguous()
    table = table.to(torch.int32).contiguous()
    out = torch.empty(pairs.numel(), numel, dtype=torch.int8)
    if out.numel():
        _LIBRARY.lib.philox_int8(out.data_ptr(), pairs.data_ptr(), pairs.numel(), start, numel, tensor_id, generation,
                         k0, k1, table.data_ptr(), table.numel(), clip)
    return out


def polar_interleave(z: torch.Tensor, radius: torch.Tensor, cs: torch.Tensor) -> torch.Tensor:
    """``z [P, B, 4]`` (rows may be strided, each row contiguous) gets ``radius[j] * cs[k, j]`` at
    lane ``2j + k``; ``radius [2, P, B]`` and ``cs [2, 2, P, B]`` contiguous float32."""
    P, B = radius.shape[1:]
    if (z.shape != (P, B, 4) or z.stride(2) != 1 or z.stride(1) != 4 or cs.shape != (2, 2, P, B)
            or not (radius.is_contiguous() and cs.is_contiguous())
            or {z.dtype, radius.dtype, cs.dtype} != {torch.float32}):
        raise ValueError("polar_interleave: z [P, B, 4] with contiguous rows, radius [2, P, B] and cs [2, 2, P, B] "
                         "contiguous float32")
    if not available():
        raise RuntimeError("the compiled Philox library is not available (no C compiler, or ZOOPT_NO_CEXT set)")
    if z.numel():
        _LIBRARY.lib.polar_interleave(z.data_ptr(), z.stride(0), radius.data_ptr(), cs.data_ptr(), P, B)
    return z
