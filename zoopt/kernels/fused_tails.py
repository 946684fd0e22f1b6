"""Compiled CPU kernels for the tails of PolyStep's staged evaluator (``kernels/fused_tails.c``).

* :func:`lif_counts` runs ``LIFReadout(LIFHidden(current))`` of
  :mod:`zoopt.problems.zoo.layers` for every row in one pass: the hidden
  membranes, the spike train and the readout membranes live in L1-sized tiles
  instead of a ``[rows, steps, hidden]`` tensor in memory. Every LIF step rounds
  as the torch forward does (no fused multiply-add); only the readout's
  ``spikes @ W.T`` sums in its own order (increasing hidden index), so results
  equal the torch forward up to that rounding.
* :func:`relu_linear_csr` scores the candidates of one affine stage followed by
  ReLU (or nothing) and one linear layer (the zoo MLP): per tile of 16 rows it
  forms the coordinates' responses from the (sparse) subspace map, combines them
  per candidate, applies the ReLU and the readout, all in registers and cache.

The library is built by :mod:`zoopt.kernels.cext` once per cache folder (about
4 CPU seconds; later processes load it in milliseconds), so no run pays a
per-process warm-up as ``torch.compile`` did; without a compiler, or with
``ZOOPT_NO_CEXT=1``, :func:`available` is False and callers use torch.
"""
from __future__ import annotations

import ctypes
from typing import Optional

import torch

from .cext import CLibrary

TILE = 16      # rows per vector (kernels/fused_tails.c)
CB = 5         # readout units accumulated at once; the transposed weight is padded to a multiple
ALIGN = 128    # bytes: the scratch vectors are 16 lanes of up to 8 bytes
# No contraction into FMA: the LIF steps must round exactly as torch does. The first set adds SIMD
# clones chosen at load time.
CFLAGS = ["-O3", "-fPIC", "-shared", "-ffp-contract=off"]
FLAG_SETS = (CFLAGS + ["-DZOOPT_CLONES"], CFLAGS)


def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        fn = getattr(lib, f"lif_counts_{suffix}")
        fn.restype = None
        fn.argtypes = [ptr, i64, i64, ptr, ptr, i64, i64, real, real, real, real, ptr, ptr]
        fn = getattr(lib, f"csr_responses_{suffix}")
        fn.restype = None
        fn.argtypes = [ptr, ptr, ptr, i64, i64, ptr, i64, ptr, ptr]
        fn = getattr(lib, f"relu_linear_csr_{suffix}")
        fn.restype = None
        fn.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, ctypes.c_int, ctypes.c_int, ptr, ptr,
                       i64, ptr, ptr, ptr, ptr]


_LIBRARY = CLibrary("fused_tails", FLAG_SETS, _declare)
available = _LIBRARY.available

_pool = None


