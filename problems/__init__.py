"""What gets optimized: vector functions, torch modules, data sets and model zoos."""
from .base import Problem
from .module import Batches, ModuleProblem, flatten_params, load_flat
from .vector import VectorProblem

__all__ = ["Problem", "VectorProblem", "ModuleProblem", "Batches", "flatten_params", "load_flat"]
