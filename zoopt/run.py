"""The run loop: ask -> evaluate -> tell, with budget, history, checkpoints and resume."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from zoopt import atomic
from zoopt.metrics import JsonlLogger
from zoopt.problems import Problem, VectorProblem
from zoopt.registry import make_strategy
from zoopt.strategy import as_center
from zoopt.workers import make_evaluator

CHECKPOINT_FORMAT = "zoopt.run/1"
# pycma stop conditions that mean "converged"; the others (stagnation, ill-conditioning, a flat
# fitness, sigma blown up) stop a run that is not making progress
CONVERGED = {"tolfun", "tolfunrel", "tolx", "tolfunhist", "ftarget"}
# status codes of OptimizeResult (scipy-style: 0 is success)
CONVERGED_STATUS, BUDGET_STATUS, CALLBACK_STATUS, STALLED_STATUS = 0, 1, 2, 3


@dataclass
class OptimizeResult:
    x: np.ndarray          # best point found (x0's dtype for minimize)
    fun: float             # its fitness
    nfev: int              # evaluations spent
    nit: int               # generations
    center: np.ndarray     # the strategy's final center
    history: list = field(default_factory=list)  # one dict per generation
    strategy: object = None
    success: bool = False  # True when a convergence test (tolfun, tolx, ...) stopped the run
    status: int = BUDGET_STATUS  # 0 converged, 1 budget spent, 2 callback, 3 stalled
    message: str = ""      # the stop reason in words

    def __repr__(self) -> str:
        return (f"OptimizeResult(fun={self.fun:.6g}, nfev={self.nfev}, nit={self.nit}, dim={self.x.size}, "
                f"success={self.success}, message={self.message!r})")


def save_checkpoint(path: str, strategy, nfev: int, history: list, allow_pickle: bool = False) -> None:
    """Durable atomic write (a crash mid-save leaves the previous checkpoint), loadable with
    ``torch.load(weights_only=True)`` unless ``allow_pickle``."""
    state = {"format": CHECKPOINT_FORMAT, "method": strategy.name, "dim": int(strategy.center.numel()),
             "strategy": strategy.state_dict(), "nfev": int(nfev), "history": [_plain(r) for r in history]}
    if allow_pickle:
        with atomic.atomic_open(path, "wb") as fh:
            torch.save(state, fh)
    else:
        atomic.save_torch(state, path)


def _plain(record: dict) -> dict:
    """A history record with numpy scalars (a callback may add them) as Python numbers."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in record.items()}


def load_checkpoint(path: str, strategy, allow_pickle: bool = False) -> tuple[int, list]:
    """Restore ``strategy`` from ``path``; returns ``(nfev, history)``. Whatever is wrong with the
    file is a CheckpointError (a ValueError) naming it."""
    state = atomic.load_torch(path, allow_pickle=allow_pickle)
    if not isinstance(state, dict) or not {"strategy", "nfev", "history"} <= set(state):
        keys = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise atomic.CheckpointError(f"{path}: not a zoopt run checkpoint (holds {keys})")
    nfev, history, saved = state["nfev"], state["history"], state["strategy"]
    if not isinstance(nfev, int) or nfev < 0 or not isinstance(history, list) or not isinstance(saved, dict):
        raise atomic.CheckpointError(f"{path}: not a zoopt run checkpoint (bad nfev/history/strategy fields)")
    dim = int(strategy.center.numel())
    if saved.get("name") != strategy.name:
        raise atomic.CheckpointError(f"{path}: holds a {saved.get('name')!r} run; this run uses {strategy.name!r}")
    if "dim" in state and state["dim"] != dim:
        raise atomic.CheckpointError(f"{path}: made for dimension {state['dim']}; this run has dimension {dim}")
    try:
        strategy.load_state_dict(saved)
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as exc:
        detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise atomic.CheckpointError(f"{path}: cannot resume from it ({type(exc).__name__}: {detail})") from None
    if int(strategy.center.numel()) != dim:
        raise atomic.CheckpointError(f"{path}: made for dimension {strategy.center.numel()}; "
                                     f"this run has dimension {dim}")
    return nfev, history


