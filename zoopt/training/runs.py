"""Run folders: one per run, never overwritten by accident.

A folder that already holds a run (a ``run.json``, metrics or checkpoint) is
continued with ``resume``, replaced with ``force``, and otherwise refused.
"""
from __future__ import annotations

import os
import shutil

RUN_FILE = "run.json"
RUN_MARKERS = (RUN_FILE, "metrics.jsonl", "checkpoint.pt", "summary.json")


def holds_run(out: str) -> bool:
    return any(os.path.exists(os.path.join(out, name)) for name in RUN_MARKERS)


def prepare_run_dir(out: str, config: dict, *, resume: bool = False, force: bool = False,
                    resumable: bool = True) -> str:
    """Create (or reuse, for ``resume``) the run folder ``out`` and record ``config`` in ``run.json``.
    ``resumable=False``: the command cannot resume, so the refusal does not suggest it."""
    from zoopt.atomic import write_json

    if resume and force:
        raise ValueError("resume and force exclude each other: resume continues a run, force replaces it")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"out: {out} exists and is not a folder")
    if resume:
        if not os.path.isdir(out):
            raise FileNotFoundError(f"resume: no run folder at {out}")
        return out
    if os.path.isdir(out) and holds_run(out):
        if not force:
            hint = "--resume to continue it, " if resumable else ""
            raise FileExistsError(f"{out} already holds a run; pass {hint}--force to replace it, or --out for a "
                                  f"new folder")
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, RUN_FILE), config)
    return out


__all__ = ["prepare_run_dir", "holds_run", "RUN_FILE"]
