"""A compiled CPU path for the Philox words and their uniforms (bit-identical to :mod:`.philox`).

The torch implementation spends ~120 memory-bound int64 passes per block; a
plain C loop does the same arithmetic in registers, ~20x faster on CPU. The
library is built once with the system C compiler into a cache folder
(``$ZOOPT_CACHE`` or ``~/.cache/zoopt``) and loaded with ctypes; without a
compiler, or with ``ZOOPT_NO_CEXT=1``, :func:`available` is False and callers
use the torch path. Only integer arithmetic and two exact float32 operations
(``(x >> 8) + 0.5``, then a power-of-two scale) run here, so the output
equals the torch path bit for bit.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
import threading

import torch

SOURCE = r"""
#include <stdint.h>
#define MUL0 0xD2511F53u
#define MUL1 0xCD9E8D57u
#define BUMP0 0x9E3779B9u
#define BUMP1 0xBB67AE85u
#define TILE 16

/* Runtime-dispatched SIMD clones where the compiler supports them: the resolver picks one for
   the CPU that loads the library, so a shared cache never runs foreign instructions. */
#ifdef ZOOPT_CLONES
#define VECTORIZED __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VECTORIZED
#endif

/* Philox words of TILE consecutive blocks, rounds outermost so the lanes vectorize */
static inline void philox_tile(uint32_t c0[TILE], uint32_t c1[TILE], uint32_t c2[TILE], uint32_t c3[TILE],
                               int64_t block, uint32_t tid, uint32_t gen, uint32_t pair,
                               uint32_t k0, uint32_t k1) {
    for (int j = 0; j < TILE; ++j) {
        c0[j] = (uint32_t)(block + j); c1[j] = tid; c2[j] = gen; c3[j] = pair;
    }
    for (int r = 0; r < 10; ++r) {
        for (int j = 0; j < TILE; ++j) {
            uint64_t p0 = (uint64_t)c0[j] * MUL0;
            uint64_t p1 = (uint64_t)c2[j] * MUL1;
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1[j] ^ k0;
            uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3[j] ^ k1;
            c1[j] = (uint32_t)p1;
            c3[j] = (uint32_t)p0;
            c0[j] = n0;
            c2[j] = n2;
        }
        k0 += BUMP0;
        k1 += BUMP1;
    }
}

/* Planes out[w] (each npairs x nblocks, row p = pairs[p], column b = block first + b) of the words of
   philox(counter = (block, tid, gen, pair), key = (k0, k1)) as floats ((x >> 8) + 0.5) / 2^24, each
   times mult[w] (1 or a float32 constant; one rounded product, as torch's scalar multiply).
   Plane w takes word order[w]. Planar, so the float math that follows runs on contiguous memory. */
