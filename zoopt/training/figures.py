"""The one figure each training command writes: the learning curve with its spread.

* training a network: validation and test accuracy per epoch (and the smooth twin's
  when there is one); beside it the training loss per logged window with its min-max band.
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


def plot_training(records: list, path: str, steps: list | None = None, title: str = "") -> str:
    plt = _pyplot()
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [r["epoch"] for r in records]
    for key, style in (("test_acc", "-o"), ("val_acc", "--o"), ("twin_test_acc", ":s")):
        if any(key in r for r in records):
            acc.plot(epochs, [100 * r.get(key, float("nan")) for r in records], style, label=key.replace("_", " "))
    from matplotlib.ticker import MaxNLocator

    acc.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc.set_xlabel("epoch")
    acc.set_ylabel("accuracy %")
    acc.grid(alpha=0.3)
    if acc.lines:
        acc.legend(fontsize=8)
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
    loss.set_ylabel("training loss")
    loss.grid(alpha=0.3)
    loss.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_returns(history: list, path: str, title: str = "") -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    tested = [r for r in history if "test_mean" in r]
    xs = [r["env_steps"] for r in tested]
    mean = [r["test_mean"] for r in tested]
    std = [r["test_std"] for r in tested]
    ax.plot(xs, mean, "-o", ms=3, label="center: test return (mean)")
    ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.25,
                    label="+- std over test episodes")
    ax.plot([r["env_steps"] for r in history], [r["train_mean"] for r in history], lw=1, alpha=0.7,
            label="population: mean training return")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path



def plot_run(run_dir: str) -> str:
    """The figure of a ``zoopt train`` or ``zoopt rl`` run folder, from its ``metrics.jsonl``
    (and ``steps.jsonl``); written as ``learning_curve.png`` there. Returns its path."""
    import json
    import os

    def rows(name):
        path = os.path.join(run_dir, name)
        if not os.path.exists(path):
            return []
        with open(path) as fh:
            return [json.loads(line) for line in fh if line.strip()]

    records = rows("metrics.jsonl")
    if not records:
        raise ValueError(f"{os.path.join(run_dir, 'metrics.jsonl')}: no records to plot")
    path = os.path.join(run_dir, "learning_curve.png")
    if "env_steps" in records[0]:
        return plot_returns(records, path, title=os.path.basename(os.path.abspath(run_dir)))
    if "epoch" in records[0]:
        return plot_training(records, path, steps=rows("steps.jsonl"), title=os.path.basename(os.path.abspath(run_dir)))
    raise ValueError(f"{run_dir} is neither a zoopt train nor a zoopt rl run folder")


__all__ = ["plot_training", "plot_returns", "plot_run"]
