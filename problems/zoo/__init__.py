"""The non-differentiable model zoo PolyStep is measured on (polystep.md §4.1): hard-LIF SNN,
INT8 MLP, argmax attention, staircase MLP, hard top-1 MoE and the plain MLP, each with a
smooth twin, written as chains of stages (see ``models``)."""
from .layers import quantize_int8, staircase
from .models import MODELS, StagedNet, make_model, smooth_twin
from .prep import zoo_data

__all__ = ["MODELS", "StagedNet", "make_model", "smooth_twin", "zoo_data", "quantize_int8", "staircase"]
