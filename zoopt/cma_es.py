"""CMA-ES through pycma (``cma``) behind the zoopt contract; ``diagonal=True``
gives sep-CMA-ES for high dimensions.

pycma draws its samples through the ``randn`` option, which defaults to
numpy's global RNG. The strategy hands it the ``randn`` of a RandomState of its
own, so runs are a pure function of the seed, the caller's global RNG is never
touched, and a pickled checkpoint carries the RNG along with the state.
"""
from __future__ import annotations

import pickle
import numpy as np
import torch

from zoopt.spec import PointsSpec
from zoopt.strategy import Strategy, as_center, check_positive


class CMAES(Strategy):
    name = "cma_es"

    def __init__(self, x0=None, *, dim: int | None = None, popsize: int | None = None, sigma: float = 0.5,
                 diagonal: bool = False, seed: int = 0, nonfinite: str = "worst", options: dict | None = None):
        import cma

        if x0 is None:
            if dim is None:
                raise ValueError("give x0 or dim")
            x0 = torch.zeros(int(dim))
        x0 = as_center(x0)
        if popsize is None:
            popsize = 4 + int(3 * np.log(x0.numel()))
        super().__init__(popsize, seed=seed, nonfinite=nonfinite)
        self.sigma0 = check_positive("sigma", sigma)
        self.diagonal = bool(diagonal)
        rng = np.random.RandomState(self.seed % (2**32))
        opts = {"popsize": self.popsize, "randn": rng.randn, "verbose": -9,
                "verb_disp": 0, "verb_log": 0, "CMA_diagonal": self.diagonal, "tolfun": 0, "tolx": 0,
                "tolfunhist": 0, "tolstagnation": int(1e9), "maxfevals": np.inf}
        opts.update(options or {})
        self.es = cma.CMAEvolutionStrategy(x0.double().numpy(), self.sigma0, opts)
        self._asked = None

    @property
    def center(self) -> torch.Tensor:
        return torch.as_tensor(self.es.mean, dtype=torch.float32)

    @property
    def sigma(self) -> float:
        return float(self.es.sigma)

    def _ask(self) -> PointsSpec:
        self._asked = self.es.ask()
        cand = torch.as_tensor(np.stack(self._asked), dtype=torch.float32)
        return PointsSpec(center=self.center, popsize=self.popsize, generation=self.generation,
                          seed=self.seed, candidates=cand)

    def _tell(self, spec, fitness) -> None:
        self.es.tell(self._asked, fitness.double().tolist())
        self._asked = None

    def stop(self) -> dict:
        return dict(self.es.stop())

    def _state(self) -> dict:
        return {"es": pickle.dumps(self.es)}  # includes the RandomState behind opts["randn"]

    def _load(self, state: dict) -> None:
        self.es = pickle.loads(state["es"])
