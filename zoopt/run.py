"""The run loop: ask -> evaluate -> tell, with budget, history, checkpoints and resume."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from zoopt.metrics import JsonlLogger
from zoopt.problems import Problem, VectorProblem
from zoopt.registry import make_strategy
from zoopt.strategy import as_center
from zoopt.workers import make_evaluator


@dataclass
class OptimizeResult:
    x: np.ndarray          # best point found
    fun: float             # its fitness
    nfev: int              # evaluations spent
    nit: int               # generations
    center: np.ndarray     # the strategy's final center
    history: list = field(default_factory=list)  # one dict per generation
    strategy: object = None

    def __repr__(self) -> str:
        return f"OptimizeResult(fun={self.fun:.6g}, nfev={self.nfev}, nit={self.nit}, dim={self.x.size})"


def save_checkpoint(path: str, strategy, nfev: int, history: list) -> None:
    """Atomic write: a crash mid-save never leaves a torn checkpoint."""
    tmp = f"{path}.tmp"
    torch.save({"strategy": strategy.state_dict(), "nfev": nfev, "history": history}, tmp)
    os.replace(tmp, path)


def run(strategy, problem: Problem, budget: int, evaluator=None, *, checkpoint: Optional[str] = None,
        checkpoint_every: int = 10, resume: bool = False, progress: bool = False,
        metrics: Optional[str] = None, callback: Optional[Callable] = None,
        evaluator_options: Optional[dict] = None) -> OptimizeResult:
    """Drive ``strategy`` on ``problem`` until ``budget`` evaluations are spent.

    ``evaluator``: "local", "ray" or an evaluator object; a named one is built
    with ``evaluator_options`` (e.g. ``{"num_actors": 2}`` for Ray) and closed
    when the run ends.

    With ``checkpoint`` set, the state is saved every ``checkpoint_every``
    generations; ``resume=True`` continues from that file if it exists and
    reproduces the uninterrupted run bit for bit.
    """
    if not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget must be a positive int (evaluations), got {budget!r}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    owns_evaluator = evaluator is None or isinstance(evaluator, str)
    evaluator = make_evaluator(evaluator, **(evaluator_options or {}))
    nfev, history = 0, []
    if resume and checkpoint and os.path.exists(checkpoint):
        state = torch.load(checkpoint, weights_only=False)
        strategy.load_state_dict(state["strategy"])
        nfev, history = state["nfev"], state["history"]
    logger = JsonlLogger(metrics)
    for record in history:
        logger.log(record)
    bar = tqdm(total=budget, initial=nfev, disable=not progress, unit="eval", dynamic_ncols=True)
    try:
        while nfev < budget:
            spec = strategy.ask()
            fitness = evaluator(problem, spec)
            stats = strategy.tell(fitness)
            nfev += spec.popsize
            stats["nfev"] = nfev
            history.append(stats)
            logger.log(stats)
            bar.update(spec.popsize)
            bar.set_postfix(best=f"{strategy.best_f:.4g}", refresh=False)
            if checkpoint and strategy.generation % checkpoint_every == 0:
                save_checkpoint(checkpoint, strategy, nfev, history)
            if callback is not None and callback(strategy, stats) is False:
                break
            if strategy.stop():
                break
    finally:
        bar.close()
        if owns_evaluator and hasattr(evaluator, "close"):
            evaluator.close()
    if checkpoint:
        save_checkpoint(checkpoint, strategy, nfev, history)
    best = strategy.best_x if strategy.best_x is not None else strategy.center
    return OptimizeResult(x=best.detach().cpu().numpy(), fun=float(strategy.best_f), nfev=nfev,
                          nit=strategy.generation, center=strategy.mean.cpu().numpy(), history=history,
                          strategy=strategy)


def minimize(fn, x0, method: str = "openai_es", budget: int = 10_000, seed: int = 0, evaluator="local",
             *, checkpoint: Optional[str] = None, checkpoint_every: int = 10, resume: bool = False,
             progress: bool = False, metrics: Optional[str] = None, callback: Optional[Callable] = None,
             evaluator_options: Optional[dict] = None, **options) -> OptimizeResult:
    """Minimize ``fn``, which maps a batch ``[N, D]`` to ``[N]``, from ``x0``.

    ``method``: "openai_es", "cma_es", "sep_cma_es", "random" and the methods
    other modules register (e.g. "polystep", "eggroll"). ``options`` go to the
    strategy (popsize, sigma, lr, ...). ``fn`` gets a torch tensor when ``x0``
    is one and a numpy array otherwise. ``fn`` may also be a Problem.
    """
    center = as_center(x0)
    if isinstance(fn, Problem):
        problem = fn
    else:
        problem = VectorProblem(fn, center.numel(), array="torch" if isinstance(x0, torch.Tensor) else "numpy")
    strategy = make_strategy(method, center, seed=seed, **options)
    return run(strategy, problem, budget, evaluator, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
               resume=resume, progress=progress, metrics=metrics, callback=callback,
               evaluator_options=evaluator_options)
