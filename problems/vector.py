"""A problem from a vector function: batched ``fn([N, D]) -> [N]`` (the default)
or, with ``vectorized=False``, ``fn([D]) -> scalar`` called once per point.

``bounds=(lower, upper)`` (scalars or length-D arrays, ``None`` for no bound,
as pycma's ``bounds`` option; a ``scipy.optimize.Bounds`` works too) makes
``fn`` see every point clipped into the box: the search minimizes
``fn(clip(x))``, whose minimizers clip to the box-constrained ones.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import Problem


def parse_bounds(bounds, dim: int):
    """``(lower, upper)`` as float32 tensors of length ``dim`` (``±inf`` where unbounded)."""
    if hasattr(bounds, "lb") and hasattr(bounds, "ub"):  # scipy.optimize.Bounds
        bounds = (bounds.lb, bounds.ub)
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ValueError("bounds must be a pair (lower, upper) of scalars or length-D arrays "
                         f"(None for no bound), got {bounds!r}")
    out = []
    for name, value, inf in (("lower", bounds[0], -np.inf), ("upper", bounds[1], np.inf)):
        if value is None:
            value = inf
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"bounds' {name} bound must be numbers or None, got {value!r}") from None
        arr = np.where(np.isnan(arr), inf, arr)  # pycma: None/NaN mean unbounded
        if arr.ndim == 0:
            arr = np.full(dim, float(arr))
        if arr.shape != (dim,):
            raise ValueError(f"bounds' {name} bound must be a scalar or have length {dim}, got shape {arr.shape}")
        out.append(torch.as_tensor(arr, dtype=torch.float32))
    lower, upper = out
    bad = torch.nonzero(lower >= upper).flatten()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(f"bounds: lower must be < upper, but at index {i} lower={float(lower[i])} "
                         f"upper={float(upper[i])}")
    return lower, upper


class VectorProblem(Problem):
    """Wraps ``fn``. ``array="torch"`` passes float32 tensors, ``"numpy"`` float64 arrays."""

    def __init__(self, fn, dim: int, array: str = "torch", *, vectorized: bool = True, bounds=None):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if array not in ("torch", "numpy"):
            raise ValueError(f"array must be 'torch' or 'numpy', got {array!r}")
        if not isinstance(vectorized, bool):
            raise TypeError(f"vectorized must be True or False, got {vectorized!r}")
        self.fn, self.dim, self.array, self.vectorized = fn, int(dim), array, vectorized
        self.bounds = None if bounds is None else parse_bounds(bounds, self.dim)

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` clipped into the bounds (unchanged without bounds)."""
        if self.bounds is None:
            return x
        lower, upper = self.bounds
        return torch.maximum(torch.minimum(x, upper.to(x.dtype)), lower.to(x.dtype))

    def evaluate(self, spec, members) -> torch.Tensor:
        x = self.clip(spec.points(members))
        if self.array == "numpy":
            x = x.detach().cpu().double().numpy()
        if self.vectorized:
            out = _as_real(self.fn(x), "fn's return value")
            if out.numel() == len(x):
                out = out.reshape(-1)
            if out.shape != (len(x),):
                raise ValueError(f"fn must map a batch [N, D] to [N]; got shape {tuple(out.shape)} for N={len(x)} "
                                 "(for a function of one point, pass vectorized=False)")
            return out
        values = []
        for row in x:
            v = _as_real(self.fn(row), "fn's return value")
            if v.numel() != 1:
                raise ValueError(f"with vectorized=False, fn must map one point [D] to a scalar; "
                                 f"got shape {tuple(v.shape)}")
            values.append(v.reshape(()))
        return torch.stack(values)


def _as_real(out, what: str) -> torch.Tensor:
    """``out`` as a float32 tensor; complex values and non-numbers are errors, not silent casts."""
    if isinstance(out, torch.Tensor):
        if out.is_complex():
            raise TypeError(f"{what} is complex ({out.dtype}); fn must return real numbers")
        return out.detach().cpu().to(torch.float32)
    try:
        arr = np.asarray(out)
        # numpy would parse numeric strings ("1.0") into floats: a string is never a fitness
        if arr.dtype.kind in "USV" or (arr.dtype.kind == "O" and any(isinstance(v, (str, bytes)) for v in arr.flat)):
            raise ValueError("strings are not fitness values")
        if not np.iscomplexobj(arr):
            arr = arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be numbers, got {type(out).__name__} {_preview(out)} ({exc})") from None
    if np.iscomplexobj(arr):
        raise TypeError(f"{what} is complex ({arr.dtype}); fn must return real numbers")
    return torch.as_tensor(arr).to(torch.float32)


def _preview(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
