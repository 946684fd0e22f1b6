"""Hostile and careless requests against a real merge service on 127.0.0.1:
every malformed request gets a 4xx (never a 5xx, never a hang), and afterwards
the service answers a valid query with the same loss as before."""
import asyncio
import json
import random
import select
import socket
import time
from collections import Counter
from urllib.parse import urlparse

import pytest

pytest.importorskip("peft")
pytest.importorskip("fastapi")
import httpx  # noqa: E402

from test_merge import RECORDS, TOKEN, make_pool, serve, tiny_llama  # noqa: E402
from zoopt.merge.lm import ByteTokenizer, SlotModel  # noqa: E402
from zoopt.merge.service import create_app  # noqa: E402

LIMIT = 200_000        # body bytes
SESSION_CHARS = 60_000  # text after templating
VALID = {"alpha": [1.0, 0.5, 0.2, 0.9], "beta": [0.25, -0.5, 1.0, 0.1]}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON_AUTH = {**AUTH, "content-type": "application/json"}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    pool = make_pool(str(tmp_path_factory.mktemp("pool")))
    app = create_app(SlotModel(tiny_llama(), pool.config, slots=4), pool, ByteTokenizer(), TOKEN,
                     max_body_bytes=LIMIT, max_session_chars=SESSION_CHARS, max_pending=8)
    server, thread, url = serve(app)
    s = httpx.post(f"{url}/v1/sessions", json={"records": RECORDS}, headers=AUTH).json()["session"]
    before = httpx.post(f"{url}/v1/sessions/{s}/evaluate", json=VALID, headers=AUTH).json()["loss"]
    yield {"url": url, "session": s, "loss": before, "statuses": Counter()}
    server.should_exit = True
    thread.join(timeout=10)


