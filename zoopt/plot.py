"""Plot JSON-lines metrics to PNG (matplotlib, headless)."""
from __future__ import annotations

import os

from zoopt import atomic
from zoopt.metrics import read_jsonl


def plot_metrics(path: str, out: str | None = None, x: str | None = None, keys=None, title: str | None = None) -> str:
    """Plot the numeric series of a metrics file against ``x`` (default: the first of
    generation/step/epoch/nfev present). Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"{path} holds no records")
    columns = {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if x is not None and x not in columns:
        raise ValueError(f"{path}: no numeric column {x!r} for the x-axis; columns: {sorted(columns)}")
    if x is None:
        x = next((c for c in ("generation", "step", "epoch", "nfev") if c in columns), None)
    keys = [k for k in (keys or sorted(columns)) if k != x and k in columns]
    if not keys:
        raise ValueError(f"{path} has no numeric series to plot")
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        pts = [(r.get(x, i), r[key]) for i, r in enumerate(rows) if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.4)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(x or "record")
    fig.suptitle(title or os.path.basename(os.path.dirname(os.path.abspath(path))))
    fig.tight_layout()
    out = out or os.path.splitext(path)[0] + ".png"
    with atomic.atomic_open(out, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
    return out
