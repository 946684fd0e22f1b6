"""The merge service: a base LM and a LoRA pool behind an HTTP API (FastAPI).

Endpoints (all but /health need ``Authorization: Bearer <token>``, the docs too):

    GET    /health
    GET    /docs, /openapi.json                 the API description (bearer scheme declared)
    GET    /v1/presets                          base + adapter subsets
    POST   /v1/sessions                         {preset, records: [{prompt, answer}], template}
    DELETE /v1/sessions/{id}
    POST   /v1/sessions/{id}/evaluate           {alpha, beta} -> {loss}
    POST   /v1/sessions/{id}/materialize        {alpha, beta} -> a PEFT adapter (zip)
    POST   /v1/sessions/{id}/optimize           {budget_alpha, budget_beta, popsize, seed} -> job
    GET    /v1/jobs/{id}                        job status and result

Every value is checked at the edge: strict JSON types (no bool or string for a
number), finite numbers in their ranges, no unknown fields; a violation is a 422
naming the field. The body limit counts the bytes read, chunked or not. The
template is plain text with one ``{prompt}`` (never a format string), and
tokenizing and merging run off the event loop. Floods get 429 with Retry-After.
"""
from __future__ import annotations

import asyncio
import hmac
import io
import json
import os
import tempfile
import threading
import uuid
import zipfile
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .batcher import EvalBatcher
from .lm import PROMPT_FIELD, encode_examples, split_template
from .operator import MASKS, merge_factors
from .pool import save_adapter

BETA_BOUND = 1.5
MAX_POOL = 10_000        # entries of alpha/beta a request may carry, whatever the preset
MAX_SEED = 2**32 - 1     # CMA-ES seeds a numpy RandomState
KEPT_JOBS = 1_000        # finished optimize jobs whose results are kept for GET /v1/jobs


class StrictBody(BaseModel):
    """JSON bodies as typed: no bool or numeric string coerced into a number, no unknown field."""
    model_config = ConfigDict(strict=True, extra="forbid")


class Record(StrictBody):
    prompt: str = Field(min_length=1, max_length=20_000)
    answer: str = Field(min_length=1, max_length=20_000)


class SessionRequest(StrictBody):
    preset: str = Field(default="all", max_length=200)
    records: list[Record] = Field(min_length=1, max_length=2_000)
    template: str = Field(default=PROMPT_FIELD, max_length=10_000)

    @field_validator("template")
    @classmethod
    def plain_template(cls, template: str) -> str:
        split_template(template)  # ValueError -> 422 on "template"
        return template


Alpha = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Beta = Annotated[float, Field(ge=-BETA_BOUND, le=BETA_BOUND, allow_inf_nan=False)]


class Controls(StrictBody):
    alpha: list[Alpha] = Field(min_length=1, max_length=MAX_POOL)
    beta: list[Beta] = Field(min_length=1, max_length=MAX_POOL)
    mask: Literal[MASKS] = "topk"
    sparsify_b: bool = False


