"""The client-side job behind ``zoopt merge``: session, two-stage search with a
resume file written after every generation, and the merged adapter."""
from __future__ import annotations

import json
import os
import pickle

from tqdm.auto import tqdm

from .client import MergeClient
from .search import EvoMerge


def _save_atomic(path: str, payload: bytes) -> None:
    with open(path + ".tmp", "wb") as fh:
        fh.write(payload)
    os.replace(path + ".tmp", path)


def run_merge(url: str, token: str, records: list, out: str, budget: int = 1200, popsize: int = 20,
              seed: int = 42, template: str = "{prompt}", preset: str = "all", concurrency: int = 8,
              client: MergeClient | None = None, progress: bool = True) -> dict:
    """Resumes from ``out/state.pkl`` when present (same records and budget). The
    state holds the session id, search state and query cache, never the token."""
    if budget < 2 * popsize:
        raise ValueError(f"budget must allow a generation per stage (>= {2 * popsize}), got {budget}")
    os.makedirs(out, exist_ok=True)
    state_path = os.path.join(out, "state.pkl")
    client = client or MergeClient(url, token, concurrency=concurrency)
    saved = pickle.load(open(state_path, "rb")) if os.path.exists(state_path) else None
    if saved is None:
        session = client.create_session(records, template=template, preset=preset)
        saved = {"session": session, "search": None, "cache": {}}
    session = saved["session"]
    client.cache.update(saved["cache"])
    search = EvoMerge(session["pool_size"], popsize=popsize, seed=seed,
                      budget_alpha=budget // 3, budget_beta=budget - budget // 3)
    if saved["search"] is not None:
        search.load_state(saved["search"])
    bar = tqdm(total=budget, initial=search.state["queries"], unit="query", disable=not progress)

    def checkpoint(state):
        bar.update(state["queries"] - bar.n)
        _save_atomic(state_path, pickle.dumps({"session": session, "search": state, "cache": client.cache}))

    result = search.run(lambda pairs: client.evaluate_many(session["session"], pairs), on_generation=checkpoint)
    bar.close()
    files = client.materialize(session["session"], result["alpha"], result["beta"], os.path.join(out, "adapter"))
    result.update(adapters=session["adapters"], files=files, service_queries=client.queries)
    with open(os.path.join(out, "result.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    return result