def _split(count: int, grain: int, run) -> None:
    """``run(lo, hi)`` over ``[0, count)``, cut into ``torch.get_num_threads()`` pieces of whole ``grain``s run
    on that many threads (the kernels release the GIL); one thread: one call."""
    global _pool
    threads = max(1, min(torch.get_num_threads(), -(-count // grain)))
    if threads == 1:
        run(0, count)
        return
    if _pool is None or _pool._max_workers < threads:
        from concurrent.futures import ThreadPoolExecutor
        _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="zoopt-fused")
    step = -(-count // (threads * grain)) * grain
    futures = [_pool.submit(run, lo, min(lo + step, count)) for lo in range(0, count, step)]
    for f in futures:
        f.result()


def _aligned_work(numel: int, dtype) -> torch.Tensor:
    """Scratch of ``numel`` elements starting on an ``ALIGN``-byte boundary (the kernels' vector type)."""
    size = torch.empty(0, dtype=dtype).element_size()
    work = torch.empty(numel + ALIGN // size, dtype=dtype)
    return work[(-work.data_ptr() % ALIGN) // size:]


def supports(current: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`lif_counts` takes these tensors (CPU, float32/float64, same dtype) here."""
    return (current.device.type == "cpu" and weight.device.type == "cpu"
            and current.dtype in (torch.float32, torch.float64) and weight.dtype == current.dtype
            and current.dim() == 2 and available())


def lif_counts(current: torch.Tensor, weight: torch.Tensor, bias, steps: int, beta1: float, thr1: float,
               beta2: float, thr2: float, out=None) -> torch.Tensor:
    """Output spike counts ``[rows, C]`` of the hidden LIF population driven by ``current [rows, H]``
    for ``steps`` steps, read out through ``weight [C, H]`` / ``bias [C]`` into C LIF neurons."""
    if not supports(current, weight):
        raise RuntimeError("lif_counts needs CPU float32/float64 tensors of one dtype and the compiled library")
    rows, hidden = current.shape
    classes = weight.shape[0]
    if weight.shape[1] != hidden:
        raise ValueError(f"weight {tuple(weight.shape)} does not match {hidden} hidden units")
    current = current.contiguous()
    padded = -(-classes // CB) * CB
    wt = torch.zeros(hidden, padded, dtype=current.dtype)
    wt[:, :classes] = weight.detach().T
    bias = torch.zeros(classes, dtype=current.dtype) if bias is None else bias.detach().to(current.dtype).contiguous()
    if out is None:
        out = torch.empty(rows, classes, dtype=current.dtype)
    elif out.shape != (rows, classes) or out.dtype != current.dtype or not out.is_contiguous():
        raise ValueError("out must be a contiguous [rows, C] tensor of the current's dtype")
    size = current.element_size()
    fn = _LIBRARY.lib.lif_counts_f32 if current.dtype == torch.float32 else _LIBRARY.lib.lif_counts_f64
    per_row = (hidden * size, classes * size)

    def run(r0: int, r1: int) -> None:
        work = _aligned_work((2 * hidden + 2 * padded) * TILE, current.dtype)
        fn(current.data_ptr() + r0 * per_row[0], r1 - r0, hidden, wt.data_ptr(), bias.data_ptr(), classes,
           int(steps), float(beta1), float(thr1), float(beta2), float(thr2), out.data_ptr() + r0 * per_row[1],
           work.data_ptr())
    _split(rows, TILE, run)
    return out


CK = 10  # readout units accumulated at once by relu_linear_csr; its transposed weight is padded to a multiple


def relu_linear_csr(pre: torch.Tensor, xa: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, vals: torch.Tensor,
                    coeffs: torch.Tensor, weight: torch.Tensor, bias, antipodal: bool, relu: bool = True,
                    labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Logits ``[P, M, C, B]`` (feature-major) of the candidates ``act(pre + change)`` through
    ``weight [C, H]`` / ``bias [C]``: ``change = sum_j coeffs[p, i, j] resp[p, j]`` with ``pre [H, B]``,
    ``coeffs [P, m, d]``, ``act`` ReLU (``relu``) or the identity; with ``antipodal`` ``M = 2 m`` and
    candidate ``m + i`` is ``act(pre - change)``, else ``M = m``. The responses come as a CSR map,
    ``resp[p, j, h, :] = sum_k vals[k] xa[col[k], :]`` over CSR row ``(p d + j) H + h`` (``crow`` has
    ``P d H + 1`` entries starting at 0; ``xa [K, B]`` is the stage input transposed, plus a row of ones
    for bias coordinates), and are formed per tile of rows in cache, never as a tensor.

    With ``labels [B]`` (float32, at most ``CK`` classes, every label in ``0..C-1``) the kernel returns
    the candidates' mean cross-entropy ``[P, M]`` instead of the logits (exp and log by polynomials,
    within a few float32 roundings of torch's)."""
    if not (supports(pre, weight) and xa.dtype == pre.dtype and vals.dtype == pre.dtype
            and coeffs.dtype == pre.dtype and coeffs.dim() == 3 and xa.dim() == 2
            and crow.dtype == torch.int64 and col.dtype == torch.int64):
        raise RuntimeError("relu_linear_csr needs CPU float32/float64 tensors of one dtype, int64 indices and the "
                           "compiled library")
    hidden, batch = pre.shape
    parts, m, d = coeffs.shape
    classes = weight.shape[0]
    if xa.shape[1] != batch or weight.shape[1] != hidden or crow.numel() != parts * d * hidden + 1:
        raise ValueError("relu_linear_csr: shapes of pre, xa, crow, coeffs and weight do not match")
    if int(crow[0]) != 0 or int(crow[-1]) != col.numel() or col.numel() != vals.numel():
        raise ValueError("relu_linear_csr: crow must start at 0 and end at the number of entries")
    if col.numel() and (int(col.min()) < 0 or int(col.max()) >= xa.shape[0]):
        raise ValueError("relu_linear_csr: a column index is outside xa")
    pre, xa, coeffs = pre.contiguous(), xa.contiguous(), coeffs.contiguous()
    crow, col, vals = crow.contiguous(), col.contiguous(), vals.contiguous()
    padded = -(-classes // CK) * CK
    wt = torch.zeros(hidden, padded, dtype=pre.dtype)
    wt[:, :classes] = weight.detach().T
    bias = torch.zeros(classes, dtype=pre.dtype) if bias is None else bias.detach().to(pre.dtype).contiguous()
    per = 2 * m if antipodal else m
    if labels is not None:
        labels = labels.to(torch.int64).contiguous()
        if pre.dtype != torch.float32 or classes > CK or labels.shape != (batch,) or \
                (batch and (int(labels.min()) < 0 or int(labels.max()) >= classes)):
            raise ValueError(f"labels: float32, at most {CK} classes, one label in 0..C-1 per row")
        loss = torch.zeros(parts, per, dtype=torch.float64)  # row sums in double
        out = loss.new_empty(0)
    else:
        out = torch.empty(parts, per, classes, batch, dtype=pre.dtype)
    fn = _LIBRARY.lib.relu_linear_csr_f32 if pre.dtype == torch.float32 else _LIBRARY.lib.relu_linear_csr_f64
    size = pre.element_size()

    def run(p0: int, p1: int) -> None:
        work = _aligned_work(d * hidden * TILE, pre.dtype)
        fn(pre.data_ptr(), xa.data_ptr(), crow.data_ptr() + p0 * d * hidden * 8, col.data_ptr(), vals.data_ptr(),
           coeffs.data_ptr() + p0 * m * d * size, p1 - p0, m, d, hidden, batch, int(bool(antipodal)), int(bool(relu)),
           wt.data_ptr(), bias.data_ptr(), classes, out.data_ptr() + p0 * out[:1].numel() * size, work.data_ptr(),
           labels.data_ptr() if labels is not None else None,
           loss.data_ptr() + p0 * per * 8 if labels is not None else None)
    _split(parts, 1, run)
    return (loss / batch).to(pre.dtype) if labels is not None else out


def csr_responses(xa: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, vals: torch.Tensor, d_out: int) -> torch.Tensor:
    """Row-major responses ``[n, B, d_out]``: ``out[j, b, o] = sum_k vals[k] xa[col[k], b]`` over CSR row
    ``j d_out + o`` (``crow`` has ``n d_out + 1`` entries starting at 0; ``xa [K, B]`` as in
    :func:`relu_linear_csr`), summed in CSR order."""
    if not (supports(xa, vals) and xa.dim() == 2 and crow.dtype == torch.int64 and col.dtype == torch.int64):
        raise RuntimeError("csr_responses needs CPU float32/float64 values, int64 indices and the compiled library")
    if d_out < 1 or (crow.numel() - 1) % d_out:
        raise ValueError("csr_responses: crow must have n * d_out + 1 entries")
    if int(crow[0]) != 0 or int(crow[-1]) != col.numel() or col.numel() != vals.numel():
        raise ValueError("csr_responses: crow must start at 0 and end at the number of entries")
    if col.numel() and (int(col.min()) < 0 or int(col.max()) >= xa.shape[0]):
        raise ValueError("csr_responses: a column index is outside xa")
    n, batch = (crow.numel() - 1) // d_out, xa.shape[1]
    xa, crow, col, vals = xa.contiguous(), crow.contiguous(), col.contiguous(), vals.contiguous()
    out = torch.empty(n, batch, d_out, dtype=xa.dtype)
    fn = _LIBRARY.lib.csr_responses_f32 if xa.dtype == torch.float32 else _LIBRARY.lib.csr_responses_f64
    size = xa.element_size()

    def run(j0: int, j1: int) -> None:
        work = _aligned_work(d_out * TILE, xa.dtype)
        fn(crow.data_ptr() + j0 * d_out * 8, col.data_ptr(), vals.data_ptr(), j1 - j0, d_out, xa.data_ptr(), batch,
           out.data_ptr() + j0 * batch * d_out * size, work.data_ptr())
    _split(n, 1, run)
    return out


__all__ = ["available", "supports", "lif_counts", "relu_linear_csr", "csr_responses"]
