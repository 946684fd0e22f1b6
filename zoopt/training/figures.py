"""The one figure each training command writes: the learning curve with its spread.

* training a network: validation and test accuracy per epoch (and the smooth twin's
  when there is one); beside it the training loss per logged window with its min-max band.
* a search by generations (``zoopt demo``): validation and test accuracy, and the population's
  loss per generation (mean with its min-max band);
* policy search: the center's test return (mean +- std over the test episodes) against
  environment steps, with the population's mean training return.
"""
from __future__ import annotations


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    from zoopt.atomic import atomic_open

    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)


def _label(ax, xlabel: str | None, ylabel: str) -> None:
    """Axis labels, a light grid, and a legend when something was drawn."""
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)


def _finish(plt, fig, path: str) -> str:
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_training(records: list, path: str, steps: list | None = None, title: str = "") -> str:
    plt = _pyplot()
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [r["epoch"] for r in records]
    for key, style in (("test_acc", "-o"), ("val_acc", "--o"), ("twin_test_acc", ":s")):
        if any(key in r for r in records):
            acc.plot(epochs, [100 * r.get(key, float("nan")) for r in records], style, label=key.replace("_", " "))
    from matplotlib.ticker import MaxNLocator

    acc.xaxis.set_major_locator(MaxNLocator(integer=True))
    _label(acc, "epoch", "accuracy %")
    if steps and len(steps) >= 2:
        xs = [s["step"] for s in steps]
        loss.plot(xs, [s["train_loss"] for s in steps], "-o", ms=2, lw=1.3, label="train loss (window mean)")
        loss.fill_between(xs, [s["train_loss_min"] for s in steps], [s["train_loss_max"] for s in steps], alpha=0.25,
                          label="window min-max")
        loss.set_xlabel("step")
    else:
        loss.plot(epochs, [r["train_loss"] for r in records], "-o", label="train loss (epoch mean)")
        loss.xaxis.set_major_locator(MaxNLocator(integer=True))
        loss.set_xlabel("epoch")
    _label(loss, None, "training loss")
    fig.suptitle(title)
    return _finish(plt, fig, path)


def plot_returns(history: list, path: str, title: str = "") -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    tested = [r for r in history if "test_mean" in r]
    xs = [r["env_steps"] for r in tested]
    mean = [r["test_mean"] for r in tested]
    std = [r["test_std"] for r in tested]
    ax.plot(xs, mean, "-o", ms=3, label="center: test return (mean)")
    low = [m - s for m, s in zip(mean, std, strict=True)]
    high = [m + s for m, s in zip(mean, std, strict=True)]
    ax.fill_between(xs, low, high, alpha=0.25,
                    label="+- std over test episodes")
    ax.plot([r["env_steps"] for r in history], [r["train_mean"] for r in history], lw=1, alpha=0.7,
            label="population: mean training return")
    _label(ax, "environment steps", "return")
    ax.set_title(title)
    return _finish(plt, fig, path)



def plot_generations(records: list, path: str, title: str = "") -> str:
    """Accuracy of the center and the population's training loss (mean, min-max band) per generation."""
    plt = _pyplot()
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4))
    for key, style in (("test_acc", "-o"), ("val_acc", "--o")):
        pts = [(r["generation"], 100 * r[key]) for r in records if key in r]
        if pts:
            acc.plot([p[0] for p in pts], [p[1] for p in pts], style, ms=3, label=key.replace("_", " "))
    _label(acc, "generation", "accuracy %")
    xs = [r["generation"] for r in records]
    loss.plot(xs, [r["train_loss"] for r in records], lw=1.3, label="population mean loss")
    if all("train_loss_min" in r and "train_loss_max" in r for r in records):
        loss.fill_between(xs, [r["train_loss_min"] for r in records], [r["train_loss_max"] for r in records],
                          alpha=0.25, label="population min-max")
    _label(loss, "generation", "training loss")
    fig.suptitle(title)
    return _finish(plt, fig, path)


def _rows(path: str) -> list:
    import os

    from zoopt.metrics import read_jsonl

    return read_jsonl(path) if os.path.exists(path) else []


def run_title(run_dir: str, records: list) -> str:
    """The figure's title from the run folder's ``run.json`` (what the run was), else the folder name."""
    import json
    import os

    config = {}
    path = os.path.join(run_dir, "run.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            try:
                config = json.load(fh)
            except ValueError as exc:
                raise ValueError(f"{path}: not a run description ({exc})") from None
    config = config if isinstance(config, dict) else {}
    if "env_id" in config:
        return (f"{config['env_id']} / {config.get('method')} (seed {config.get('seed')}), "
                f"{records[-1].get('env_steps', 0):,} env steps")
    if "model" in config:
        return f"{config['model']} / {config.get('method')} on {config.get('data')} (seed {config.get('seed')})"
    return str(config.get("title") or os.path.basename(os.path.abspath(run_dir)))


def plot_run(run_dir: str) -> str:
    """The figure of a run folder (``zoopt demo``, ``train`` or ``rl``), from its ``metrics.jsonl`` (and
    ``steps.jsonl``) and ``run.json``; written as ``learning_curve.png`` there. The commands draw their
    figure with this function, so ``zoopt plot RUN_DIR`` redraws the same one. Returns its path."""
    import os

    records = _rows(os.path.join(run_dir, "metrics.jsonl"))
    if not records:
        raise ValueError(f"{os.path.join(run_dir, 'metrics.jsonl')}: no records to plot")
    path, title = os.path.join(run_dir, "learning_curve.png"), run_title(run_dir, records)
    if "env_steps" in records[0]:
        return plot_returns(records, path, title=title)
    if "epoch" in records[0]:
        return plot_training(records, path, steps=_rows(os.path.join(run_dir, "steps.jsonl")), title=title)
    if "generation" in records[0] and "train_loss" in records[0]:
        return plot_generations(records, path, title=title)
    raise ValueError(f"{run_dir} is not a zoopt demo, train or rl run folder (its metrics.jsonl has no "
                     "env_steps, epoch or generation records)")


__all__ = ["plot_training", "plot_returns", "plot_generations", "plot_run", "run_title"]
