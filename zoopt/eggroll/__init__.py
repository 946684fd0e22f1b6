"""EGGROLL: low-rank evolution strategies at near-inference throughput (eggroll.md).

``EGGROLL`` trains torch modules (population-aware layers swapped in place);
``EGGROLLES`` is the ask/tell strategy for flat vectors, registered as
``method="eggroll"``; :mod:`.integer` holds the int8 EGG language model.
"""
from zoopt.registry import register

from .layers import PopEmbedding, PopLayerNorm, PopLinear
from .module import EGGROLL
from .population import Population, PopulationHolder
from .recurrent import PopGRU, PopGRUCell, PopLSTM, PopLSTMCell, PopRNN, PopRNNCell
from .spec import LowRankSpec
from .strategy import EGGROLLES

register("eggroll", EGGROLLES)

__all__ = ["EGGROLL", "EGGROLLES", "LowRankSpec", "Population", "PopulationHolder", "PopLinear",
           "PopEmbedding", "PopLayerNorm", "PopRNN", "PopRNNCell", "PopGRU", "PopGRUCell", "PopLSTM",
           "PopLSTMCell"]