VECTORIZED
void philox_planes(float *out, const int64_t *pairs, int64_t npairs, int64_t first, int64_t nblocks,
                   uint32_t tid, uint32_t gen, uint32_t k0, uint32_t k1, const int32_t *order,
                   const float *mult) {
    const float scale = 1.0f / 16777216.0f;
    const int64_t plane = npairs * nblocks;
    uint32_t c[4][TILE];
    for (int64_t p = 0; p < npairs; ++p) {
        float *row = out + p * nblocks;
        for (int64_t b0 = 0; b0 < nblocks; b0 += TILE) {
            int64_t n = nblocks - b0 < TILE ? nblocks - b0 : TILE;
            philox_tile(c[0], c[1], c[2], c[3], first + b0, tid, gen, (uint32_t)pairs[p], k0, k1);
            for (int w = 0; w < 4; ++w) {
                const uint32_t *x = c[order[w]];
                float *dst = row + w * plane + b0;
                const float m = mult[w];
                if (m == 1.0f) {
                    for (int64_t j = 0; j < n; ++j) dst[j] = ((float)(x[j] >> 8) + 0.5f) * scale;
                } else {
                    for (int64_t j = 0; j < n; ++j) dst[j] = (((float)(x[j] >> 8) + 0.5f) * scale) * m;
                }
            }
        }
    }
}
"""

_lock = threading.Lock()
_lib = None
_tried = False


def _cache_dir() -> str:
    return os.environ.get("ZOOPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "zoopt")


# Portable flags: no -march=native, since the cached library may be loaded on
# another CPU that shares the home folder (an illegal instruction would kill
# the process); the flags are part of the cache key. The first set adds SIMD
# clones chosen at load time (GCC/Clang with ifunc); the second is the fallback.
CFLAGS = ["-O3", "-fPIC", "-shared"]
FLAG_SETS = (CFLAGS + ["-DZOOPT_CLONES"], CFLAGS)


def _compile(flags) -> str:
    digest = hashlib.sha256((SOURCE + " ".join(flags)).encode()).hexdigest()[:16]
    folder = _cache_dir()
    path = os.path.join(folder, f"philox_{digest}.so")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        cc = os.environ.get("CC", "cc")
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            src = os.path.join(tmp, "philox.c")
            with open(src, "w") as fh:
                fh.write(SOURCE)
            tmp_so = os.path.join(tmp, "philox.so")
            # no -ffast-math: the float32 steps must round exactly as torch does
            subprocess.run([cc, *flags, src, "-o", tmp_so],
                           check=True, capture_output=True, timeout=120)
            os.replace(tmp_so, path)  # atomic: concurrent builders never see a torn file
    return path


def _build() -> ctypes.CDLL | None:
    error = None
    for flags in FLAG_SETS:
        try:
            lib = ctypes.CDLL(_compile(flags))
            break
        except (OSError, subprocess.SubprocessError) as exc:
            error = exc
    else:
        raise error
    lib.philox_planes.restype = None
    lib.philox_planes.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                  ctypes.c_int64, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32,
                                  ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p]
    return lib


def available() -> bool:
    """True when the compiled library loads (built on first use)."""
    global _lib, _tried
    if os.environ.get("ZOOPT_NO_CEXT"):
        return False
    if not _tried:
        with _lock:
            if not _tried:
                try:
                    _lib = _build()
                except (OSError, subprocess.SubprocessError):
                    _lib = None
                _tried = True
    return _lib is not None


IDENTITY = (0, 1, 2, 3)


def philox_planes(out: torch.Tensor, pairs: torch.Tensor, first: int, tensor_id: int, generation: int,
                  k0: int, k1: int, order=IDENTITY, mult=(1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """Fill ``out [4, len(pairs), nblocks]`` (float32, contiguous): plane ``w`` holds the uniforms of
    word ``order[w]`` of blocks ``first .. first+nblocks``, times ``mult[w]`` rounded to float32."""
    if out.dtype != torch.float32 or not out.is_contiguous() or out.dim() != 3 or out.shape[0] != 4:
        raise ValueError("out must be a contiguous float32 tensor [4, pairs, blocks]")
    pairs = pairs.to(device="cpu", dtype=torch.int64).contiguous()
    if pairs.numel() != out.shape[1]:
        raise ValueError(f"out has {out.shape[1]} pair rows for {pairs.numel()} pairs")
    order_t = torch.tensor(order, dtype=torch.int32)
    mult_t = torch.tensor(mult, dtype=torch.float32)
    if not available():
        raise RuntimeError("the compiled Philox library is not available (no C compiler, or ZOOPT_NO_CEXT set)")
    if out.numel():
        _lib.philox_planes(out.data_ptr(), pairs.data_ptr(), pairs.numel(), first, out.shape[2],
                           tensor_id, generation, k0, k1, order_t.data_ptr(), mult_t.data_ptr())
    return out


def philox_uniforms(pairs: torch.Tensor, first: int, nblocks: int, tensor_id: int, generation: int,
                    k0: int, k1: int) -> torch.Tensor:
    """Uniforms ``[4, len(pairs), nblocks]`` (float32, CPU; word-major) of blocks ``first .. first+nblocks``."""
    out = torch.empty(4, torch.as_tensor(pairs).numel(), nblocks, dtype=torch.float32)
    return philox_planes(out, torch.as_tensor(pairs), first, tensor_id, generation, k0, k1)
