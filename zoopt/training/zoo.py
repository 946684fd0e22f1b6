"""Train a zoo network (``zoopt.problems.zoo``) with a named method: data, model, optimizer,
evaluator, :func:`zoopt.train`, summary and figure in one call (``zoopt train`` and
``scripts/bench_nondiff.py`` both call it).

Every epoch scores validation and test accuracy; the best epoch is chosen on
validation accuracy (never on test).
"""
from __future__ import annotations

import json
import os
from typing import Optional

import torch

from .methods import check_method, make_optimizer
from .scores import split_scorer, summarize

CONFIG_KEYS = ("model", "method", "data", "limit_train", "limit_eval", "batch_size", "seed", "options",
               "polystep_overrides")


def default_run_dir(model: str, method: str, data: str, seed: int) -> str:
    return os.path.join("runs", f"train-{model}-{method}-{data}-seed{seed}")


def train_zoo(model_name: str, method: str = "polystep", *, data="digits", epochs: int = 30, batch_size: int = 512,
              seed: int = 0, limit_train: Optional[int] = None, limit_eval: Optional[int] = None,
              options: Optional[dict] = None, polystep_overrides: Optional[dict] = None, workers: int = 1,
              backend: Optional[str] = None, address: Optional[str] = None,
              evaluator_options: Optional[dict] = None, out: Optional[str] = None,
              resume: bool = False, force: bool = False, time_limit: Optional[float] = None,
              log_every: Optional[int] = None, checkpoint_every: Optional[int] = None,
              checkpoint_seconds: float = 60.0, progress: bool = False, device: str = "cpu",
              total_steps: Optional[int] = None, loggers=None) -> dict:
    """Train zoo model ``model_name`` with ``method``; returns the summary (best epoch by validation accuracy
    with its test accuracy, last epoch, evaluations, steps, stepping time) with the per-epoch ``records``.

    ``data`` is ``"mnist"``, ``"digits"`` or a dict of split tensors (``x_train`` ... ``y_test``).
    ``workers > 1`` (or ``backend="ray"``) evaluates the members on Ray actors: the model and the
    training split go to each actor once, each generation names its batch by ``(epoch, k, batch_size)``.
    ``total_steps`` is the length of the methods' schedules (default: ``epochs`` times the steps per epoch;
    a run stopped by ``time_limit`` keeps the schedules of the nominal epochs; a resumed run keeps the
    length it started with, so more epochs go on at the schedules' final values).
    ``address`` joins an existing Ray cluster (``"auto"`` or ``"host:port"``) instead of a private local one.
    ``out`` is the run folder (see :func:`zoopt.training.runs.prepare_run_dir` for ``resume``/``force``).
    ``loggers`` (e.g. :func:`zoopt.loggers.make_loggers`) get every epoch's record too (not closed here).
    """
    from zoopt.problems.zoo import MODELS, make_model, zoo_data
    from zoopt.train import train
    from zoopt.workers import resolve_backend

    if model_name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {model_name!r}")
    check_method(method)  # before a run folder is made
    backend = resolve_backend(workers, backend)
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r} ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: torch sees no CUDA device on this machine; use --device cpu")
    data_name = data if isinstance(data, str) else "custom"
    if isinstance(data, str):
        data = zoo_data(data, limit_train=limit_train, limit_eval=limit_eval)
    data = {k: v.to(device) for k, v in data.items()}
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):  # checked before a run folder exists
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    n_train = len(data["x_train"])
    if batch_size > n_train:
        raise ValueError(f"batch_size must be <= the {n_train} training examples, got {batch_size}")
    # the schedules' length is fixed when a run starts: resuming with more epochs keeps it
    schedule_steps = (_stored_schedule(out) if resume and out else None) or total_steps or \
        epochs * (n_train // batch_size)
    config = {"model": model_name, "method": method, "data": data_name, "limit_train": limit_train,
              "limit_eval": limit_eval, "batch_size": batch_size, "seed": seed, "options": dict(options or {}),
              "polystep_overrides": {k: v for k, v in (polystep_overrides or {}).items() if v is not None},
              "schedule_steps": schedule_steps}
    if out:
        from .runs import prepare_run_dir

        prepare_run_dir(out, config, resume=resume, force=force)
    n_cls = int(data["y_train"].max()) + 1
    model = make_model(model_name, seed=seed, in_features=data["x_train"].shape[1],
                       num_classes=max(n_cls, 10)).to(device)
    train_split = (data["x_train"], data["y_train"])
    remote = backend == "ray"
    opt = make_optimizer(method, model, model_name=model_name, total_steps=schedule_steps,
                         seed=seed, options=options, polystep_overrides=polystep_overrides,
                         evaluator="ray" if remote else None,
                         evaluator_options={"num_actors": workers, **({"address": address} if address else {}),
                                            **(evaluator_options or {})} if remote else None,
                         data=train_split if remote else None, data_seed=seed)
    try:
        records = train(model, train_split, torch.nn.CrossEntropyLoss(), opt, epochs, batch_size=batch_size,
                        seed=seed, eval_fn=split_scorer(data, getattr(opt, "eval_models", {"": model})),
                        select="val_acc", out=out, resume=resume, config=config, log_every=log_every,
                        checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds,
                        time_limit=time_limit, progress=progress, label=f"{model_name}/{method}",
                        loggers=loggers)
    finally:
        if hasattr(opt, "close"):
            opt.close()
    summary = {"method": method, "model": model_name, "data": data_name,
               "params": sum(p.numel() for p in model.parameters()), **summarize(records)}
    if hasattr(opt, "evaluations_per_step"):
        summary["candidates_per_step"] = int(opt.evaluations_per_step)
    if out:
        _write_results(out, summary)
    return {**summary, "records": records}


def _stored_schedule(out: str):
    """The schedule length recorded in ``out/run.json`` (None when there is none)."""
    from .runs import RUN_FILE

    path = os.path.join(out, RUN_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            steps = json.load(fh).get("schedule_steps")
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"resume: {path} is not a run description ({exc})") from None
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"resume: {path}: schedule_steps must be an int >= 1, got {steps!r}")
    return steps


def _write_results(out: str, summary: dict) -> None:
    from zoopt.atomic import write_text

    from .figures import plot_run

    write_text(os.path.join(out, "summary.json"), json.dumps(summary, indent=2) + "\n")
    plot_run(out)  # the same figure ``zoopt plot`` draws


__all__ = ["train_zoo", "default_run_dir"]