def valid_loss(service) -> float:
    r = httpx.post(f"{service['url']}/v1/sessions/{service['session']}/evaluate", json=VALID, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()["loss"]


def template_cases():
    few = RECORDS[:2]
    return [({"records": few, "template": t}, "template") for t in (
        "{prompt.nope}", "{prompt[x]}", "{prompt.__class__.__init__.__globals__}", "{prompt:>9999999999999}",
        "{prompt!r}", "{other}", "{}", "{0}", "no field at all", "{prompt} and {prompt}", "{prompt} {answer}")
    ] + [({"records": [{"prompt": "p", "answer": "a"}] * 150, "template": "{prompt:>2000000}"}, "template")]


def session_cases():
    r = RECORDS[0]
    return template_cases() + [
        ({"records": []}, "records"), ({}, "records"), ({"records": "abc"}, "records"),
        ({"records": [["p", "a"]]}, "records"), ({"records": [{"prompt": 5, "answer": "a"}]}, "records"),
        ({"records": [{"prompt": "", "answer": "a"}]}, "records"),
        ({"records": [{"prompt": "p" * 20_001, "answer": "a"}]}, "records"),
        ({"records": [{"prompt": "p"}]}, "records"), ({"records": [{**r, "extra": 1}]}, "records"),
        ({"records": [r] * 2_001}, "records"), ({"records": [r], "preset": "nope"}, "preset"),
        ({"records": [r], "preset": 3}, "preset"), ({"records": [r], "template": 7}, "template"),
        ({"records": [r], "template": "x" * 10_001 + "{prompt}"}, "template"),
        ({"records": [r], "tokens": 5}, "tokens"),
        # under the body limit, over the templated-text limit
        ({"records": [{"prompt": "p" * 15_000, "answer": "a"}] * 5}, "records"),
    ]


def control_cases():
    a, b = VALID["alpha"], VALID["beta"]
    return [
        ({"alpha": a[:3], "beta": b}, "alpha"), ({"alpha": a, "beta": b + [0.0]}, "beta"),
        ({"alpha": [1.0] * 10_001, "beta": b}, "alpha"), ({"alpha": [], "beta": b}, "alpha"),
        ({"alpha": [True, 1, 1, 1], "beta": b}, "alpha"), ({"alpha": ["0.5", 1, 1, 1], "beta": b}, "alpha"),
        ({"alpha": [None, 1, 1, 1], "beta": b}, "alpha"), ({"alpha": [[1], 1, 1, 1], "beta": b}, "alpha"),
        ({"alpha": {"0": 1}, "beta": b}, "alpha"), ({"alpha": 1.0, "beta": b}, "alpha"),
        ({"alpha": [-0.1, 1, 1, 1], "beta": b}, "alpha"), ({"alpha": a, "beta": [1.5000001, 0, 0, 0]}, "beta"),
        ({"alpha": a, "beta": [-2, 0, 0, 0]}, "beta"), ({"alpha": a, "beta": [False, 0, 0, 0]}, "beta"),
        ({"alpha": a, "beta": b, "mask": 1}, "mask"), ({"alpha": a, "beta": b, "mask": "TOPK"}, "mask"),
        ({"alpha": a, "beta": b, "sparsify_b": "true"}, "sparsify_b"),
        ({"alpha": a, "beta": b, "sparsify_b": 1}, "sparsify_b"), ({"alpha": a, "beta": b, "gamma": [1]}, "gamma"),
        ({"beta": b}, "alpha"),
    ]


def optimize_cases():
    return [({"seed": 2**64}, "seed"), ({"seed": -1}, "seed"), ({"seed": True}, "seed"), ({"seed": "42"}, "seed"),
            ({"seed": 1.5}, "seed"), ({"budget_alpha": "400"}, "budget_alpha"),
            ({"budget_alpha": True}, "budget_alpha"), ({"budget_beta": -1}, "budget_beta"),
            ({"budget_beta": 10**9}, "budget_beta"), ({"popsize": 1}, "popsize"), ({"popsize": 10**6}, "popsize"),
            ({"budget_alpha": 5, "budget_beta": 5, "popsize": 10}, None), ({"budgets": 5}, "budgets")]


RAW_BODIES = ['{"alpha": [1, 1, 1, NaN], "beta": [0.1, 0.1, 0.1, 0.1]}',
              '{"alpha": [1, 1, 1, Infinity], "beta": [0.1, 0.1, 0.1, 0.1]}',
              '{"alpha": [1, 1, 1, 1], "beta": [0.1, 0.1, 0.1, -Infinity]}',
              '{"alpha": [1, 1, 1, 1e400], "beta": [0.1, 0.1, 0.1, 0.1]}',
              '{"alpha": [1, 1, 1, 1], "beta": [0.1, 0.1, 0.1, 1e-400]', '{"alpha": ', '', 'null', '[]', '"x"', '{',
              '\xff\xfe not json', '{"alpha": [1, 1, 1, 1], "beta": [0.1, 0.1, 0.1, 0.1]}' * 2]


def random_control_cases(n, seed=0):
    """Valid bodies with one entry broken in a random way."""
    rng = random.Random(seed)
    bad_values = [True, False, None, "1", "", [], {}, [[0.5]], -1e-9, 1.0000001, 2, -3, 1e308, -1e308, "NaN"]
    out = []
    for _ in range(n):
        body = json.loads(json.dumps(VALID))
        key = rng.choice(["alpha", "beta"])
        kind = rng.randrange(3)
        if kind == 0:     # a bad entry
            body[key][rng.randrange(4)] = rng.choice(bad_values[:8] + ([1.0000001, 2, 1e308] if key == "alpha"
                                                                       else [2, -3, 1e308, -1e308]))
        elif kind == 1:   # a wrong length
            body[key] = body[key] * rng.choice([0, 2, 3]) + [0.1] * rng.choice([0, 1, 5])
            if len(body[key]) == 4:
                body[key].append(0.1)
        else:             # a wrong container
            body[key] = rng.choice([None, "0.5", 0.5, {"a": 1}, True])
        out.append(body)
    return out


def check(service, response, field=None):
    service["statuses"][response.status_code] += 1
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    if field is not None and response.status_code == 422:
        assert field in {str(x) for e in response.json()["detail"] for x in e["loc"]}, response.text[:300]


def raw_chunked(url, path, total, chunk=8_192, headers=()):
    """POST ``total`` bytes as a chunked body over a raw socket, stopping as soon as
    the server answers; returns the status code."""
    u = urlparse(url)
    head = [f"POST {path} HTTP/1.1", f"Host: {u.hostname}", "Transfer-Encoding: chunked",
            "Content-Type: application/json", f"Authorization: Bearer {TOKEN}", *headers]
    with socket.create_connection((u.hostname, u.port), timeout=20) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        payload = b'{"records": [{"prompt": "' + b"x" * total
        for start in range(0, len(payload), chunk):
            if select.select([sock], [], [], 0.001)[0]:
                break
            piece = payload[start:start + chunk]
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except OSError:
                break
        else:
            sock.sendall(b"0\r\n\r\n")
        data = b""
        while b"\r\n" not in data:
            more = sock.recv(65_536)
            if not more:
                break
            data += more
    return int(data.split(b" ")[1])


def raw_request(url, lines):
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=20) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = sock.recv(65_536)
    return int(data.split(b" ")[1])