def _check_checkpoint_target(path: str, strategy, allow_pickle: bool) -> None:
    """Fail before the first generation rather than at the first save."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"checkpoint={path!r}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"checkpoint={path!r} is a folder; give a file path")
    if allow_pickle or strategy._pending is not None:
        return
    try:
        atomic.check_weights_only(strategy.state_dict())
    except TypeError as exc:
        raise TypeError(f"{strategy.name}'s checkpoint state cannot be saved for a weights-only load "
                        f"({exc}); pass allow_pickle=True to checkpoint it with pickle "
                        f"(then load only files you trust)") from None


def _stop_reason(stop: dict) -> tuple[bool, int, str]:
    reasons = ", ".join(f"{k}={v}" for k, v in stop.items())
    if set(stop) & CONVERGED:
        return True, CONVERGED_STATUS, f"converged ({reasons})"
    return False, STALLED_STATUS, f"stopped without converging ({reasons})"


def run(strategy, problem: Problem, budget: int, evaluator=None, *, checkpoint: Optional[str] = None,
        checkpoint_every: int = 10, resume: bool = False, progress: bool = False,
        metrics: Optional[str] = None, callback: Optional[Callable] = None,
        evaluator_options: Optional[dict] = None, address: Optional[str] = None,
        allow_pickle: bool = False) -> OptimizeResult:
    """Drive ``strategy`` on ``problem`` until ``budget`` evaluations are spent
    or the strategy's ``stop()`` holds (``result.message`` says which).

    ``evaluator``: "local", "ray" or an evaluator object; a named one is built
    with ``evaluator_options`` (e.g. ``{"num_actors": 2}`` for Ray) and closed
    when the run ends. ``address`` joins an existing Ray cluster
    (``evaluator="ray"`` only).

    With ``checkpoint`` set, the state is saved (durably, atomically) every
    ``checkpoint_every`` generations; ``resume=True`` continues from that file
    if it exists and reproduces the uninterrupted run bit for bit. Checkpoints
    load with ``torch.load(weights_only=True)``, so a file from someone else
    cannot run code; ``allow_pickle=True`` is the opt-in for strategies whose
    state needs pickle.
    """
    if not isinstance(budget, (int, np.integer)) or isinstance(budget, bool) or budget < 1:
        raise ValueError(f"budget must be a positive int (evaluations), got {budget!r}")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, np.integer)) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be an int >= 1, got {checkpoint_every!r}")
    if resume and not checkpoint:
        raise ValueError("resume=True needs checkpoint= (the file to resume from)")
    nfev, history = 0, []
    if checkpoint:
        checkpoint = os.fspath(checkpoint)
        _check_checkpoint_target(checkpoint, strategy, allow_pickle)
        if resume and os.path.exists(checkpoint):
            nfev, history = load_checkpoint(checkpoint, strategy, allow_pickle)
    owns_evaluator = evaluator is None or isinstance(evaluator, str)
    evaluator = make_evaluator(evaluator, address=address, **(evaluator_options or {}))
    logger = JsonlLogger(metrics, append=bool(history))
    logger.resume_from(history)
    success, status, message = False, BUDGET_STATUS, f"budget of {budget} evaluations spent"
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
                save_checkpoint(checkpoint, strategy, nfev, history, allow_pickle)
            if callback is not None and callback(strategy, stats) is False:
                success, status, message = False, CALLBACK_STATUS, "stopped by the callback"
                break
            stop = strategy.stop()
            if stop:
                success, status, message = _stop_reason(stop)
                break
    finally:
        bar.close()
        if owns_evaluator and hasattr(evaluator, "close"):
            evaluator.close()
    if checkpoint:
        save_checkpoint(checkpoint, strategy, nfev, history, allow_pickle)
    best = strategy.best_x if strategy.best_x is not None else strategy.center
    return OptimizeResult(x=best.detach().cpu().numpy(), fun=float(strategy.best_f), nfev=nfev,
                          nit=strategy.generation, center=strategy.mean.cpu().numpy(), history=history,
                          strategy=strategy, success=success, status=status, message=message)


# The default method, by dimension (nevergrad's NGOpt chooses the same way): full CMA-ES while its
# O(D^2) covariance is cheap, the diagonal sep-CMA-ES above, and OpenAI-ES (keyed noise,
# nothing stored per member) where pycma's D-vectors per member would dominate memory.
FULL_CMA_MAX_DIM = 100
SEP_CMA_MAX_DIM = 100_000


def default_method(dim: int) -> str:
    """The method ``minimize`` uses when none is given, for a problem of ``dim`` variables."""
    if dim <= FULL_CMA_MAX_DIM:
        return "cma_es"
    if dim <= SEP_CMA_MAX_DIM:
        return "sep_cma_es"
    return "openai_es"


def _result_dtype(x0) -> np.dtype:
    """The dtype ``minimize`` returns: x0's floating dtype (float64 for ints, lists and bfloat16)."""
    if isinstance(x0, torch.Tensor):
        return {torch.float16: np.dtype(np.float16), torch.float32: np.dtype(np.float32)}.get(
            x0.dtype, np.dtype(np.float64))
    dtype = getattr(x0, "dtype", None)
    if dtype is not None and np.issubdtype(dtype, np.floating):
        return np.dtype(dtype)
    return np.dtype(np.float64)


