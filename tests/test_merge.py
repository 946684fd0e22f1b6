"""The merge service on a 127.0.0.1 port with a tiny random Llama and tiny random adapters."""
import asyncio
import json
import os
import socket
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("fastapi")
import httpx  # noqa: E402
import uvicorn  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from zoopt.merge.client import MergeClient, MergeServiceError  # noqa: E402
from zoopt.merge.lm import ByteTokenizer, SlotModel  # noqa: E402
from zoopt.merge.operator import merge_factors, topk_masks  # noqa: E402
from zoopt.merge.pool import load_pool, save_adapter  # noqa: E402
from zoopt.merge.run import run_merge  # noqa: E402
from zoopt.merge.service import create_app  # noqa: E402

TOKEN = "test-token-123"
TARGETS = ["q_proj", "v_proj", "down_proj"]
RECORDS = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (2, 2), (5, 1)]]


def tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=257, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def make_pool(folder, n=4, r=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    config = {"r": r, "lora_alpha": 2 * r, "target_modules": TARGETS, "peft_type": "LORA"}
    dims = {"q_proj": (32, 32), "v_proj": (32, 32), "down_proj": (48, 32)}
    for i in range(n):
        factors = {}
        for layer in range(2):
            for t in TARGETS:
                part = "mlp" if t == "down_proj" else "self_attn"
                d_in, d_out = dims[t]
                factors[f"base_model.model.model.layers.{layer}.{part}.{t}"] = (
                    torch.randn(r, d_in, generator=g) * 0.5, torch.randn(d_out, r, generator=g) * 0.5)
        save_adapter(os.path.join(folder, f"adapter{i}"), config, factors)
    return load_pool(folder)


class FaultInjector:
    """ASGI middleware: the k-th evaluate request gets the k-th planned fault."""

    def __init__(self, app, plan):
        self.app, self.plan, self.count = app, dict(plan), 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].endswith("/evaluate"):
            self.count += 1
            fault = self.plan.get(self.count)
            if fault == "sleep":
                await asyncio.sleep(1.5)  # past the client's timeout
            elif fault in (429, 500, 503):
                headers = [(b"content-type", b"application/json")]
                if fault == 429:
                    headers.append((b"retry-after", b"0"))
                await send({"type": "http.response.start", "status": fault, "headers": headers})
                await send({"type": "http.response.body", "body": b'{"detail": "injected"}'})
                return
        await self.app(scope, receive, send)


def serve(app):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    pool = make_pool(str(tmp_path_factory.mktemp("pool")))
    slot_model = SlotModel(tiny_llama(), pool.config, slots=4)
    app = create_app(slot_model, pool, ByteTokenizer(), TOKEN, presets={"two": ["adapter0", "adapter2"]},
                     max_body_bytes=200_000)
    injector = FaultInjector(app, {})
    server, thread, url = serve(injector)
    yield {"url": url, "pool": pool, "app": app, "injector": injector, "slot_model": slot_model}
    server.should_exit = True
    thread.join(timeout=10)


def auth():
    return {"Authorization": f"Bearer {TOKEN}"}


def session(url, records=RECORDS, preset="all"):
    r = httpx.post(f"{url}/v1/sessions", json={"records": records, "preset": preset}, headers=auth())
    assert r.status_code == 200, r.text
    return r.json()


def test_merge_operator_equals_its_formula(tmp_path):
    pool = make_pool(str(tmp_path), n=3)
    alpha, beta = torch.tensor([1.0, 0.3, 0.0]), torch.tensor([0.5, -1.2, 0.8])
    merged = merge_factors(pool, alpha, beta)
    for m in pool.modules:
        expected_a = torch.zeros_like(pool.A[m][0])
        for i in range(3):
            a = pool.A[m][i]
            k = 0 if alpha[i] == 0 else max(1, round(float(alpha[i]) * a.numel()))
            kept = torch.zeros_like(a)
            if k:
                idx = a.abs().reshape(-1).topk(k).indices
                kept.view(-1)[idx] = a.view(-1)[idx]
            expected_a += beta[i] * kept
        expected_b = sum(beta[i] * pool.B[m][i] for i in range(3))
        assert torch.allclose(merged[m][0], expected_a, atol=1e-6)
        assert torch.allclose(merged[m][1], expected_b, atol=1e-6)
    mask = topk_masks(pool.A[pool.modules[0]], torch.tensor([0.25, 1.0, 0.0]))
    n = pool.A[pool.modules[0]][0].numel()
    assert mask.reshape(3, -1).sum(1).tolist() == [round(0.25 * n), n, 0]


