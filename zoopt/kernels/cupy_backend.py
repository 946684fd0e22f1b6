"""CuPy launches of the CUDA kernels in this package (``*.cu`` + ``philox.cuh``).

Sources are compiled at first use with NVRTC through ``cupy.RawModule`` (the header
is inlined, so no include path is needed) and cached per process. Tensors cross
between torch and CuPy by DLPack without copies; kernels run on torch's current
stream of the tensor's device, so they order correctly with surrounding torch work.
bfloat16 tensors travel as int16 views (the kernels treat them as raw bits).

Importing this module needs CuPy; calling it needs a CUDA device. The dispatch in
``zoopt.kernels`` only comes here when ``cupy.cuda.is_available()``.
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch

import cupy

from .philox import MASK32
from .sources import KERNELS, read_source  # noqa: F401  (KERNELS re-exported)

THREADS = 256
MAX_GRID = 65535 * 8
MAX_GRID_Y = 65535
COMPILE_OPTIONS = ("--std=c++14",)


@functools.lru_cache(maxsize=None)
def _module(name: str):
    return cupy.RawModule(code=read_source(name), options=COMPILE_OPTIONS)


def _function(name: str, kernel: str):
    return _module(name).get_function(kernel)


def to_cupy(t: torch.Tensor):
    """Zero-copy CuPy view of a CUDA tensor (bfloat16 as int16 bits)."""
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return cupy.from_dlpack(t)


def to_torch(a) -> torch.Tensor:
    """Zero-copy torch view of a CuPy array."""
    return torch.from_dlpack(a)


@contextlib.contextmanager
def _on(device: torch.device):
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(index)
    with cupy.cuda.Device(index), cupy.cuda.ExternalStream(stream.cuda_stream, index):
        yield


def _launch(source: str, kernel: str, device: torch.device, grid, args, threads: int = THREADS):
    """Launch on torch's current stream; torch tensors in ``args`` are passed as DLPack views
    made inside that stream's context (so DLPack adds no cross-stream synchronisation)."""
    if isinstance(grid, int):  # a work-item count: 1-D grid-stride launch
        grid = (int(max(1, min((grid + threads - 1) // threads, MAX_GRID))),)
    with _on(device):
        views = tuple(to_cupy(a) if isinstance(a, torch.Tensor) else a for a in args)
        _function(source, kernel)(grid, (threads,), views)


def _row_grid(n_pairs: int, n_blocks: int):
    """(grid, threads) for the row kernels: x strides over a row's Philox blocks, y over pairs."""
    threads = THREADS if n_blocks >= THREADS else max(32, 1 << (int(n_blocks) - 1).bit_length())
    grid_x = int(max(1, min((n_blocks + threads - 1) // threads, MAX_GRID)))
    return (grid_x, int(min(n_pairs, MAX_GRID_Y))), threads


def _key(seed: int, tensor_id: int, generation: int):
    return (np.uint32(seed & MASK32), np.uint32(seed >> 32), np.uint32(tensor_id), np.uint32(generation))


def _u32_on(values: np.ndarray, device: torch.device):
    host = torch.from_numpy(np.ascontiguousarray(values, dtype=np.uint32).view(np.int32))
    return host.to(device, non_blocking=False)


def raw_bits(seed: int, tensor_id: int, generation: int, pairs: np.ndarray, blocks, device) -> np.ndarray:
    """Raw Philox words ``[len(pairs), len(blocks), 4]`` (uint32, on the host) from the GPU."""
    device = torch.device(device)
    pair_t = _u32_on(pairs, device)
    block_t = _u32_on(np.asarray(blocks, dtype=np.int64), device)
    out = torch.empty((len(pairs), len(block_t), 4), dtype=torch.int32, device=device)
    _launch("noise.cu", "keyed_raw_bits", device, out.numel() // 4,
            (out, pair_t, block_t, np.int64(len(pairs)), np.int64(len(block_t)),
             *_key(seed, tensor_id, generation)))
    return out.cpu().numpy().view(np.uint32)


def normal(seed: int, tensor_id: int, generation: int, pairs: np.ndarray, numel: int, start: int,
           device, dtype=torch.float32) -> torch.Tensor:
    """Keyed normals ``[len(pairs), numel]`` on a CUDA device (see ``noise.cu``)."""
    device = torch.device(device)
    kernel_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
    out = torch.empty((len(pairs), numel), dtype=kernel_dtype, device=device)
    if out.numel() == 0:
        return out.to(dtype)
    pair_t = _u32_on(pairs, device)
    align = 4 * out.element_size()
    vector_ok = int(start % 4 == 0 and numel % 4 == 0 and out.data_ptr() % align == 0)
    grid, threads = _row_grid(len(pairs), (start + numel + 3) // 4 - start // 4)
    kernel = "keyed_normal_bf16" if kernel_dtype == torch.bfloat16 else "keyed_normal_f32"
    _launch("noise.cu", kernel, device, grid,
            (out, pair_t, np.int64(len(pairs)), np.int64(start), np.int64(numel),
             np.int32(vector_ok), *_key(seed, tensor_id, generation)), threads=threads)
    return out if kernel_dtype == dtype else out.to(dtype)


def int_noise(seed: int, tensor_id: int, generation: int, pairs: np.ndarray, numel: int, start: int,
              thresholds: np.ndarray, clip: int, device) -> torch.Tensor:
    """Keyed int8 noise ``[len(pairs), numel]`` (see ``int_noise.cu``)."""
    device = torch.device(device)
    out = torch.empty((len(pairs), numel), dtype=torch.int8, device=device)
    if out.numel() == 0:
        return out
    pair_t, table = _u32_on(pairs, device), _u32_on(thresholds, device)
    grid, threads = _row_grid(len(pairs), (start + numel + 3) // 4 - start // 4)
    _launch("int_noise.cu", "keyed_int8", device, grid,
            (out, pair_t, np.int64(len(pairs)), np.int64(start), np.int64(numel),
             table, np.int32(len(thresholds)), np.int32(clip), *_key(seed, tensor_id, generation)), threads=threads)
    return out


def haar_rotations(seed: int, tensor_id: int, generation: int, particles: np.ndarray, d: int, device) -> torch.Tensor:
    """Keyed rotations ``[P, d, d]`` float32, one thread per particle (see ``rotations.cu``)."""
    device = torch.device(device)
    out = torch.empty((len(particles), d, d), dtype=torch.float32, device=device)
    if out.numel() == 0:
        return out
    _launch("rotations.cu", "haar_rotations_f32", device, len(particles),
            (out, _u32_on(particles, device), np.int64(len(particles)), np.int32(d),
             *_key(seed, tensor_id, generation)), threads=64)
    return out


def vertex_offsets(rotations: torch.Tensor, template: torch.Tensor, radius: float) -> torch.Tensor:
    """``radius * R_i u_v`` ``[P, V, d]`` float32."""
    rot = rotations.contiguous()
    templ = template.to(device=rot.device, dtype=torch.float32).contiguous()
    p, d, v = rot.shape[0], rot.shape[1], templ.shape[0]
    out = torch.empty((p, v, d), dtype=torch.float32, device=rot.device)
    if out.numel() == 0:
        return out
    _launch("rotations.cu", "vertex_offsets_f32", rot.device, out.numel(),
            (out, rot, templ, np.int64(p), np.int32(v), np.int32(d), np.float32(radius)))
    return out


def lowrank_correction(out: torch.Tensor, x: torch.Tensor, seed: int, tensor_id: int, generation: int,
                       pairs: np.ndarray, scales: np.ndarray, r: int) -> None:
    """Fused ``out[i, t] += scales[i] * (x[i, t] B_i) A_i^T``; out ``[M, T, m]``, x ``[M, T, n]``."""
    members, rows, m = out.shape
    n = x.shape[2]
    if members == 0 or rows == 0:
        return
    device = out.device
    tag = "bf16" if out.dtype == torch.bfloat16 else "f32"
    scale_t = torch.as_tensor(np.asarray(scales, dtype=np.float32), device=device)
    tiles = (rows + 7) // 8  # ZO_TILE_T in lowrank.cu
    _launch("lowrank.cu", f"lowrank_correction_{tag}_r{r}", device, (members, tiles),
            (out, x, _u32_on(pairs, device), scale_t, np.int64(rows), np.int64(m), np.int64(n),
             *_key(seed, tensor_id, generation)))