def minimize(fn, x0, method: Optional[str] = None, budget: int = 10_000, seed: int = 0, evaluator="local",
             *, bounds=None, vectorized: bool = True, checkpoint: Optional[str] = None,
             checkpoint_every: int = 10, resume: bool = False, progress: bool = False,
             metrics: Optional[str] = None, callback: Optional[Callable] = None,
             evaluator_options: Optional[dict] = None, address: Optional[str] = None,
             allow_pickle: bool = False, **options) -> OptimizeResult:
    """Minimize ``fn``, which maps a batch ``[N, D]`` to ``[N]``, from ``x0``.

    ``vectorized=False``: ``fn`` maps one point ``[D]`` to a scalar instead
    (called once per point). ``fn`` gets a torch tensor when ``x0`` is one and
    a numpy array otherwise. ``fn`` may also be a Problem.

    ``method``: "cma_es", "sep_cma_es", "openai_es", "random" and the methods
    other modules register (e.g. "polystep", "eggroll"). The default
    (``None``) chooses by the dimension D, as nevergrad's NGOpt does:
    CMA-ES for D <= 100, sep-CMA-ES (diagonal covariance) for D <= 100,000,
    OpenAI-ES above. ``options`` go to the strategy (popsize, sigma, lr, ...).

    ``bounds=(lower, upper)``: scalars or length-D arrays (``None`` for no
    bound) or a ``scipy.optimize.Bounds``; ``fn`` sees every point clipped into
    the box, and ``result.x`` / ``result.center`` are clipped too.

    The run stops when ``budget`` evaluations are spent or the strategy's
    stop conditions hold (CMA-ES: pycma's defaults, tolfun = tolx = 1e-11, ...);
    ``result.success``, ``status`` and ``message`` say which, as in scipy.
    ``result.x`` has x0's dtype (float64 in, float64 out) though the search
    runs in float32.
    """
    center = as_center(x0)
    if isinstance(fn, Problem):
        if bounds is not None or not vectorized:
            raise ValueError("bounds= and vectorized=False apply to a function fn, not to a Problem")
        problem = fn
    else:
        problem = VectorProblem(fn, center.numel(), array="torch" if isinstance(x0, torch.Tensor) else "numpy",
                                vectorized=vectorized, bounds=bounds)
        if problem.bounds is not None:
            outside = torch.nonzero(~torch.eq(problem.clip(center), center)).flatten()
            if outside.numel():
                i = int(outside[0])
                raise ValueError(f"x0 is outside bounds at index {i}: {float(center[i])} not in "
                                 f"[{float(problem.bounds[0][i])}, {float(problem.bounds[1][i])}]")
    chosen = method is None
    if chosen:
        method = default_method(center.numel())
    try:
        strategy = make_strategy(method, center, seed=seed, **options)
    except TypeError as exc:
        if not chosen:
            raise
        raise TypeError(f"{exc} (minimize chose {method!r} for dimension {center.numel()}; "
                        f"pass method= for another)") from None
    result = run(strategy, problem, budget, evaluator, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                 resume=resume, progress=progress, metrics=metrics, callback=callback,
                 evaluator_options=evaluator_options, address=address, allow_pickle=allow_pickle)
    dtype = _result_dtype(x0)
    if isinstance(problem, VectorProblem):
        result.x = problem.clip(torch.as_tensor(result.x)).numpy()
        result.center = problem.clip(torch.as_tensor(result.center)).numpy()
    result.x, result.center = result.x.astype(dtype), result.center.astype(dtype)
    return result