def test_evaluate_matches_a_direct_forward(service):
    s = session(service["url"])
    alpha, beta = [1.0, 0.5, 0.2, 0.9], [0.25, -0.5, 1.0, 0.1]
    r = httpx.post(f"{service['url']}/v1/sessions/{s['session']}/evaluate", json={"alpha": alpha, "beta": beta},
                   headers=auth())
    assert r.status_code == 200
    from zoopt.merge.lm import encode_examples

    sm = service["slot_model"]
    examples = encode_examples(ByteTokenizer(), RECORDS)
    sm.write(3, merge_factors(service["pool"], alpha, beta))
    assert r.json()["loss"] == pytest.approx(sm.losses([(3, examples)])[0], rel=1e-6)


def test_concurrent_requests_share_forwards(service):
    s = session(service["url"])
    client = MergeClient(service["url"], TOKEN, concurrency=8)
    rng = np.random.default_rng(0)
    pairs = [(rng.uniform(0, 1, 4).tolist(), rng.uniform(-1, 1, 4).tolist()) for _ in range(8)]
    before = service["app"].state.batcher.batches
    batched = client.evaluate_many(s["session"], pairs)
    forwards = service["app"].state.batcher.batches - before
    assert forwards < len(pairs)  # several queries per forward
    one_by_one = MergeClient(service["url"], TOKEN, concurrency=1)
    alone = [one_by_one.evaluate_many(s["session"], [p])[0] for p in pairs]
    assert np.allclose(batched, alone, rtol=1e-6)


@pytest.mark.parametrize("body, field", [
    ({"alpha": [1, 1, 1], "beta": [0.1] * 4}, "alpha"),                 # wrong length
    ({"alpha": [1.2, 1, 1, 1], "beta": [0.1] * 4}, "alpha"),            # alpha out of [0, 1]
    ({"alpha": [1] * 4, "beta": [0.1, 2.0, 0, 0]}, "beta"),             # beta out of +-1.5
    ({"alpha": [1] * 4, "beta": [0.1, "x", 0, 0]}, "beta"),             # not numbers
    ({"alpha": [1] * 4}, "beta"),                                       # beta missing
    ({"alpha": [1] * 4, "beta": [0.1] * 4, "mask": "random"}, "mask"),  # unknown mask
])
def test_bad_requests_get_4xx_and_the_server_keeps_serving(service, body, field):
    s = session(service["url"])
    r = httpx.post(f"{service['url']}/v1/sessions/{s['session']}/evaluate", json=body, headers=auth())
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][:2] == ["body", field]
    assert httpx.get(f"{service['url']}/health").json()["status"] == "ok"


def test_nonfinite_and_oversized_and_unknown_session(service):
    s = session(service["url"])
    url = f"{service['url']}/v1/sessions/{s['session']}/evaluate"
    raw = '{"alpha": [1, 1, 1, NaN], "beta": [0.1, 0.1, 0.1, 0.1]}'
    r = httpx.post(url, content=raw, headers={**auth(), "content-type": "application/json"})
    assert r.status_code in (400, 422)
    big = {"records": [{"prompt": "x" * 10_000, "answer": "y"}] * 30}
    assert httpx.post(f"{service['url']}/v1/sessions", json=big, headers=auth()).status_code == 413
    r = httpx.post(f"{service['url']}/v1/sessions/nope/evaluate", json={"alpha": [1] * 4, "beta": [0] * 4},
                   headers=auth())
    assert r.status_code == 404


