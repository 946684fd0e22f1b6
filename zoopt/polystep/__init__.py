"""PolyStep: optimal-transport polytope steps (see shared research polystep.md).

Modules: ``geometry`` (polytope templates, Haar rotations, probes), ``plans``
(softmax / Sinkhorn plans, barycentric step), ``schedules`` (epsilon and
radius schedules, the radius rule), ``subspace`` (hybrid random subspace),
``particles`` (the block update and the keyed step geometry), ``strategy``
(ask/tell :class:`PolyStepES` and its :class:`BlockSpec`), ``evaluate`` (the
staged candidate evaluation on a torch model), ``problem`` (that evaluation as
the ``"block"`` kind of ``ModuleProblem``), ``module`` (:class:`PolyStep`, the
torch-module facade: strategy + problem + evaluator).
"""
from zoopt.registry import register

from .module import PolyStep
from .schedules import Constant, Cosine, Linear, Schedule
from .strategy import BlockSpec, PolyStepES

register("polystep", PolyStepES)

__all__ = ["PolyStep", "PolyStepES", "BlockSpec", "Schedule", "Constant", "Linear", "Cosine"]
