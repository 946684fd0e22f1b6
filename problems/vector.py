"""A problem from a batched vector function ``fn([N, D]) -> [N]``."""
from __future__ import annotations

import numpy as np
import torch

from .base import Problem


class VectorProblem(Problem):
    """Wraps ``fn``. ``array="torch"`` passes float32 tensors, ``"numpy"`` float64 arrays."""

    def __init__(self, fn, dim: int, array: str = "torch"):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if array not in ("torch", "numpy"):
            raise ValueError(f"array must be 'torch' or 'numpy', got {array!r}")
        self.fn, self.dim, self.array = fn, int(dim), array

    def evaluate(self, spec, members) -> torch.Tensor:
        x = spec.points(members)
        if self.array == "numpy":
            x = x.detach().cpu().double().numpy()
        out = self.fn(x)
        out = out.detach().cpu() if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out, dtype=np.float64))
        out = out.to(torch.float32).reshape(-1) if out.numel() == len(x) else out
        if out.shape != (len(x),):
            raise ValueError(f"fn must map a batch [N, D] to [N]; got shape {tuple(out.shape)} for N={len(x)}")
        return out
