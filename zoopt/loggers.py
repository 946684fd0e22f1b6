"""Metrics loggers beside the run folder's ``metrics.jsonl`` (always written): TensorBoard, MLflow
and Weights & Biases, each used where its package is installed (the optional extras
``zoopt-engine[tensorboard]``, ``[mlflow]``, ``[wandb]``).

Every logger has the same two methods: ``log(record)`` takes one metrics record (a dict; its
numeric values are logged, against the record's step key: ``env_steps``, ``step``,
``generation``, ``epoch`` or ``nfev``, the first present) and ``close()``. Choose them by
name with :func:`make_loggers`; a backend whose package is missing raises an ImportError
naming the extra to install.
"""
from __future__ import annotations

import importlib
import math
import numbers
import os

STEP_KEYS = ("env_steps", "step", "generation", "epoch", "nfev")


def scalars(record: dict) -> dict:
    """The finite numbers of ``record`` (bools and strings left out), as floats."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)}


def step_of(record: dict, count: int) -> int:
    """The record's x-axis value: its first step key, else its position in the log."""
    for key in STEP_KEYS:
        value = record.get(key)
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    return count


class MissingExtra(ImportError):
    """An optional backend's package is not installed (the CLI prints this as one line)."""


# backend name (and extra) -> the package it needs
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def _require(backend: str, module: str | None = None):
    """Import ``module`` (default: the backend's package); a missing one names the extra to install."""
    package = PACKAGES[backend]
    try:
        return importlib.import_module(module or package)
    except ImportError as exc:
        raise MissingExtra(f"the {backend} logger needs the {package} package, which is not installed "
                          f"(pip install 'zoopt-engine[{backend}]'): {exc}") from None


class TensorBoardLogger:
    """Scalars into TensorBoard event files under ``RUN_DIR/tensorboard`` (torch's SummaryWriter)."""

    def __init__(self, run_dir: str):
        _require("tensorboard")
        writer = _require("tensorboard", "torch.utils.tensorboard").SummaryWriter
        self.writer, self.count = writer(log_dir=os.path.join(run_dir, "tensorboard")), 0

    def log(self, record: dict) -> None:
        step = step_of(record, self.count)
        self.count += 1
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        self.writer.close()


class MLflowLogger:
    """One MLflow run named after the run folder, in MLflow's own tracking store
    (``MLFLOW_TRACKING_URI``, by default ``./mlruns``)."""

    def __init__(self, run_dir: str):
        self.mlflow, self.count = _require("mlflow"), 0
        self.run = self.mlflow.start_run(run_name=os.path.basename(os.path.abspath(run_dir)))

    def log(self, record: dict) -> None:
        step = step_of(record, self.count)
        self.count += 1
        self.mlflow.log_metrics(scalars(record), step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class WandbLogger:
    """One W&B run named after the run folder (project ``zoopt``, files under ``RUN_DIR``); the
    record's step key is logged with it, so W&B can plot against it."""

    def __init__(self, run_dir: str, project: str = "zoopt"):
        wandb = _require("wandb")
        self.run = wandb.init(project=project, name=os.path.basename(os.path.abspath(run_dir)), dir=run_dir)

    def log(self, record: dict) -> None:
        self.run.log(scalars(record))

    def close(self) -> None:
        self.run.finish()


BACKENDS = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger, "wandb": WandbLogger}


class Loggers:
    """Several loggers as one: ``log`` and ``close`` go to each (all are closed even if one fails)."""

    def __init__(self, loggers=()):
        self.loggers = list(loggers)

    def log(self, record: dict) -> None:
        for logger in self.loggers:
            logger.log(record)

    def close(self) -> None:
        errors = []
        for logger in self.loggers:
            try:
                logger.close()
            except Exception as exc:  # close the others first, then report
                errors.append(exc)
        if errors:
            raise errors[0]


def make_loggers(names, run_dir: str) -> Loggers:
    """The loggers ``names`` (e.g. ``["tensorboard"]``) for the run in ``run_dir``. An unknown name is a
    ValueError; a backend whose package is missing an ImportError naming the extra. Nothing is
    started unless every backend is available."""
    names = list(dict.fromkeys(names or ()))
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise ValueError(f"logger must be one of {sorted(BACKENDS)}, got {unknown[0]!r}")
    for name in names:  # every package checked before any run is started in a backend
        _require(name)
    return Loggers(BACKENDS[n](run_dir) for n in names)


__all__ = ["BACKENDS", "MissingExtra", "Loggers", "make_loggers", "TensorBoardLogger", "MLflowLogger", "WandbLogger",
           "scalars", "step_of"]
