"""The Problem contract: ``evaluate(spec, members) -> fitness`` for a slice of members.

A problem receives the whole perturbation spec and a member slice. The
generic path asks the spec for explicit points; problems that know the
structure (low-rank factors, one perturbed block) override ``evaluate`` and
share the work across members.

Per-member statistics. A problem whose evaluation gathers state that later
generations depend on (GymProblem: observation-normalization statistics and
the env-step count) sets ``keeps_member_stats = True`` and implements the
three methods below. An evaluator whose workers hold copies of the problem
then keeps the copies in step: before a generation the coordinating copy's
``share_stats(spec)`` puts what the workers must use into ``spec.extras``;
each worker returns ``stats(members)`` with the fitness of its members; the
coordinator takes them all with ``merge_stats(...)``. For the result not to
depend on how members were split (or re-run after a fault), statistics are
kept per member and folded in member order.
"""
from __future__ import annotations

import torch


class Problem:
    """Subclass and implement ``evaluate``. ``dim`` is the length of the flat search vector."""

    dim: int
    keeps_member_stats: bool = False  # True: implement share_stats / stats / merge_stats (module docstring)

    def evaluate(self, spec, members) -> torch.Tensor:
        raise NotImplementedError

    def initial_point(self) -> torch.Tensor:
        """Where a search starts when the user gives no x0."""
        return torch.zeros(self.dim)

    def share_stats(self, spec) -> None:
        """Coordinating copy: put the statistics worker copies must evaluate ``spec`` with into ``spec.extras``."""

    def stats(self, members=None):
        """Worker copy: the per-member statistics of its last evaluation (only ``members``' when given)."""
        return None

    def merge_stats(self, others) -> None:
        """Coordinating copy: take the workers' :meth:`stats` (one object or a list) for the same generation."""
