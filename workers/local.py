"""In-process evaluation, the default evaluator."""
from __future__ import annotations

import torch

from zoopt.spec import member_index


class LocalEvaluator:
    """Runs ``problem.evaluate`` over slices of ``chunk`` members (all at once when None)."""

    name = "local"

    def __init__(self, chunk: int | None = None):
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be >= 1 or None, got {chunk}")
        self.chunk = chunk

    def __call__(self, problem, spec, members=None) -> torch.Tensor:
        idx = member_index(members, spec.popsize)
        step = self.chunk or max(1, idx.numel())
        parts = [problem.evaluate(spec, idx[s:s + step]) for s in range(0, idx.numel(), step)]
        fitness = torch.cat([torch.as_tensor(p, dtype=torch.float32).reshape(-1) for p in parts])
        if fitness.shape != (idx.numel(),):
            raise ValueError(f"problem returned {fitness.numel()} fitness values for {idx.numel()} members")
        return fitness

    def close(self) -> None:
        pass
