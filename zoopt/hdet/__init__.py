"""HDET: hyperparameter-divergent ensemble training (Cheng et al. 2026).

Data-parallel replicas train under a symmetric spread of learning rates (fan-out), their
weights are averaged every T steps (converge), and the loss differences between replicas give a
zero-order hypergradient that moves the shared base LR (auto-LR). Optionally every rank starts
from the checkpoint plus its own small noise (warm noisy initialisation).
"""
from zoopt.hdet.controller import ZeroOrderController, decay_from_floor
from zoopt.hdet.hyperparams import ExploredScalar, dropout, label_smoothing, module_attribute, weight_decay
from zoopt.hdet.permutation import PermutationMismatchError, PermutationStream, spread_multipliers
from zoopt.hdet.schedule import OneCycleCurve
from zoopt.hdet.scheduler import HDETOneCycleLR
from zoopt.hdet.simulate import HDETSimulation
from zoopt.hdet.warm_init import warm_noise

__all__ = ["HDETOneCycleLR", "HDETSimulation", "OneCycleCurve", "ZeroOrderController", "decay_from_floor",
           "ExploredScalar", "weight_decay", "dropout", "label_smoothing", "module_attribute",
           "PermutationStream", "PermutationMismatchError", "spread_multipliers", "warm_noise"]
