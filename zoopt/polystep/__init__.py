"""PolyStep: optimal-transport polytope steps (see shared research polystep.md).

Modules: ``geometry`` (polytope templates, Haar rotations, probes), ``plans``
(softmax / Sinkhorn plans, barycentric step), ``schedules`` (epsilon and
radius schedules, the radius rule), ``subspace`` (hybrid random subspace),
``particles`` (the block update shared by both interfaces), ``strategy``
(ask/tell :class:`PolyStepES`), ``module`` (:class:`PolyStep` for torch
modules, with the structure-aware candidate evaluation).
"""
from zoopt.registry import register

from .module import PolyStep
from .schedules import Constant, Cosine, Linear, Schedule
from .strategy import BlockSpec, PolyStepES

register("polystep", PolyStepES)

__all__ = ["PolyStep", "PolyStepES", "BlockSpec", "Schedule", "Constant", "Linear", "Cosine"]
