"""The main job: a step-activation network on scikit-learn's digits, trained by
OpenAI-ES. Backprop gets a zero gradient through the floor steps; ES does not
need one.

The default 300 generations of 128 members take about 14 CPU-seconds (one torch
thread, startup included): measured 21 s wall at load average 5 and 55 s at load
average 11 on a shared 2-core machine. The run folder gets ``metrics.jsonl``
(one record per generation: the population's loss mean/min/max, and the
center's validation and test accuracy every ``eval_every`` generations),
``learning_curve.png`` (:func:`zoopt.training.figures.plot_run`, which ``zoopt
plot`` also uses), ``model.pt`` and ``run.json``.
"""
from __future__ import annotations

import os
import time

import torch

from zoopt import atomic
from zoopt.metrics import JsonlLogger
from zoopt.openai_es import OpenAIES
from zoopt.training.figures import plot_run
from zoopt.training.runs import prepare_run_dir
from zoopt.problems import ModuleProblem, load_flat
from zoopt.problems.data import load_digits_split
from zoopt.problems.nets import StepMLP
from zoopt.run import run


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def backprop_gradient_norm(model, x, y, loss_fn) -> float:
    """Norm of the first layer's gradient: zero, because the steps block it."""
    model.zero_grad()
    loss_fn(model(x), y).backward()
    norm = float(model.fc1.weight.grad.norm())
    model.zero_grad()
    return norm


def run_demo(out: str = "runs/demo", generations: int = 300, popsize: int = 128, sigma: float = 0.1,
             lr: float = 0.03, batch_size: int = 256, hidden: int = 32, seed: int = 0,
             eval_every: int = 10, progress: bool = True, force: bool = False, loggers=(), workers: int = 1,
             backend: str | None = None, address: str | None = None) -> dict:
    """Train the demo network into the run folder ``out`` (an existing run there is replaced only with
    ``force``); ``loggers`` names extra loggers (:func:`zoopt.loggers.make_loggers`); ``workers`` > 1
    (or ``backend="ray"``, or a cluster ``address``) evaluates the members on Ray actors. Returns a summary."""
    from zoopt.loggers import make_loggers
    from zoopt.workers import resolve_backend

    backend = resolve_backend(workers, backend, address)
    torch.manual_seed(seed)
    extra = make_loggers(loggers, out)  # a missing backend fails before the run folder is touched
    prepare_run_dir(out, {"title": "zoopt demo: step-activation MLP on digits, OpenAI-ES", "generations": generations,
                          "popsize": popsize, "sigma": sigma, "lr": lr, "seed": seed}, force=force, resumable=False)
    data = load_digits_split(seed=seed)
    model = StepMLP(n_in=data["x_train"].shape[1], hidden=hidden)
    loss_fn = torch.nn.CrossEntropyLoss()
    grad_norm = backprop_gradient_norm(model, data["x_train"], data["y_train"], loss_fn)
    problem = ModuleProblem(model, loss_fn, (data["x_train"], data["y_train"]), batch_size=batch_size,
                            chunk=popsize, seed=seed)
    es = OpenAIES(problem.initial_point(), popsize=popsize, sigma=sigma, lr=lr, seed=seed)
    metrics_path = os.path.join(out, "metrics.jsonl")
    logger = JsonlLogger(metrics_path)

    def on_generation(strategy, stats):
        rec = {"generation": strategy.generation, "nfev": stats["nfev"], "train_loss": stats["mean"],
               "train_loss_min": stats["min"], "train_loss_max": stats["max"]}
        if strategy.generation % eval_every == 0 or strategy.generation == generations:
            load_flat(model, strategy.center)
            rec.update(val_acc=accuracy(model, data["x_val"], data["y_val"]),
                       test_acc=accuracy(model, data["x_test"], data["y_test"]))
        logger.log(rec)
        extra.log(rec)

    start = time.perf_counter()
    try:
        run(es, problem, budget=popsize * generations, progress=progress, callback=on_generation, evaluator=backend,
            evaluator_options={"num_actors": workers} if backend == "ray" else None, address=address)
    finally:
        extra.close()
    seconds = time.perf_counter() - start
    load_flat(model, es.center)
    summary = {"test_acc": accuracy(model, data["x_test"], data["y_test"]),
               "val_acc": accuracy(model, data["x_val"], data["y_val"]),
               "backprop_grad_norm": grad_norm, "seconds": seconds, "evaluations": popsize * generations,
               "metrics": metrics_path}
    summary["plot"] = plot_run(out)
    atomic.save_torch(model.state_dict(), os.path.join(out, "model.pt"))
    return summary