class OptimizeRequest(StrictBody):
    budget_alpha: int = Field(default=400, ge=0, le=100_000)
    budget_beta: int = Field(default=800, ge=0, le=100_000)
    popsize: int = Field(default=20, ge=2, le=1_000)
    seed: int = Field(default=42, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def one_generation(self):
        if max(self.budget_alpha, self.budget_beta) < self.popsize:
            raise ValueError(f"budget_alpha or budget_beta must allow one generation (>= popsize {self.popsize})")
        return self


def field_error(field: str, msg: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors."""
    return HTTPException(422, [{"loc": ["body", field], "msg": msg, "type": "value_error"}])


def check_size(c: Controls, size: int) -> None:
    """The one check the schema cannot make: the length is the session's pool size."""
    for name, values in (("alpha", c.alpha), ("beta", c.beta)):
        if len(values) != size:
            raise field_error(name, f"must have {size} entries (the preset's pool size), got {len(values)}")


class BodyLimit:
    """ASGI middleware: the body is read here, counting the bytes actually received
    (a chunked body has no Content-Length), and refused with 413 past ``max_bytes``
    before the application sees any of it."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await _reply(send, 400, "Content-Length must be a non-negative integer")
            if int(length) > self.max_bytes:
                return await _reply(send, 413, f"request body over {self.max_bytes} bytes")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await _reply(send, 413, f"request body over {self.max_bytes} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # the disconnect, when it comes
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


async def _reply(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def create_app(slot_model, pool, tokenizer, token: str | None, presets: dict | None = None,
               max_body_bytes: int = 4_000_000, max_tokens: int = 512, window_s: float = 0.01,
               max_session_chars: int = 4_000_000, max_sessions: int = 256, max_jobs: int = 4,
               max_pending: int = 1_024) -> FastAPI:
    """``presets``: {name: [adapter names]}; "all" (the whole pool) is always there.
    ``token=None`` disables auth (only for local experiments; the CLI refuses it).
    ``max_session_chars`` bounds a session's text after templating (what gets
    tokenized); ``max_sessions``, ``max_jobs`` (running optimize jobs) and
    ``max_pending`` (queued evaluations) bound what a flood can pile up."""
    presets = {"all": list(pool.names), **(presets or {})}
    pools = {name: pool.subset(names) for name, names in presets.items()}
    for p in pools.values():  # build each pool's merge caches now, not racing in two threads later
        merge_factors(p, [1.0] * p.size, [0.0] * p.size)
    batcher = EvalBatcher(slot_model, window_s=window_s)
    sessions, jobs = {}, {}
    lock = threading.Lock()            # sessions and jobs, touched by job threads too
    tokenize_lock = threading.Lock()   # one tokenization at a time (tokenizers are not all thread-safe)
    bearer = HTTPBearer(auto_error=False, description="the token given to `zoopt serve-merge` (--token-env)")

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="zoopt merge service", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None,
                  description="Black-box LoRA merging: a loss per query for control vectors alpha and beta.")
    app.state.batcher = batcher

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc):
        # FastAPI's default echoes each bad input back, which fails on NaN/inf (a 500) and
        # would return a multi-megabyte prompt; the field and the reason are enough
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    def authorize(cred: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:  # noqa: B008 (FastAPI's idiom)
        if token is None:
            return
        if cred is None or not hmac.compare_digest(cred.credentials.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorize)]

    def session_of(session_id: str) -> dict:
        with lock:
            if session_id not in sessions:
                raise HTTPException(404, "no such session")
            return sessions[session_id]

    def too_busy(what: str) -> HTTPException:
        return HTTPException(429, f"{what}; retry later", headers={"Retry-After": "1"})

    async def loss_of(session: dict, c: Controls) -> float:
        check_size(c, session["pool"].size)
        return await batcher.evaluate(
            lambda: merge_factors(session["pool"], c.alpha, c.beta, mask=c.mask, sparsify_b=c.sparsify_b),
            session["examples"])

    @app.get("/openapi.json", include_in_schema=False, dependencies=auth)
    async def openapi():
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=auth)
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)

    @app.get("/health")
    async def health():
        return {"status": "ok", "pool_size": pool.size, "sessions": len(sessions)}

    @app.get("/v1/presets", dependencies=auth)
    async def list_presets():
        return {"presets": [{"id": name, "adapters": p.names, "size": p.size} for name, p in pools.items()]}

    @app.post("/v1/sessions", dependencies=auth)
    async def create_session(req: SessionRequest):
        if req.preset not in pools:
            raise field_error("preset", f"must be one of {sorted(pools)}")
        head, tail = split_template(req.template)
        chars = sum(len(head) + len(r.prompt) + len(tail) + len(r.answer) for r in req.records)
        if chars > max_session_chars:
            raise field_error("records", f"{chars} characters after templating, over the limit {max_session_chars}")
        with lock:
            if len(sessions) >= max_sessions:
                raise too_busy(f"the service holds its maximum of {max_sessions} sessions (DELETE finished ones)")
        records = [r.model_dump() for r in req.records]

        def tokenize():
            with tokenize_lock:
                return encode_examples(tokenizer, records, req.template, max_tokens)

        try:
            examples = await asyncio.to_thread(tokenize)
        except ValueError as exc:
            raise field_error("records", str(exc)) from None
        session_id = uuid.uuid4().hex
        with lock:
            sessions[session_id] = {"pool": pools[req.preset], "examples": examples, "preset": req.preset}
        return {"session": session_id, "pool_size": pools[req.preset].size, "adapters": pools[req.preset].names,
                "examples": len(examples)}

    @app.delete("/v1/sessions/{session_id}", dependencies=auth)
    async def delete_session(session_id: str):
        with lock:
            if sessions.pop(session_id, None) is None:
                raise HTTPException(404, "no such session")
        return {"deleted": session_id}

    @app.post("/v1/sessions/{session_id}/evaluate", dependencies=auth)
    async def evaluate(session_id: str, c: Controls):
        session = session_of(session_id)
        if batcher.pending >= max_pending:
            raise too_busy(f"{batcher.pending} evaluations are queued")
        return {"loss": await loss_of(session, c)}

    @app.post("/v1/sessions/{session_id}/materialize", dependencies=auth)
    async def materialize(session_id: str, c: Controls):
        session = session_of(session_id)
        check_size(c, session["pool"].size)

        def zipped() -> bytes:
            factors = merge_factors(session["pool"], c.alpha, c.beta, mask=c.mask, sparsify_b=c.sparsify_b)
            buf = io.BytesIO()
            with tempfile.TemporaryDirectory() as tmp:
                save_adapter(tmp, session["pool"].config, factors,
                             base_model=session["pool"].config.base_model_name_or_path or slot_model.base_name)
                with zipfile.ZipFile(buf, "w") as zf:
                    for name in sorted(os.listdir(tmp)):
                        zf.write(os.path.join(tmp, name), name)
            return buf.getvalue()

        return Response(await asyncio.to_thread(zipped), media_type="application/zip",
                        headers={"Content-Disposition": "attachment; filename=merged_adapter.zip"})

    @app.post("/v1/sessions/{session_id}/optimize", dependencies=auth)
    async def optimize(session_id: str, req: OptimizeRequest):
        from .search import EvoMerge

        session = session_of(session_id)
        with lock:
            if sum(j["status"] == "running" for j in jobs.values()) >= max_jobs:
                raise too_busy(f"{max_jobs} optimize jobs are running")
            finished = [j for j, v in jobs.items() if v["status"] != "running"]
            for old in finished[:max(0, len(jobs) - KEPT_JOBS + 1)]:  # the oldest results go first
                del jobs[old]
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
                result = search.run(evaluate_many)
                with lock:
                    jobs[job_id].update(status="done", result=result)
            except Exception as exc:  # the job reports its failure instead of vanishing
                with lock:
                    jobs[job_id].update(status="failed", error=f"{type(exc).__name__}: {exc}")

        threading.Thread(target=work, daemon=True).start()
        return {"job": job_id}

    @app.get("/v1/jobs/{job_id}", dependencies=auth)
    async def job(job_id: str):
        with lock:
            if job_id not in jobs:
                raise HTTPException(404, "no such job")
            return dict(jobs[job_id])

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    return app
