"""Keyed small-integer noise for EGGROLL's int8 mode.

Element ``e`` of pair ``k`` takes word ``e % 4`` of the Philox block ``e // 4``
(the counter layout of :mod:`.noise`) and maps its top 24 bits ``y = x >> 8``
through an inverse-CDF table of ascending thresholds ``t_0 .. t_{2c-1}``:
``value = #{j : t_j <= y} - c`` with ``c = clip``. The table discretises
``round(scale * N(0, 1))`` clipped to ``[-clip, clip]``:
``t_j = round(2^24 * Phi((j - c + 1/2) / scale))`` for ``j < c`` and
``t_{2c-1-j} = 2^24 - t_j``, so the distribution is exactly symmetric. The
defaults (scale 16, clip 127) are EGG's int8 noise ``int8(16 * N(0, 1))`` on the
int8 range without -128. Integer arithmetic only, so the CUDA kernel
(``int_noise.cu``) reproduces every value bit for bit.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from . import backend as _backend
from . import philox_c
from .noise import _block_range, _check_key, _pairs_array
from .philox import MASK32, philox_numpy, philox_torch

MAX_CLIP = 127
TWO_24 = 1 << 24


def _check_table_args(scale: float, clip: int) -> None:
    if isinstance(clip, bool) or not isinstance(clip, (int, np.integer)) or not 1 <= clip <= MAX_CLIP:
        raise ValueError(f"clip must be an int in [1, {MAX_CLIP}], got {clip!r}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")


@functools.lru_cache(maxsize=32)
def _thresholds(scale: float, clip: int) -> tuple:
    lower = [round(TWO_24 * 0.5 * math.erfc(-((j - clip + 0.5) / scale) / math.sqrt(2.0))) for j in range(clip)]
    return tuple(lower + [TWO_24 - t for t in reversed(lower)])


def int_thresholds(scale: float = 16.0, clip: int = MAX_CLIP) -> np.ndarray:
    """The ascending uint32 table ``[2 * clip]`` (see module doc)."""
    _check_table_args(scale, clip)
    return np.asarray(_thresholds(float(scale), int(clip)), dtype=np.uint32)


def int_probabilities(scale: float = 16.0, clip: int = MAX_CLIP) -> np.ndarray:
    """Exact probabilities of the values ``-clip .. clip`` (``[2 * clip + 1]``)."""
    t = int_thresholds(scale, clip).astype(np.int64)
    edges = np.concatenate([[0], t, [TWO_24]])
    return np.diff(edges) / TWO_24


def int_noise_numpy(seed: int, tensor_id: int, generation: int, pairs, numel: int, start: int = 0,
                    scale: float = 16.0, clip: int = MAX_CLIP) -> np.ndarray:
    """Reference integer noise ``[len(pairs), numel]`` as int8."""
    _check_key(seed, tensor_id, generation)
    table = int_thresholds(scale, clip)
    pair_arr = _pairs_array(pairs)
    first, last, offset = _block_range(start, numel)
    blocks = np.arange(first, last, dtype=np.uint64)[None, :]
    words = philox_numpy(blocks, np.uint64(tensor_id), np.uint64(generation),
                         pair_arr.astype(np.uint64)[:, None], seed & MASK32, seed >> 32)
    y = np.stack(words, axis=-1).reshape(len(pair_arr), -1) >> np.uint32(8)
    values = np.searchsorted(table, y, side="right").astype(np.int16) - clip
    return values[:, offset:offset + numel].astype(np.int8)


def int_noise_torch(seed: int, tensor_id: int, generation: int, pairs, numel: int, start: int = 0,
                    scale: float = 16.0, clip: int = MAX_CLIP, device=None) -> torch.Tensor:
    """The same values computed with torch on ``device`` (int8)."""
    _check_key(seed, tensor_id, generation)
    device = _backend.as_device(device)
    table = torch.as_tensor(int_thresholds(scale, clip).astype(np.int64), device=device)
    pair_arr = _pairs_array(pairs)
    first, last, offset = _block_range(start, numel)
    if device.type == "cpu" and philox_c.available():   # the same integer steps, compiled
        return philox_c.int8_noise(torch.from_numpy(pair_arr), start, numel, tensor_id, generation,
                                   seed & MASK32, seed >> 32, table, clip)
    blocks = torch.arange(first, last, dtype=torch.int64, device=device)[None, :]
    pair_t = torch.as_tensor(pair_arr, dtype=torch.int64, device=device)[:, None]
    tid = torch.tensor(tensor_id, dtype=torch.int64, device=device)
    gen = torch.tensor(generation, dtype=torch.int64, device=device)
    words = philox_torch(blocks, tid, gen, pair_t, seed & MASK32, seed >> 32)
    y = torch.stack(words, dim=-1).reshape(len(pair_arr), -1) >> 8
    values = torch.searchsorted(table, y.contiguous(), right=True) - clip
    return values[:, offset:offset + numel].to(torch.int8)


def int_noise(seed: int, tensor_id: int, generation: int, pairs, numel: int, start: int = 0,
              scale: float = 16.0, clip: int = MAX_CLIP, device=None, backend: str = "auto") -> torch.Tensor:
    """Keyed integer noise ``[len(pairs), numel]`` (int8) on ``device``; slices regenerate the whole."""
    device = _backend.as_device(device)
    which = _backend.resolve(backend, device)
    if which == "numpy":
        return torch.from_numpy(int_noise_numpy(seed, tensor_id, generation, pairs, numel, start, scale, clip)).to(device)
    if which == "cupy":
        _check_key(seed, tensor_id, generation)
        from . import cupy_backend
        return cupy_backend.int_noise(seed, tensor_id, generation, _pairs_array(pairs), numel, start,
                                      int_thresholds(scale, clip), clip, device)
    return int_noise_torch(seed, tensor_id, generation, pairs, numel, start, scale, clip, device)
