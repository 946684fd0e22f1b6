"""``zoopt.train``: the training loop of every module optimizer (epochs, logs, checkpoints, resume).

Works with any optimizer that has ``step(batch, loss_fn) -> loss`` (``zoopt.PolyStep``,
``zoopt.EGGROLL``, the ES facades of :mod:`zoopt.training`, ...). ``data`` is either

* ``(x, y)`` tensors with ``batch_size``: epoch ``e`` visits the rows in the order
  :func:`zoopt.problems.epoch_order` draws from ``(seed, e)``, ``len(x) // batch_size``
  batches per epoch. When the optimizer holds the same ``data`` (``data=`` of the
  facades, same ``data_seed``), a batch is handed over as ``(epoch, k, batch_size)``,
  so out-of-process evaluators ship three ints instead of the rows; or
* an iterable of ``(x, y)`` pairs (a DataLoader).

With ``out`` the loop keeps a run folder: ``metrics.jsonl`` (one record per epoch),
``steps.jsonl`` (one record every ``log_every`` steps), ``checkpoint.pt`` (one
format for every method, written atomically and loadable with
``torch.load(weights_only=True)``: model, optimizer state, records and the position
inside the epoch) every ``checkpoint_every`` steps or ``checkpoint_seconds`` of work
and at every epoch end, and ``best.pt`` (the model of the best epoch by ``select``,
e.g. validation accuracy). ``resume=True`` goes on from ``checkpoint.pt`` exactly
where it stopped, mid-epoch included: the same steps as an uninterrupted run (a
loader must then yield the same batches in each epoch). ``config`` (what defines
the run: model, data, seed, ...) is stored and must match on resume.

Ctrl-C stops after the step in flight, writes the checkpoint and raises
:class:`~zoopt.training.interrupt.TrainingInterrupted` (a KeyboardInterrupt); a second
Ctrl-C interrupts at once.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import time
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from zoopt.atomic import load_torch, save_torch
from zoopt.metrics import JsonlLogger
from zoopt.training.interrupt import TrainingInterrupted, stop_on_interrupt

CHECKPOINT_FORMAT = "zoopt-train-1"
CHECKPOINT, BEST, METRICS, STEPS = "checkpoint.pt", "best.pt", "metrics.jsonl", "steps.jsonl"


def _positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _holds(opt, x, seed: int) -> bool:
    """Whether ``opt`` draws the rows of ``x`` itself from ``(epoch, k, batch_size)`` in the same order:
    its problem's batches (the PolyStep and EGGROLL facades) or its ``data``/``data_seed``."""
    from zoopt.problems.module import Batches

    batches = getattr(getattr(opt, "problem", None), "batches", None)
    if isinstance(batches, Batches):
        return batches.x is x and batches.seed == seed
    held = getattr(opt, "data", None)
    return (isinstance(held, (tuple, list)) and len(held) == 2 and held[0] is x
            and int(getattr(opt, "data_seed", 0)) == seed)


class _Batches:
    """The batches of one epoch, from batch ``start`` on, as the optimizer should receive them."""

    def __init__(self, data, batch_size, seed, opt):
        self.tensors = (isinstance(data, (tuple, list)) and len(data) == 2
                        and all(isinstance(t, torch.Tensor) for t in data))
        self.data, self.seed = data, int(seed)
        if self.tensors:
            x, y = data
            if len(x) != len(y):
                raise ValueError(f"data: x and y must have the same length, got {len(x)} and {len(y)}")
            self.batch_size = _positive_int("batch_size", batch_size)
            if batch_size > len(x):
                raise ValueError(f"batch_size must be <= the {len(x)} training examples, got {batch_size}")
            self.per_epoch = len(x) // batch_size
            self.named = _holds(opt, x, self.seed)
        else:
            if batch_size is not None:
                raise ValueError("batch_size goes with data=(x, y); a loader makes its own batches")
            try:
                self.per_epoch = len(data)
            except TypeError:
                self.per_epoch = None

    def epoch(self, epoch: int, start: int):
        if not self.tensors:
            for item in itertools.islice(iter(self.data), start, None):
                if not (isinstance(item, (tuple, list)) and len(item) >= 2):
                    raise TypeError("the loader must yield (x, y) pairs")
                yield item[0], item[1]
            return
        from zoopt.problems import epoch_order

        x, y = self.data
        b = self.batch_size
        order = None if self.named else epoch_order(len(x), self.seed, epoch)
        for k in range(start, self.per_epoch):
            yield (epoch, k, b) if self.named else (x[order[k * b:(k + 1) * b]], y[order[k * b:(k + 1) * b]])


