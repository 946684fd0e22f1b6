"""What gets optimized: vector functions, torch modules, data sets and model zoos."""
from .base import Problem
from .module import BATCH_KEY, Batches, ModuleProblem, epoch_order, flatten_params, load_flat, register_structured
from .vector import VectorProblem

__all__ = ["Problem", "VectorProblem", "ModuleProblem", "Batches", "flatten_params", "load_flat", "epoch_order",
           "register_structured", "BATCH_KEY"]
