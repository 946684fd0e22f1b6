"""CMA-ES through pycma (``cma``) behind the zoopt contract; ``diagonal=True``
gives sep-CMA-ES for high dimensions.

pycma draws its samples through the ``randn`` option, which defaults to
numpy's global RNG. The strategy hands it the ``randn`` of a RandomState of its
own, so runs are a pure function of the seed and the caller's global RNG is
never touched.

Stopping: pycma's own ``stop()`` defaults hold (``tolfun`` = ``tolx`` = 1e-11,
``tolfunhist``, ``tolstagnation``, ...); pass ``options`` to change them.

Checkpoints hold no pickled pycma object (loading one would run code from the
file): since a run is a pure function of its settings, seed and the fitness it
was told, the state is those settings plus every generation's fitness, and
``load_state_dict`` replays them through a fresh pycma object (bit for bit the
same state, in about the time pycma's own ask/tell took).
"""
from __future__ import annotations

import numpy as np
import torch

from zoopt.spec import PointsSpec
from zoopt.strategy import Strategy, as_center, check_positive


class CMAES(Strategy):
    name = "cma_es"

    def __init__(self, x0=None, *, dim: int | None = None, popsize: int | None = None, sigma: float = 0.5,
                 diagonal: bool = False, seed: int = 0, nonfinite: str = "worst", options: dict | None = None):
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
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options must be a dict of pycma options, got {type(options).__name__}")
        self.options = dict(options or {})
        self._x0 = x0.double().numpy()
        self._told: list = []  # every generation's fitness: the checkpoint replays them
        self.es = self._new_es()
        self._asked = None

    def _new_es(self):
        import cma

        rng = np.random.RandomState(self.seed % (2**32))
        opts = {"popsize": self.popsize, "randn": rng.randn, "verbose": -9, "verb_disp": 0, "verb_log": 0,
                "CMA_diagonal": self.diagonal, "maxfevals": np.inf, **self.options}
        return cma.CMAEvolutionStrategy(self._x0.copy(), self.sigma0, opts)

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
        told = fitness.double().tolist()
        self.es.tell(self._asked, told)
        self._told.append(told)
        self._asked = None

    def stop(self) -> dict:
        return dict(self.es.stop())

    def _state(self) -> dict:
        return {"x0": torch.from_numpy(self._x0.copy()), "sigma0": self.sigma0, "diagonal": self.diagonal,
                "popsize": self.popsize, "options": repr(sorted(self.options.items())),
                "fitness": torch.tensor(self._told, dtype=torch.float64).reshape(-1, self.popsize)}

    def _load(self, state: dict) -> None:
        mine = self._state()
        for key in ("sigma0", "diagonal", "popsize", "options"):
            if state[key] != mine[key]:
                raise ValueError(f"state_dict was made with {key}={state[key]!r}, this CMAES has {mine[key]!r}")
        if not torch.equal(state["x0"], mine["x0"]):
            raise ValueError("state_dict was made from another x0")
        self.es, self._told = self._new_es(), []
        for row in state["fitness"].tolist():  # replay: the same samples, told the same fitness
            self._asked = self.es.ask()
            self._tell(None, torch.tensor(row, dtype=torch.float64))