def _evaluations(opt):
    from zoopt.training.methods import evaluations

    return evaluations(opt)


def _read_checkpoint(path: str, config: Optional[dict]) -> dict:
    state = load_torch(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"resume: {path} is not a zoopt training checkpoint (format "
                         f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}, "
                         f"expected {CHECKPOINT_FORMAT!r})")
    stored = state.get("config") or {}
    if config is not None:
        diff = [k for k in sorted(set(stored) | set(config)) if stored.get(k) != config.get(k)]
        if diff:
            shown = ", ".join(f"{k}={stored.get(k)!r} there, {config.get(k)!r} here" for k in diff)
            raise ValueError(f"resume: {path} belongs to another run ({shown}); use another --out or drop --resume")
    return state


def _restore(path, state, model, opt):
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"resume: the model in {path} does not fit this model ({first[:200]})") from None
    try:
        opt.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"resume: the optimizer state in {path} does not fit this optimizer ({exc})") from None


def _read_steps(path: str, upto: int) -> list:
    """The step records of an earlier run up to step ``upto`` (a torn last line is dropped)."""
    if not os.path.exists(path):
        return []
    kept = []
    with open(path) as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                break
            if rec.get("step", math.inf) <= upto:
                kept.append(rec)
    return kept


def train(model, data, loss_fn: Callable, opt, epochs: int = 1, *, batch_size: Optional[int] = None,
          seed: int = 0, eval_fn: Optional[Callable] = None, select: Optional[str] = None,
          out: Optional[str] = None, metrics: Optional[str] = None, resume: bool = False,
          config: Optional[dict] = None, checkpoint_every: Optional[int] = None, checkpoint_seconds: float = 60.0,
          log_every: Optional[int] = None, time_limit: Optional[float] = None, progress: bool = True,
          callback: Optional[Callable] = None, label: str = "", loggers=None) -> list:
    """Train ``model`` with ``opt`` for ``epochs`` passes over ``data`` (see the module doc).

    Returns one record per epoch: ``epoch``, ``step`` (steps so far), ``steps``
    (this epoch), ``train_loss`` (mean step loss of the epoch), ``evaluations``
    (member forward passes so far), ``train_time_s`` (stepping time so far),
    ``time_per_step_s``, ``seconds`` (the epoch's wall time) and whatever
    ``eval_fn(model)`` returns (a dict, or a number logged as ``"eval"``).
    ``select`` names the record value whose highest epoch is kept as ``best.pt``.
    ``time_limit`` stops after that many seconds of stepping; ``callback(record)``
    returning False stops after that epoch. ``metrics`` (a path) logs epochs
    without a run folder. ``loggers`` (e.g. :func:`zoopt.loggers.make_loggers`; not closed here)
    get each epoch's record too.
    """
    _positive_int("epochs", epochs)
    _positive_int("checkpoint_every", checkpoint_every, allow_none=True)
    _positive_int("log_every", log_every, allow_none=True)
    if not callable(getattr(opt, "step", None)):
        raise TypeError(f"opt must have a step(batch, loss_fn) method, got {type(opt).__name__}")
    batches = _Batches(data, batch_size, seed, opt)
    if resume and not out:
        raise ValueError("resume needs out (the run folder that holds checkpoint.pt)")
    paths = {}
    if out:
        os.makedirs(out, exist_ok=True)
        paths = {k: os.path.join(out, v) for k, v in
                 (("ckpt", CHECKPOINT), ("best", BEST), ("metrics", METRICS), ("steps", STEPS))}
    metrics_path = paths.get("metrics", metrics)

    records, best, epoch_losses = [], None, []
    epoch0, k0, step, train_time = 0, 0, 0, 0.0
    if resume:
        if not os.path.exists(paths["ckpt"]):
            raise FileNotFoundError(f"resume: no checkpoint at {paths['ckpt']}")
        state = _read_checkpoint(paths["ckpt"], config)
        _restore(paths["ckpt"], state, model, opt)
        records, best = list(state["records"]), state["best"]
        pos = state["position"]
        epoch0, k0, step, train_time = int(pos["epoch"]), int(pos["k"]), int(pos["step"]), float(pos["train_time_s"])
        epoch_losses = list(pos["epoch_losses"])
    metrics_log, steps_log = JsonlLogger(metrics_path, append=True), JsonlLogger(paths.get("steps"), append=True)
    metrics_log.rewrite(records)  # the logs restart where the checkpoint stands
    steps_log.rewrite(_read_steps(paths["steps"], step) if resume else [])

    def checkpoint(epoch, k, losses):
        if not out:
            return
        save_torch({"format": CHECKPOINT_FORMAT, "config": config or {}, "model": model.state_dict(),
                    "optimizer": opt.state_dict(), "records": records, "best": best,
                    "position": {"epoch": epoch, "k": k, "step": step, "train_time_s": train_time,
                                 "epoch_losses": list(losses)}}, paths["ckpt"])

    total = epochs * batches.per_epoch if batches.per_epoch and time_limit is None else None
    bar = tqdm(total=total, initial=step, disable=not progress, unit="step", dynamic_ncols=True,
               desc=label or "train")
    window, saved_at, saved_step = [], time.perf_counter(), step
    out_of_time = False

    def notice():
        tqdm.write("stopping after this step to write a checkpoint (Ctrl-C again to abort at once)")

    try:
        with stop_on_interrupt(notice) as stop:
            for epoch in range(epoch0, epochs):
                if epoch != epoch0:
                    epoch_losses = []
                epoch_start = time.perf_counter()
                start = k0 if epoch == epoch0 else 0
                bar.set_description(f"{label + ' ' if label else ''}epoch {epoch + 1}/{epochs}")
                for k, batch in enumerate(batches.epoch(epoch, start), start=start):
                    t0 = time.perf_counter()
                    loss = float(opt.step(batch, loss_fn))
                    train_time += time.perf_counter() - t0
                    step += 1
                    epoch_losses.append(loss)
                    window.append(loss)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
                    if log_every and step % log_every == 0 and "steps" in paths:
                        steps_log.log({"step": step, "epoch": epoch + 1, "train_loss": sum(window) / len(window),
                                       "train_loss_min": min(window), "train_loss_max": max(window),
                                       "evaluations": _evaluations(opt), "train_time_s": train_time})
                        window = []
                    due = (checkpoint_every is not None and step - saved_step >= checkpoint_every) or \
                        time.perf_counter() - saved_at >= checkpoint_seconds
                    if out and (due or stop.requested):
                        checkpoint(epoch, k + 1, epoch_losses)
                        saved_at, saved_step = time.perf_counter(), step
                    if stop.requested:
                        where = f"; checkpoint {paths['ckpt']} (--resume / resume=True goes on from it)" if out else ""
                        raise TrainingInterrupted(f"interrupted at epoch {epoch + 1}, step {step}{where}")
                    if time_limit is not None and train_time >= time_limit:
                        out_of_time = True
                        break
                rec = {"epoch": epoch + 1, "step": step, "steps": len(epoch_losses),
                       "train_loss": sum(epoch_losses) / len(epoch_losses) if epoch_losses else math.nan,
                       "evaluations": _evaluations(opt), "train_time_s": train_time,
                       "time_per_step_s": train_time / max(1, step), "seconds": time.perf_counter() - epoch_start}
                if eval_fn is not None:
                    result = eval_fn(model)
                    rec.update(result if isinstance(result, dict) else {"eval": float(result)})
                records.append(rec)
                if loggers is not None:
                    loggers.log(rec)
                metrics_log.log(rec)
                if select is not None and (best is None or rec[select] > best[select]):
                    best = rec
                    if out:
                        save_torch(model.state_dict(), paths["best"])
                checkpoint(epoch + 1, 0, [])
                saved_at, saved_step = time.perf_counter(), step
                if progress:
                    tqdm.write(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in rec.items()))
                if out_of_time or (callback is not None and callback(rec) is False):
                    break
    finally:
        bar.close()
    return records


__all__ = ["train", "TrainingInterrupted", "CHECKPOINT_FORMAT"]
