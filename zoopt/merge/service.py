"""The merge service: a base LM and a LoRA pool behind an HTTP API (FastAPI).

Endpoints (all but /health need ``Authorization: Bearer <token>``):

    GET  /health
    GET  /v1/presets                          base + adapter subsets
    POST /v1/sessions                         {preset, records: [{prompt, answer}], template}
    POST /v1/sessions/{id}/evaluate           {alpha, beta} -> {loss}
    POST /v1/sessions/{id}/materialize        {alpha, beta} -> a PEFT adapter (zip)
    POST /v1/sessions/{id}/optimize           {budget_alpha, budget_beta} -> job
    GET  /v1/jobs/{id}                        job status and result

OpenAPI docs are served at /docs.
"""
from __future__ import annotations

import asyncio
import hmac
import io
import math
import os
import tempfile
import threading
import uuid
import zipfile
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from .batcher import EvalBatcher
from .lm import encode_examples
from .operator import MASKS, merge_factors
from .pool import save_adapter

BETA_BOUND = 1.5


class Record(BaseModel):
    prompt: str = Field(min_length=1, max_length=20_000)
    answer: str = Field(min_length=1, max_length=20_000)


class SessionRequest(BaseModel):
    preset: str = "all"
    records: list[Record] = Field(min_length=1, max_length=2_000)
    template: str = Field(default="{prompt}", max_length=10_000)


class Controls(BaseModel):
    alpha: list[float]
    beta: list[float]
    mask: str = "topk"
    sparsify_b: bool = False


class OptimizeRequest(BaseModel):
    budget_alpha: int = Field(default=400, ge=0, le=100_000)
    budget_beta: int = Field(default=800, ge=0, le=100_000)
    popsize: int = Field(default=20, ge=2, le=1_000)
    seed: int = Field(default=42, ge=0)


def check_controls(c: Controls, size: int) -> None:
    """400 with the reason when the control vectors are unusable."""
    for name, values, lo, hi in (("alpha", c.alpha, 0.0, 1.0), ("beta", c.beta, -BETA_BOUND, BETA_BOUND)):
        if len(values) != size:
            raise HTTPException(400, f"{name} must have {size} entries (the preset's pool size), got {len(values)}")
        if not all(math.isfinite(v) for v in values):
            raise HTTPException(400, f"{name} must be finite")
        if not all(lo <= v <= hi for v in values):
            raise HTTPException(400, f"{name} must lie in [{lo}, {hi}]")
    if c.mask not in MASKS:
        raise HTTPException(400, f"mask must be one of {MASKS}")


def create_app(slot_model, pool, tokenizer, token: str | None, presets: dict | None = None,
               max_body_bytes: int = 4_000_000, max_tokens: int = 512, window_s: float = 0.01) -> FastAPI:
    """``presets``: {name: [adapter names]}; "all" (the whole pool) is always there.
    ``token=None`` disables auth (only for local experiments; the CLI refuses it)."""
    presets = {"all": list(pool.names), **(presets or {})}
    pools = {name: pool.subset(names) for name, names in presets.items()}
    batcher = EvalBatcher(slot_model, window_s=window_s)
    sessions, jobs = {}, {}
    sessions_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="zoopt merge service", version="1", lifespan=lifespan,
                  description="Black-box LoRA merging: a loss per query for control vectors alpha and beta.")
    app.state.batcher = batcher

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and int(length) > max_body_bytes:
            return JSONResponse({"detail": f"request body over {max_body_bytes} bytes"}, status_code=413)
        return await call_next(request)

    def authorize(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def session_of(session_id: str) -> dict:
        with sessions_lock:
            if session_id not in sessions:
                raise HTTPException(404, f"no session {session_id}")
            return sessions[session_id]

    async def loss_of(session: dict, c: Controls) -> float:
        check_controls(c, session["pool"].size)
        factors = merge_factors(session["pool"], c.alpha, c.beta, mask=c.mask, sparsify_b=c.sparsify_b)
        return await batcher.evaluate(factors, session["examples"])

    @app.get("/health")
    async def health():
        return {"status": "ok", "pool_size": pool.size, "sessions": len(sessions)}

    @app.get("/v1/presets", dependencies=[Depends(authorize)])
    async def list_presets():
        return {"presets": [{"id": name, "adapters": p.names, "size": p.size} for name, p in pools.items()]}

    @app.post("/v1/sessions", dependencies=[Depends(authorize)])
    async def create_session(req: SessionRequest):
        if req.preset not in pools:
            raise HTTPException(400, f"preset must be one of {sorted(pools)}")
        if "{prompt}" not in req.template:
            raise HTTPException(400, "template must contain {prompt}")
        try:
            examples = encode_examples(tokenizer, [r.model_dump() for r in req.records], req.template, max_tokens)
        except (ValueError, KeyError, IndexError) as exc:
            raise HTTPException(400, f"records: {exc}") from None
        session_id = uuid.uuid4().hex
        with sessions_lock:
            sessions[session_id] = {"pool": pools[req.preset], "examples": examples, "preset": req.preset}
        return {"session": session_id, "pool_size": pools[req.preset].size, "adapters": pools[req.preset].names,
                "examples": len(examples)}

    @app.post("/v1/sessions/{session_id}/evaluate", dependencies=[Depends(authorize)])
    async def evaluate(session_id: str, c: Controls):
        return {"loss": await loss_of(session_of(session_id), c)}

    @app.post("/v1/sessions/{session_id}/materialize", dependencies=[Depends(authorize)])
    async def materialize(session_id: str, c: Controls):
        session = session_of(session_id)
        check_controls(c, session["pool"].size)
        factors = merge_factors(session["pool"], c.alpha, c.beta, mask=c.mask, sparsify_b=c.sparsify_b)
        buf = io.BytesIO()
        with tempfile.TemporaryDirectory() as tmp:
            save_adapter(tmp, session["pool"].config, factors)
            with zipfile.ZipFile(buf, "w") as zf:
                for name in sorted(os.listdir(tmp)):
                    zf.write(os.path.join(tmp, name), name)
        return Response(buf.getvalue(), media_type="application/zip",
                        headers={"Content-Disposition": "attachment; filename=merged_adapter.zip"})

    @app.post("/v1/sessions/{session_id}/optimize", dependencies=[Depends(authorize)])
    async def optimize(session_id: str, req: OptimizeRequest):
        from .search import EvoMerge

        session = session_of(session_id)
        job_id = uuid.uuid4().hex
        jobs[job_id] = {"status": "running", "session": session_id}
        loop = asyncio.get_running_loop()

        def evaluate_many(pairs):
            futures = [asyncio.run_coroutine_threadsafe(loss_of(session, Controls(alpha=list(a), beta=list(b))), loop)
                       for a, b in pairs]
            return [f.result() for f in futures]

        def work():
            try:
                search = EvoMerge(session["pool"].size, popsize=req.popsize, seed=req.seed,
                                  budget_alpha=req.budget_alpha, budget_beta=req.budget_beta)
                jobs[job_id].update(status="done", result=search.run(evaluate_many))
            except Exception as exc:  # the job reports its failure instead of vanishing
                jobs[job_id].update(status="failed", error=str(exc))

        threading.Thread(target=work, daemon=True).start()
        return {"job": job_id}

    @app.get("/v1/jobs/{job_id}", dependencies=[Depends(authorize)])
    async def job(job_id: str):
        if job_id not in jobs:
            raise HTTPException(404, f"no job {job_id}")
        return jobs[job_id]

    return app
