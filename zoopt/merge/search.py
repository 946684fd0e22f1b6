"""The two stages of Evo-Merging, over any ``evaluate_many([(alpha, beta), ...]) -> losses``.

Stage 1 (sparsity): alpha by CMA-ES from 1 (sigma0 0.05, popsize 20) in [0, 1]
with beta fixed at 1/N, fitness = loss + l1_alpha * mean|alpha|.
Stage 2 (signed scales): beta by CMA-ES from 1/N within +-1.5 with alpha*
fixed, fitness = loss + l1_beta * mean|beta|.
Budgets are counted in queries (default 400 + 800). The best candidate of each
stage is kept (stage 2 fixes alpha* from stage 1's), and the final merge is the
one best over both stages by penalised fitness, as the reference code keeps a
single best: when no stage-2 candidate beats stage 1's best, the result is
stage 1's (alpha*, beta = 1/N), not stage 2's best.

Ablations: ``stages=("alpha",)`` (alpha only, beta uniform), ``stages=("beta",)``
with ``beta_init=0`` (LoRAHub: stage 2 alone from 0), ``beta_nonneg=True``.
"""
from __future__ import annotations

import numpy as np

from zoopt.cma_es import CMAES

STAGES = ("alpha", "beta")


class EvoMerge:
    def __init__(self, n: int, popsize: int = 20, sigma0: float = 0.05, seed: int = 42,
                 budget_alpha: int = 400, budget_beta: int = 800, l1_alpha: float = 0.05, l1_beta: float = 0.05,
                 beta_bound: float = 1.5, stages=STAGES, beta_init: float | None = None, beta_nonneg: bool = False):
        if n < 1:
            raise ValueError(f"n (pool size) must be >= 1, got {n}")
        if any(s not in STAGES for s in stages) or not stages:
            raise ValueError(f"stages must be a non-empty subset of {STAGES}, got {stages}")
        for name, budget in (("budget_alpha", budget_alpha), ("budget_beta", budget_beta)):
            if budget < 0:
                raise ValueError(f"{name} must be >= 0, got {budget}")
        self.n, self.popsize, self.sigma0, self.seed = n, popsize, sigma0, seed
        self.budgets = {"alpha": budget_alpha, "beta": budget_beta}
        self.l1 = {"alpha": l1_alpha, "beta": l1_beta}
        self.bounds = {"alpha": (0.0, 1.0), "beta": (0.0 if beta_nonneg else -beta_bound, beta_bound)}
        self.stages = tuple(stages)
        self.beta_init = 1.0 / n if beta_init is None else beta_init
        self.state = {"stage_index": 0, "queries": 0, "stage_queries": 0, "best": {},
                      "alpha_star": [1.0] * n, "history": []}

    def _strategy(self, stage: str) -> CMAES:
        x0 = np.ones(self.n) if stage == "alpha" else np.full(self.n, self.beta_init)
        lo, hi = self.bounds[stage]
        return CMAES(np.clip(x0, lo, hi), popsize=self.popsize, sigma=self.sigma0, seed=self.seed,
                     options={"bounds": [lo, hi]})

    def _controls(self, stage: str, x: np.ndarray):
        lo, hi = self.bounds[stage]
        x = np.clip(x, lo, hi)
        if stage == "alpha":
            return x.tolist(), [1.0 / self.n] * self.n
        return list(self.state["alpha_star"]), x.tolist()

    def run(self, evaluate_many, on_generation=None) -> dict:
        """Run both stages; ``on_generation(state)`` is called after each generation
        (progress, or saving the losses a resumed run replays: the search is a pure
        function of its seed and the losses it is told)."""
        st = self.state
        while st["stage_index"] < len(self.stages):
            stage = self.stages[st["stage_index"]]
            es = self._strategy(stage)
            while st["stage_queries"] + self.popsize <= self.budgets[stage]:
                X = np.asarray(es.ask().points(), dtype=np.float64)
                pairs = [self._controls(stage, x) for x in X]
                losses = np.asarray(evaluate_many(pairs), dtype=np.float64)
                x_used = [np.asarray(p[0] if stage == "alpha" else p[1]) for p in pairs]
                fitness = losses + self.l1[stage] * np.array([np.abs(x).mean() for x in x_used])
                es.tell(fitness)
                st["queries"] += len(pairs)
                st["stage_queries"] += len(pairs)
                i = int(np.argmin(fitness))
                best = st["best"].get(stage)
                if best is None or fitness[i] < best["fitness"]:
                    st["best"][stage] = {"fitness": float(fitness[i]), "loss": float(losses[i]),
                                         "alpha": list(pairs[i][0]), "beta": list(pairs[i][1])}
                st["history"].append({"stage": stage, "queries": st["queries"], "min_loss": float(losses.min()),
                                      "best_fitness": st["best"][stage]["fitness"]})
                if on_generation:
                    on_generation(st)
            if stage == "alpha" and "alpha" in st["best"]:
                st["alpha_star"] = st["best"]["alpha"]["alpha"]
            st.update(stage_index=st["stage_index"] + 1, stage_queries=0)
            if on_generation:
                on_generation(st)
        return self.result()

    def result(self) -> dict:
        best = self.state["best"]
        if not best:
            raise RuntimeError("no generation ran: the budgets are smaller than one population")
        stage = min(best, key=lambda s: best[s]["fitness"])  # ties keep the earlier stage
        top = best[stage]
        return {"alpha": top["alpha"], "beta": top["beta"], "loss": top["loss"], "fitness": top["fitness"],
                "stage": stage, "queries": self.state["queries"], "stages": dict(best),
                "history": self.state["history"]}
