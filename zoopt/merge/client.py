"""Client of the merge service: async HTTP with bounded concurrency, retries
with backoff (honouring Retry-After) on 429/5xx/timeouts, and a cache keyed by
the rounded controls. The token is sent as a header and never logged or saved.
"""
from __future__ import annotations

import asyncio
import io
import zipfile

import httpx

from .pool import CONFIG, WEIGHTS

RETRY_STATUS = {429, 500, 502, 503, 504}
ADAPTER_FILES = (CONFIG, WEIGHTS)


class MergeServiceError(RuntimeError):
    """A query that failed for good (a 4xx, or retries exhausted)."""


class MergeClient:
    def __init__(self, url: str, token: str | None, concurrency: int = 8, timeout_s: float = 120.0,
                 retries: int = 8, backoff_s: float = 0.5, max_backoff_s: float = 30.0, decimals: int = 6):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.concurrency, self.timeout_s = concurrency, timeout_s
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.decimals = decimals
        self.cache: dict = {}
        self.queries = 0    # evaluations the service answered (cache hits excluded)
        self.retried = 0    # attempts that were retried

    def __repr__(self) -> str:  # never shows the token
        return f"MergeClient(url={self.url!r}, concurrency={self.concurrency})"

    async def _request(self, http: httpx.AsyncClient, method: str, path: str, json=None) -> httpx.Response:
        last = "no attempt"
        for attempt in range(self.retries + 1):
            try:
                resp = await http.request(method, self.url + path, json=json, headers=self._headers,
                                          timeout=self.timeout_s)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last, wait = f"{type(exc).__name__}", None
            else:
                if resp.status_code < 400:
                    return resp
                if resp.status_code not in RETRY_STATUS:
                    detail = resp.json().get("detail") if resp.headers.get("content-type", "").startswith(
                        "application/json") else resp.text
                    raise MergeServiceError(f"{method} {path}: HTTP {resp.status_code}: {detail}")
                last = f"HTTP {resp.status_code}"
                wait = _retry_after(resp)
            if attempt == self.retries:
                break
            self.retried += 1
            await asyncio.sleep(wait if wait is not None else min(self.max_backoff_s, self.backoff_s * 2 ** attempt))
        raise MergeServiceError(f"{method} {path} failed after {self.retries + 1} attempts (last: {last})")

    def _key(self, session: str, alpha, beta) -> tuple:
        return (session, tuple(round(float(a), self.decimals) for a in alpha),
                tuple(round(float(b), self.decimals) for b in beta))

    async def evaluate_many_async(self, session: str, pairs: list) -> list:
        sem = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient() as http:
            async def one(alpha, beta):
                key = self._key(session, alpha, beta)
                if key not in self.cache:
                    async with sem:
                        resp = await self._request(http, "POST", f"/v1/sessions/{session}/evaluate",
                                                   {"alpha": list(key[1]), "beta": list(key[2])})
                    self.cache[key] = float(resp.json()["loss"])
                    self.queries += 1
                return self.cache[key]

            return list(await asyncio.gather(*(one(a, b) for a, b in pairs)))

    def evaluate_many(self, session: str, pairs: list) -> list:
        return asyncio.run(self.evaluate_many_async(session, pairs))

    def _call(self, method: str, path: str, json=None) -> httpx.Response:
        async def go():
            async with httpx.AsyncClient() as http:
                return await self._request(http, method, path, json)

        return asyncio.run(go())

    def health(self) -> dict:
        return self._call("GET", "/health").json()

    def create_session(self, records: list, template: str = "{prompt}", preset: str = "all") -> dict:
        return self._call("POST", "/v1/sessions", {"records": records, "template": template, "preset": preset}).json()

    def materialize(self, session: str, alpha, beta, out_dir: str) -> list:
        """Download the merged PEFT adapter into ``out_dir``; returns the file names.
        Only the adapter's two files are accepted from the archive (no paths)."""
        resp = self._call("POST", f"/v1/sessions/{session}/materialize", {"alpha": list(alpha), "beta": list(beta)})
        try:
            with zipfile.ZipFile(io.BytesIO(resp.content)) as zf:
                names = zf.namelist()
                if sorted(names) != sorted(ADAPTER_FILES):
                    raise MergeServiceError(f"materialize returned {names[:5]}, not the adapter files {ADAPTER_FILES}")
                zf.extractall(out_dir)
        except zipfile.BadZipFile as exc:
            raise MergeServiceError(f"materialize returned no zip archive ({exc})") from None
        return names


def _retry_after(resp: httpx.Response):
    value = resp.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
