"""The client-side job behind ``zoopt merge``: session, two-stage search, and the
merged adapter, resumable from a small JSON file.

Resumption replays: the search is a pure function of its seed and of the losses
it is told, so ``out/state.json`` holds only the session and every loss the
service answered. A resumed run starts the search afresh and answers from that
cache until it reaches the first query it had not made, then goes on over HTTP
with the same trajectory. The file holds no token and nothing executable (no
pickle); every file written here is atomic (``zoopt.atomic``).
"""
from __future__ import annotations

import hashlib
import json
import os

from tqdm.auto import tqdm

from zoopt.atomic import atomic_dir, write_json

from .client import MergeClient
from .search import EvoMerge

STATE = "state.json"


def fingerprint(records: list, template: str, preset: str, budget: int, popsize: int, seed: int) -> str:
    """What a resume must share with the run it continues."""
    blob = json.dumps([records, template, preset, budget, popsize, seed], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_state(path: str, expected: str) -> dict | None:
    """The saved state, None when there is none; a ValueError naming the file when it
    is unreadable or made for other records or settings."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            state = json.load(fh)
        session, cache = state["session"], state["cache"]
        ok = (isinstance(session, dict) and isinstance(session.get("session"), str)
              and isinstance(session.get("pool_size"), int) and isinstance(session.get("adapters"), list)
              and isinstance(cache, list)
              and all(isinstance(e, list) and len(e) == 3 for e in cache))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a merge resume file ({type(exc).__name__}: {exc}); "
                         f"remove it to start afresh") from None
    if not ok:
        raise ValueError(f"{path}: not a merge resume file (bad session or cache entries); remove it to start afresh")
    if state.get("fingerprint") != expected:
        raise ValueError(f"{path} was written for other records, template, preset, budget, popsize or seed; "
                         f"use another --out or remove it")
    return state


def run_merge(url: str, token: str, records: list, out: str, budget: int = 1200, popsize: int = 20,
              seed: int = 42, template: str = "{prompt}", preset: str = "all", concurrency: int = 8,
              client: MergeClient | None = None, progress: bool = True) -> dict:
    """Resumes from ``out/state.json`` when present (same records and settings)."""
    if popsize < 2:
        raise ValueError(f"popsize must be >= 2, got {popsize}")
    if budget < 2 * popsize:
        raise ValueError(f"budget must allow a generation per stage (>= 2 * popsize = {2 * popsize}), got {budget}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"--out {out} exists and is not a folder")
    os.makedirs(out, exist_ok=True)
    state_path = os.path.join(out, STATE)
    stamp = fingerprint(records, template, preset, budget, popsize, seed)
    client = client or MergeClient(url, token, concurrency=concurrency)
    saved = read_state(state_path, stamp)
    if saved is None:
        saved = {"session": client.create_session(records, template=template, preset=preset), "cache": []}
    session = saved["session"]
    sid = session["session"]
    for alpha, beta, loss in saved["cache"]:
        client.cache[client._key(sid, alpha, beta)] = float(loss)
    search = EvoMerge(session["pool_size"], popsize=popsize, seed=seed,
                      budget_alpha=budget // 3, budget_beta=budget - budget // 3)
    planned = sum(b // popsize * popsize for b in search.budgets.values())  # whole generations only
    bar = tqdm(total=planned, unit="query", disable=not progress)

    def checkpoint(state):
        bar.update(state["queries"] - bar.n)
        cache = [[list(k[1]), list(k[2]), v] for k, v in client.cache.items() if k[0] == sid]
        write_json(state_path, {"fingerprint": stamp, "session": session, "cache": cache}, indent=None)

    result = search.run(lambda pairs: client.evaluate_many(sid, pairs), on_generation=checkpoint)
    bar.close()
    adapter = os.path.join(out, "adapter")
    with atomic_dir(adapter) as tmp:
        files = client.materialize(sid, result["alpha"], result["beta"], tmp)
    result.update(adapters=session["adapters"], files=files, service_queries=client.queries)
    write_json(os.path.join(out, "result.json"), result, indent=1)
    return result
