"""The Problem contract: ``evaluate(spec, members) -> fitness`` for a slice of members.

A problem receives the whole perturbation spec and a member slice. The
generic path asks the spec for explicit points; problems that know the
structure (low-rank factors, one perturbed block) override ``evaluate`` and
share the work across members.
"""
from __future__ import annotations

import torch


class Problem:
    """Subclass and implement ``evaluate``. ``dim`` is the length of the flat search vector."""

    dim: int

    def evaluate(self, spec, members) -> torch.Tensor:
        raise NotImplementedError

    def initial_point(self) -> torch.Tensor:
        """Where a search starts when the user gives no x0."""
        return torch.zeros(self.dim)