def test_session_templates_and_records_are_checked_at_the_edge(service):
    with httpx.Client(timeout=30) as http:
        for body, field in session_cases():
            check(service, http.post(f"{service['url']}/v1/sessions", json=body, headers=AUTH), field)
    assert httpx.get(f"{service['url']}/health", timeout=5).status_code == 200


def test_controls_and_optimize_take_strict_types_and_ranges(service):
    url, sid = service["url"], service["session"]
    with httpx.Client(timeout=30) as http:
        for body, field in control_cases() + [(b, None) for b in random_control_cases(60)]:
            for endpoint in ("evaluate", "materialize"):
                check(service, http.post(f"{url}/v1/sessions/{sid}/{endpoint}", json=body, headers=AUTH), field)
        for body, field in optimize_cases():
            check(service, http.post(f"{url}/v1/sessions/{sid}/optimize", json=body, headers=AUTH), field)
        for raw in RAW_BODIES:  # NaN/inf literals, broken and non-object JSON
            check(service, http.post(f"{url}/v1/sessions/{sid}/evaluate", content=raw.encode("utf-8", "replace"),
                                     headers=JSON_AUTH))


def test_every_endpoint_but_health_needs_the_token(service):
    url, sid = service["url"], service["session"]
    with httpx.Client(timeout=30) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN[:-1]}"}, {"Authorization": f"Bearer {TOKEN}x"},
                        {"Authorization": "Bearer"}, {"Authorization": "Bearer \u00e9\u00e8".encode()}):
            for method, path in (("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/v1/presets"),
                                 ("POST", "/v1/sessions"), ("POST", f"/v1/sessions/{sid}/evaluate"),
                                 ("POST", f"/v1/sessions/{sid}/materialize"), ("POST", f"/v1/sessions/{sid}/optimize"),
                                 ("DELETE", f"/v1/sessions/{sid}"), ("GET", "/v1/jobs/x")):
                r = http.request(method, url + path, json=VALID if method == "POST" else None, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.status_code)
                check(service, r)


def test_unknown_sessions_jobs_methods_and_paths(service):
    url, sid = service["url"], service["session"]
    with httpx.Client(timeout=30) as http:
        for sid_bad in ("nope", "0" * 32, "x" * 5_000, "..%2F..%2Fetc"):
            for endpoint in ("evaluate", "materialize", "optimize"):
                check(service, http.post(f"{url}/v1/sessions/{sid_bad}/{endpoint}", json=VALID, headers=AUTH))
            check(service, http.delete(f"{url}/v1/sessions/{sid_bad}", headers=AUTH))
            check(service, http.get(f"{url}/v1/jobs/{sid_bad}", headers=AUTH))
        for method, path in (("GET", f"/v1/sessions/{sid}/evaluate"), ("PUT", "/v1/sessions"), ("GET", "/v2"),
                             ("POST", "/health")):
            check(service, http.request(method, url + path, headers=AUTH))


def test_body_limit_counts_the_bytes_read(service):
    url, sid = service["url"], service["session"]
    check(service, httpx.post(f"{url}/v1/sessions", content=b"x" * (5 * 10**6), headers=JSON_AUTH, timeout=30))
    for path in ("/v1/sessions", f"/v1/sessions/{sid}/evaluate"):  # chunked: no Content-Length to trust
        status = raw_chunked(url, path, 5 * 10**6)
        service["statuses"][status] += 1
        assert status == 413
    for length in ("abc", "-5", "99999999999999999999"):
        status = raw_request(url, ["POST /v1/sessions HTTP/1.1", "Host: x", f"Content-Length: {length}",
                                   f"Authorization: Bearer {TOKEN}"])
        service["statuses"][status] += 1
        assert 400 <= status < 500, (length, status)


def test_after_the_fuzz_the_loss_is_unchanged(service):
    sent = sum(service["statuses"].values())
    print(f"\nfuzz: {sent} malformed requests, statuses {dict(sorted(service['statuses'].items()))}")
    assert sent >= 100 and all(400 <= s < 500 for s in service["statuses"])
    assert valid_loss(service) == pytest.approx(service["loss"], rel=1e-6)


def test_a_body_under_the_limit_may_be_chunked(service):
    records = json.dumps({"records": RECORDS}).encode()
    r = httpx.post(f"{service['url']}/v1/sessions", content=iter([records[:10], records[10:]]), headers=JSON_AUTH)
    assert r.status_code == 200 and r.json()["examples"] == len(RECORDS)
    assert "content-length" not in r.request.headers


