"""``zoopt.train``: epochs of forward-only optimizer steps with a progress bar and per-epoch metrics.

Works with any optimizer object that has ``step(batch, loss_fn) -> loss``
(``zoopt.PolyStep``, ``zoopt.EGGROLL``, ...). ``eval_fn(model) -> dict`` (or
a number, logged as ``"eval"``) runs after every epoch; its values join the
epoch record. Records go to ``metrics`` (JSON lines) when given and are
returned as a list.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Optional

from tqdm.auto import tqdm

from zoopt.metrics import JsonlLogger


def _as_batch(item):
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    raise TypeError("the loader must yield (x, y) pairs")


def train(model, loader: Iterable, loss_fn: Callable, opt, epochs: int = 1, *,
          eval_fn: Optional[Callable] = None, metrics: Optional[str] = None, progress: bool = True,
          callback: Optional[Callable] = None) -> list:
    """Run ``epochs`` passes over ``loader``, calling ``opt.step((x, y), loss_fn)`` once per batch.

    Returns one dict per epoch: ``epoch``, ``train_loss`` (mean step loss),
    ``steps``, ``seconds``, ``evaluations`` (when the optimizer counts them)
    and whatever ``eval_fn(model)`` returns. ``callback(record)`` returning
    False stops training after that epoch.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if not callable(getattr(opt, "step", None)):
        raise TypeError(f"opt must have a step(batch, loss_fn) method, got {type(opt).__name__}")
    logger = JsonlLogger(metrics)
    history = []
    try:
        total = len(loader)
    except TypeError:
        total = None
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        losses = []
        bar = tqdm(loader, total=total, disable=not progress, desc=f"epoch {epoch}/{epochs}", unit="step",
                   dynamic_ncols=True, leave=False)
        for item in bar:
            loss = float(opt.step(_as_batch(item), loss_fn))
            losses.append(loss)
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        bar.close()
        record = {"epoch": epoch, "steps": len(losses),
                  "train_loss": sum(losses) / len(losses) if losses else math.nan,
                  "seconds": time.perf_counter() - start}
        if hasattr(opt, "evaluations"):
            record["evaluations"] = int(opt.evaluations)
        if eval_fn is not None:
            result = eval_fn(model)
            record.update(result if isinstance(result, dict) else {"eval": float(result)})
        history.append(record)
        logger.log(record)
        if progress:
            shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
            tqdm.write(shown)
        if callback is not None and callback(record) is False:
            break
    return history


__all__ = ["train"]
