"""EGGROLL: low-rank evolution strategies at near-inference throughput (eggroll.md).

``EGGROLL`` trains torch modules: a facade over ``EGGROLLES`` + a ``ModuleProblem``
whose low-rank evaluation runs population-aware layers swapped in place + an evaluator;
``EGGROLLES`` is the ask/tell strategy for flat vectors, registered as
``method="eggroll"``; :mod:`.integer` holds the int8 EGG language model.
"""
from zoopt.problems.module import register_structured
from zoopt.registry import register

from .attention import PopMultiheadAttention
from .conv import PopConv1d, PopConv2d, PopConv3d
from .layers import PopEmbedding, PopLinear
from .module import EGGROLL
from .norms import PopBatchNorm1d, PopBatchNorm2d, PopBatchNorm3d, PopGroupNorm, PopLayerNorm, PopRMSNorm
from .population import Population, PopulationHolder
from .problem import evaluate_lowrank
from .recurrent import PopGRU, PopGRUCell, PopLSTM, PopLSTMCell, PopRNN, PopRNNCell
from .spec import LowRankSpec
from .strategy import EGGROLLES

register("eggroll", EGGROLLES)
register_structured(LowRankSpec.kind, evaluate_lowrank)  # module x low-rank: the population layers

__all__ = ["EGGROLL", "EGGROLLES", "LowRankSpec", "Population", "PopulationHolder", "PopLinear",
           "PopEmbedding", "PopLayerNorm", "PopRMSNorm", "PopGroupNorm", "PopBatchNorm1d", "PopBatchNorm2d",
           "PopBatchNorm3d", "PopConv1d", "PopConv2d", "PopConv3d", "PopMultiheadAttention", "PopRNN", "PopRNNCell",
           "PopGRU", "PopGRUCell", "PopLSTM", "PopLSTMCell"]
