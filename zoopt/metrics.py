"""Metrics as JSON lines, one record per generation or epoch."""
from __future__ import annotations

import json
import os

from zoopt import atomic


class JsonlLogger:
    """Appends one JSON record per line to ``path`` (nothing when ``path`` is None).

    ``append=False`` (a new run) starts the file empty; ``append=True`` (a resumed
    run) keeps what is there. ``resume_from(history)`` lines an existing file up
    with a checkpoint's history.
    """

    def __init__(self, path: str | None, append: bool = False):
        self.path = path
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            if not append or not os.path.exists(path):
                atomic.write_text(path, "")

    def log(self, record: dict) -> None:
        if self.path:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def close(self) -> None:
        """Nothing to release (each record is appended and the file closed); here so every logger
        (see :mod:`zoopt.loggers`) has ``log``/``close``."""

    def resume_from(self, history: list) -> None:
        """Keep the file's first ``len(history)`` records (the checkpoint covers them), add any
        the file lacks from ``history``, and drop records of generations that will be re-run."""
        if not self.path:
            return
        kept = [line for line in _read_lines(self.path) if line.strip()][: len(history)]
        self._replace(kept + [json.dumps(r) for r in history[len(kept):]])

    def rewrite(self, records: list) -> None:
        """Replace the file, atomically, by exactly ``records`` (a run resumed from a checkpoint)."""
        if self.path:
            self._replace([json.dumps(r) for r in records])

    def _replace(self, lines: list) -> None:
        atomic.write_text(self.path, "".join(line.rstrip("\n") + "\n" for line in lines))


def _read_lines(path: str) -> list[str]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.readlines()


def read_jsonl(path: str) -> list[dict]:
    """The records of a JSON-lines file; a bad line is a ValueError naming the file and line."""
    records = []
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text (JSON lines) file ({exc.reason} at byte {exc.start})") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not a JSON record ({exc.msg})") from None
    return records