def test_requests_without_the_token_are_refused(service):
    url = service["url"]
    assert httpx.get(f"{url}/v1/presets").status_code == 401
    assert httpx.get(f"{url}/v1/presets", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(f"{url}/v1/sessions", json={"records": RECORDS}).status_code == 401
    presets = httpx.get(f"{url}/v1/presets", headers=auth()).json()["presets"]
    assert {p["id"]: p["size"] for p in presets} == {"all": 4, "two": 2}


def test_sessions_are_isolated(service):
    a = session(service["url"])
    b = session(service["url"], records=[{"prompt": "hello ", "answer": "world"}], preset="two")
    assert a["session"] != b["session"] and b["pool_size"] == 2
    url = service["url"]
    la = httpx.post(f"{url}/v1/sessions/{a['session']}/evaluate", json={"alpha": [1] * 4, "beta": [0.25] * 4},
                    headers=auth()).json()["loss"]
    lb = httpx.post(f"{url}/v1/sessions/{b['session']}/evaluate", json={"alpha": [1] * 2, "beta": [0.5] * 2},
                    headers=auth()).json()["loss"]
    assert la != lb
    wrong = httpx.post(f"{url}/v1/sessions/{b['session']}/evaluate", json={"alpha": [1] * 4, "beta": [0.25] * 4},
                       headers=auth())
    assert wrong.status_code == 422  # b's preset has 2 adapters


def test_materialize_returns_a_peft_adapter(service, tmp_path):
    s = session(service["url"])
    client = MergeClient(service["url"], TOKEN)
    files = client.materialize(s["session"], [1, 0.5, 1, 1], [0.3, 0.2, -0.1, 0.4], str(tmp_path))
    assert sorted(files) == ["adapter_config.json", "adapter_model.safetensors"]
    from zoopt.merge.pool import read_adapter

    config, factors = read_adapter(str(tmp_path))
    expected = merge_factors(service["pool"], [1, 0.5, 1, 1], [0.3, 0.2, -0.1, 0.4])
    assert config.r == 4 and set(factors) == set(expected)
    for m in expected:
        assert torch.equal(factors[m][0], expected[m][0]) and torch.equal(factors[m][1], expected[m][1])


def test_client_survives_faults_and_finishes_with_the_same_result(service, tmp_path):
    kwargs = dict(budget=48, popsize=8, seed=1, progress=False)
    clean = run_merge(service["url"], TOKEN, RECORDS, str(tmp_path / "clean"), **kwargs)
    service["injector"].count = 0
    service["injector"].plan = {2: 429, 5: 500, 9: "sleep", 12: 503, 20: 429, 21: 500}
    faulty_client = MergeClient(service["url"], TOKEN, concurrency=4, timeout_s=0.8, backoff_s=0.01)
    faulty = run_merge(service["url"], TOKEN, RECORDS, str(tmp_path / "faulty"), client=faulty_client, **kwargs)
    service["injector"].plan = {}
    assert faulty_client.retried >= 6
    assert faulty["alpha"] == clean["alpha"] and faulty["beta"] == clean["beta"]
    assert faulty["loss"] == pytest.approx(clean["loss"], rel=1e-6)
    assert faulty["queries"] == clean["queries"] == 48
    saved = open(tmp_path / "faulty" / "state.json", "rb").read()
    assert TOKEN.encode() not in saved and TOKEN not in repr(faulty_client)


def test_resume_after_an_interruption_gives_the_same_result(service, tmp_path):
    kwargs = dict(budget=48, popsize=8, seed=3, progress=False)
    full = run_merge(service["url"], TOKEN, RECORDS, str(tmp_path / "full"), **kwargs)

    class Interrupt(Exception):
        pass

    class Flaky(MergeClient):
        calls = 0

        def evaluate_many(self, session, pairs):
            Flaky.calls += 1
            if Flaky.calls == 4:
                raise Interrupt()
            return super().evaluate_many(session, pairs)

    with pytest.raises(Interrupt):
        run_merge(service["url"], TOKEN, RECORDS, str(tmp_path / "resumed"), client=Flaky(service["url"], TOKEN),
                  **kwargs)
    resumed = run_merge(service["url"], TOKEN, RECORDS, str(tmp_path / "resumed"), **kwargs)
    assert resumed["alpha"] == full["alpha"] and resumed["beta"] == full["beta"]
    assert json.load(open(tmp_path / "resumed" / "result.json"))["queries"] == 48


def test_exhausted_retries_are_reported(service):
    s = session(service["url"])
    service["injector"].count = 0
    service["injector"].plan = {k: 500 for k in range(1, 10)}
    client = MergeClient(service["url"], TOKEN, retries=2, backoff_s=0.01)
    with pytest.raises(MergeServiceError, match="after 3 attempts"):
        client.evaluate_many(s["session"], [([1] * 4, [0.1] * 4)])
    service["injector"].plan = {}


def test_whitebox_references_follow_their_definitions(tmp_path):
    from zoopt.merge.whitebox import dare, task_vectors, ties

    pool = make_pool(str(tmp_path), n=3)
    m = pool.modules[0]
    tv = task_vectors(pool, m)
    assert torch.allclose(tv[1], pool.scaling * pool.B[m][1] @ pool.A[m][1], atol=1e-6)
    full = ties(pool, density=1.0)[m]
    sign = torch.sign(tv.sum(0))
    agree = torch.sign(tv) == sign
    assert torch.allclose(full, (tv * agree).sum(0) / agree.sum(0).clamp(min=1), atol=1e-6)
    assert torch.allclose(dare(pool, drop=0.0, scale=0.5)[m], 0.5 * tv.sum(0), atol=1e-5)
    trimmed = ties(pool, density=0.1)[m]
    assert (trimmed != 0).float().mean() < (full != 0).float().mean()
