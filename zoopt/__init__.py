"""zoopt: forward-only optimization for what backpropagation cannot train."""
from zoopt.cma_es import CMAES
from zoopt.eggroll import EGGROLL, EGGROLLES
from zoopt.hdet import HDETOneCycleLR, HDETSimulation
from zoopt.openai_es import OpenAIES
from zoopt.polystep import PolyStep, PolyStepES
from zoopt.random_search import RandomSearch
from zoopt.registry import METHODS, register
from zoopt.run import OptimizeResult, minimize, run
from zoopt.shaping import NonFiniteFitnessError
from zoopt.spec import GaussianSpec, PerturbationSpec, PointsSpec
from zoopt.spsa import SPSA
from zoopt.strategy import Strategy
from zoopt.train import train

__version__ = "0.2.0"

__all__ = ["minimize", "run", "train", "OptimizeResult", "Strategy", "OpenAIES", "CMAES", "RandomSearch", "SPSA",
           "PolyStep", "PolyStepES", "EGGROLL", "EGGROLLES", "HDETOneCycleLR", "HDETSimulation",
           "PerturbationSpec", "GaussianSpec", "PointsSpec", "NonFiniteFitnessError", "METHODS", "register"]