def test_concurrent_floods(service):
    """200 malformed requests at once get 4xx; 80 valid ones at once get the same loss
    or 429 (back-pressure past ``max_pending``), and the service keeps answering."""
    url, sid = service["url"], service["session"]
    bad = [("POST", f"/v1/sessions/{sid}/evaluate", b, AUTH) for b in random_control_cases(60, seed=1)]
    bad += [("POST", f"/v1/sessions/{sid}/evaluate", VALID, {})] * 60
    bad += [("POST", "/v1/sessions", {"records": RECORDS, "template": "{prompt:>2000000}"}, AUTH)] * 40
    bad += [("POST", "/v1/sessions/nope/evaluate", VALID, AUTH)] * 40

    async def flood(requests):
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as http:
            return await asyncio.gather(*(http.request(m, url + p, json=b, headers=h) for m, p, b, h in requests))

    started = time.perf_counter()
    for r in asyncio.run(flood(bad)):
        check(service, r)
    bad_seconds = time.perf_counter() - started
    good = asyncio.run(flood([("POST", f"/v1/sessions/{sid}/evaluate", VALID, AUTH)] * 80))
    statuses = Counter(r.status_code for r in good)
    print(f"\nflood: {len(bad)} malformed in {bad_seconds:.1f} s, {len(good)} valid in "
          f"{time.perf_counter() - started - bad_seconds:.1f} s, "
          f"valid statuses {dict(statuses)}")
    assert set(statuses) <= {200, 429} and statuses[200] >= 1
    for r in good:
        if r.status_code == 200:
            assert r.json()["loss"] == pytest.approx(service["loss"], rel=1e-6)
        else:
            assert r.headers["retry-after"] == "1"
    assert valid_loss(service) == pytest.approx(service["loss"], rel=1e-6)


def test_openapi_declares_the_bearer_scheme_and_needs_the_token(service):
    url = service["url"]
    assert httpx.get(f"{url}/openapi.json").status_code == 401
    assert httpx.get(f"{url}/docs").status_code == 401
    spec = httpx.get(f"{url}/openapi.json", headers=AUTH).json()
    schemes = spec["components"]["securitySchemes"]
    assert [s["scheme"].lower() for s in schemes.values()] == ["bearer"]
    name = next(iter(schemes))
    assert spec["paths"]["/v1/sessions/{session_id}/evaluate"]["post"]["security"] == [{name: []}]
    assert "security" not in spec["paths"]["/health"]["get"]
    assert httpx.get(f"{url}/docs", headers=AUTH).status_code == 200
    assert httpx.get(f"{url}/health").status_code == 200


def test_optimize_job_runs_with_strict_inputs(service):
    url, sid = service["url"], service["session"]
    r = httpx.post(f"{url}/v1/sessions/{sid}/optimize", json={"budget_alpha": 8, "budget_beta": 8, "popsize": 4,
                                                               "seed": 2**32 - 1}, headers=AUTH)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{r.json()['job']}", headers=AUTH).json()
        if job["status"] != "running":
            break
        time.sleep(0.05)
    assert job["status"] == "done", job
    assert job["result"]["queries"] == 16


def test_session_and_job_caps_answer_429_and_delete_frees_a_session(tmp_path):
    from fastapi.testclient import TestClient

    pool = make_pool(str(tmp_path / "pool"), n=2)
    app = create_app(SlotModel(tiny_llama(), pool.config, slots=2), pool, ByteTokenizer(), TOKEN,
                     max_sessions=2, max_jobs=1)
    with TestClient(app) as http:
        ids = [http.post("/v1/sessions", json={"records": RECORDS}, headers=AUTH).json()["session"] for _ in range(2)]
        full = http.post("/v1/sessions", json={"records": RECORDS}, headers=AUTH)
        assert full.status_code == 429 and full.headers["retry-after"] == "1"
        assert http.delete(f"/v1/sessions/{ids[0]}", headers=AUTH).status_code == 200
        assert http.delete(f"/v1/sessions/{ids[0]}", headers=AUTH).status_code == 404
        body = {"alpha": [1.0, 1.0], "beta": [0.5, 0.5]}
        assert http.post(f"/v1/sessions/{ids[0]}/evaluate", json=body, headers=AUTH).status_code == 404
        assert http.post("/v1/sessions", json={"records": RECORDS}, headers=AUTH).status_code == 200
        job = {"budget_alpha": 0, "budget_beta": 400, "popsize": 2}
        assert http.post(f"/v1/sessions/{ids[1]}/optimize", json=job, headers=AUTH).status_code == 200
        busy = http.post(f"/v1/sessions/{ids[1]}/optimize", json=job, headers=AUTH)
        assert busy.status_code == 429, busy.text  # one job at a time here
