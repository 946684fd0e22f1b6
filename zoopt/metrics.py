"""Metrics as JSON lines, one record per generation or epoch."""
from __future__ import annotations

import json
import os


class JsonlLogger:
    def __init__(self, path: str | None):
        self.path = path
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            open(path, "w").close()

    def log(self, record: dict) -> None:
        if self.path:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")


def read_jsonl(path: str) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]
