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

/* out[w, p, b] = uniform of word w of philox(counter = (first + b, tid, gen, pairs[p]), key = (k0, k1));
   planar (one contiguous plane per word) so the float math that follows runs on contiguous memory */
void philox_uniforms(float *out, const int64_t *pairs, int64_t npairs, int64_t first, int64_t nblocks,
                     uint32_t tid, uint32_t gen, uint32_t k0_in, uint32_t k1_in) {
    const float scale = 1.0f / 16777216.0f;
    for (int64_t p = 0; p < npairs; ++p) {
        uint32_t pair = (uint32_t)pairs[p];
        const int64_t plane = npairs * nblocks;
        float *row = out + p * nblocks;
        for (int64_t b = 0; b < nblocks; ++b) {
            uint32_t c0 = (uint32_t)(first + b), c1 = tid, c2 = gen, c3 = pair;
            uint32_t k0 = k0_in, k1 = k1_in;
            for (int r = 0; r < 10; ++r) {
                uint64_t p0 = (uint64_t)c0 * MUL0;
                uint64_t p1 = (uint64_t)c2 * MUL1;
                uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
                uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
                c1 = (uint32_t)p1;
                c3 = (uint32_t)p0;
                c0 = n0;
                c2 = n2;
                k0 += BUMP0;
                k1 += BUMP1;
            }
            row[b] = ((float)(c0 >> 8) + 0.5f) * scale;
            row[plane + b] = ((float)(c1 >> 8) + 0.5f) * scale;
            row[2 * plane + b] = ((float)(c2 >> 8) + 0.5f) * scale;
            row[3 * plane + b] = ((float)(c3 >> 8) + 0.5f) * scale;
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
# the process); the flags are part of the cache key.
CFLAGS = ["-O3", "-fPIC", "-shared"]


def _build() -> ctypes.CDLL | None:
    digest = hashlib.sha256((SOURCE + " ".join(CFLAGS)).encode()).hexdigest()[:16]
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
            subprocess.run([cc, *CFLAGS, src, "-o", tmp_so],
                           check=True, capture_output=True, timeout=120)
            os.replace(tmp_so, path)  # atomic: concurrent builders never see a torn file
    lib = ctypes.CDLL(path)
    lib.philox_uniforms.restype = None
    lib.philox_uniforms.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                    ctypes.c_int64, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32,
                                    ctypes.c_uint32]
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


def philox_uniforms(pairs: torch.Tensor, first: int, nblocks: int, tensor_id: int, generation: int,
                    k0: int, k1: int) -> torch.Tensor:
    """Uniforms ``[4, len(pairs), nblocks]`` (float32, CPU; word-major) of blocks ``first .. first+nblocks``."""
    pairs = pairs.to(device="cpu", dtype=torch.int64).contiguous()
    out = torch.empty(4, pairs.numel(), nblocks, dtype=torch.float32)
    if out.numel():
        _lib.philox_uniforms(out.data_ptr(), pairs.data_ptr(), pairs.numel(), first, nblocks,
                             tensor_id, generation, k0, k1)
    return out
