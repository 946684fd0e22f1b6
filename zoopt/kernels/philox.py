"""Philox-4x32-10, the counter-based generator every perturbation is drawn from.

One call maps a 128-bit counter and a 64-bit key to 128 random bits; there is
no state to carry, so any worker regenerates any slice of any perturbation.
Two implementations share the constants and produce identical bits:

* numpy (uint64 arithmetic), the ground truth;
* torch (int64 arithmetic, masked to 32 bits), which runs on any device.

The CUDA kernels in this package must reproduce these bits exactly.
"""
from __future__ import annotations

import numpy as np
import torch

MUL0 = 0xD2511F53
MUL1 = 0xCD9E8D57
BUMP0 = 0x9E3779B9
BUMP1 = 0xBB67AE85
ROUNDS = 10
MASK32 = 0xFFFFFFFF


def philox_numpy(c0, c1, c2, c3, k0: int, k1: int, rounds: int = ROUNDS):
    """Philox-4x32 on numpy arrays of counters (any integer dtype, values < 2**32).

    Returns four uint32 arrays of the broadcast shape.
    """
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in (c0, c1, c2, c3))
    c0, c1, c2, c3 = np.broadcast_arrays(c0, c1, c2, c3)
    k0, k1 = np.uint64(k0 & MASK32), np.uint64(k1 & MASK32)
    m0, m1, mask = np.uint64(MUL0), np.uint64(MUL1), np.uint64(MASK32)
    shift = np.uint64(32)
    for _ in range(rounds):
        p0 = c0 * m0
        p1 = c2 * m1
        hi0, lo0 = p0 >> shift, p0 & mask
        hi1, lo1 = p1 >> shift, p1 & mask
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + np.uint64(BUMP0)) & mask
        k1 = (k1 + np.uint64(BUMP1)) & mask
    return tuple(c.astype(np.uint32) for c in (c0, c1, c2, c3))


def philox_torch(c0, c1, c2, c3, k0: int, k1: int, rounds: int = ROUNDS):
    """Philox-4x32 on int64 torch tensors holding values in [0, 2**32).

    int64 multiplication wraps modulo 2**64, which keeps the low 64 bits of the
    32x32 product exact; masking recovers the high and low words.
    Returns four int64 tensors with values in [0, 2**32).
    """
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    k0, k1 = k0 & MASK32, k1 & MASK32
    for _ in range(rounds):
        p0 = c0 * MUL0
        p1 = c2 * MUL1
        hi0, lo0 = (p0 >> 32) & MASK32, p0 & MASK32
        hi1, lo1 = (p1 >> 32) & MASK32, p1 & MASK32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + BUMP0) & MASK32
        k1 = (k1 + BUMP1) & MASK32
    return c0, c1, c2, c3
