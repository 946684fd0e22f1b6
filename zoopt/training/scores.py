"""Accuracy on held-out splits, per scored model (the hard model, and e.g. a smooth twin as ``twin_``)."""
from __future__ import annotations

import torch


@torch.no_grad()
def accuracy(model, x, y, chunk: int = 2048) -> float:
    correct = 0
    for start in range(0, len(x), chunk):
        correct += int((model(x[start:start + chunk]).argmax(-1) == y[start:start + chunk]).sum())
    return correct / max(1, len(x))


def split_scorer(data: dict, models: dict):
    """``eval_fn(model)`` for :func:`zoopt.train`: ``{prefix}val_acc`` and ``{prefix}test_acc`` for each
    ``prefix -> model`` of ``models`` on ``data``'s ``x_val/y_val`` and ``x_test/y_test``."""
    def score(_model) -> dict:
        rec = {}
        for prefix, model in models.items():
            rec[f"{prefix}val_acc"] = accuracy(model, data["x_val"], data["y_val"])
            rec[f"{prefix}test_acc"] = accuracy(model, data["x_test"], data["y_test"])
        return rec

    return score


def summarize(records: list, select: str = "val_acc") -> dict:
    """Best epoch by ``select`` (validation accuracy: never chosen on test) and the last epoch's figures."""
    if not records:
        raise ValueError("no epoch records to summarize")
    last = records[-1]
    best = max(records, key=lambda r: r[select])  # the first of equals, as the loop keeps it
    out = {"epochs_run": len(records), "steps": last["step"], "best_epoch": best["epoch"],
           "best_val_acc": best["val_acc"], "best_test_acc": best["test_acc"], "last_val_acc": last["val_acc"],
           "last_test_acc": last["test_acc"], "evaluations": last["evaluations"],
           "train_time_s": last["train_time_s"], "time_per_step_s": last["train_time_s"] / max(1, last["step"])}
    if "twin_val_acc" in last:
        tbest = max(records, key=lambda r: r["twin_val_acc"])
        out.update(twin_best_val_acc=tbest["twin_val_acc"], twin_best_test_acc=tbest["twin_test_acc"],
                   twin_last_test_acc=last["twin_test_acc"])
    return out


__all__ = ["accuracy", "split_scorer", "summarize"]
