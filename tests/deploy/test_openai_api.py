"""The OpenAI-compatible HTTP front on a real cluster (local loopback Ray, tiny model), served by
uvicorn on 127.0.0.1 and driven by the real ``openai`` client and by httpx.

The tiny model's tokenizer has no chat template, so chat requests use the front's plain
"role: content" fallback (the template path is checked on its own below).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

ray = pytest.importorskip("ray")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from cluster.builder import build_cluster  # noqa: E402
from deploy.auth import api_key_auth  # noqa: E402
from deploy.metrics import ServingMetrics  # noqa: E402
from deploy.openai_api import make_app  # noqa: E402
from tests.ray_cluster import local_ray, tiny_cluster_config  # noqa: E402

TIMEOUT = 60.0
KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}
LONG = {"max_tokens": 480, "temperature": 0, "ignore_eos": True}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UvicornThread:
    """A uvicorn server on 127.0.0.1 in a daemon thread; ``stop`` waits for it with a deadline."""

    def __init__(self, app, port: int):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> "UvicornThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def cluster(llama_dir):
    config = tiny_cluster_config(llama_dir)
    with local_ray("toai"):
        handle = build_cluster(config)
        try:
            yield handle
        finally:
            handle.shutdown()


@pytest.fixture(scope="module")
def server(cluster, llama_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(llama_dir))
    app = make_app(cluster, tokenizer, ServingMetrics(cluster.info.name), api_key_auth(KEYS),
                   max_body_bytes=64 * 1024, disconnect_poll_s=0.1)
    srv = UvicornThread(app, free_port()).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="key-a", timeout=TIMEOUT, max_retries=0)


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT,
                      headers={"Authorization": "Bearer key-a"}) as client:
        yield client


def model_name(cluster) -> str:
    return cluster.info.name


def assert_cluster_idle(cluster, within_s: float = 10.0) -> None:
    """No request left in the controller, no KV held anywhere, the block managers consistent."""
    deadline = time.monotonic() + within_s
    while True:
        stats = asyncio.run(asyncio.wait_for(cluster.stats(), TIMEOUT))
        usage = {n: ray.get(w.stats.remote(), timeout=30).kv_usage for n, w in cluster.workers.items()}
        if (stats.running == 0 and stats.waiting == 0 and not stats.tenants_running
                and all(u == 0 for u in usage.values())):
            break
        assert time.monotonic() < deadline, (stats, usage)
        time.sleep(0.2)
    for worker in cluster.workers.values():
        ray.get(worker.check_invariants.remote(), timeout=30)


# ── the openai client ───────────────────────────────────────────────────────────────────────
def test_completion_non_streaming(oai, cluster):
    out = oai.completions.create(model=model_name(cluster), prompt="Hello world", max_tokens=6,
                                 temperature=0, extra_body={"ignore_eos": True})
    assert out.object == "text_completion" and out.id.startswith("cmpl-")
    assert out.choices[0].finish_reason == "length" and out.choices[0].text
    assert out.usage.completion_tokens == 6 and out.usage.prompt_tokens > 0
    tandem = out.model_extra["tandem"]
    assert tandem["admission"] in ("admitted", "best_effort")
    assert len(tandem["stages"]) == 1 and tandem["stages"][0]["ttft_s"] > 0
    assert isinstance(tandem["slo_met"], bool)


def test_streamed_completion_equals_non_streamed(oai, cluster):
    args = dict(model=model_name(cluster), prompt="The quick brown fox", max_tokens=8, temperature=0,
                extra_body={"ignore_eos": True})
    whole = oai.completions.create(**args)
    chunks = list(oai.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    finals = [c for c in chunks if c.model_extra.get("tandem")]
    assert len(finals) == 1 and finals[0].model_extra["tandem"]["stages"][0]["completion_tokens"] == 8


def test_chat_completion_streaming_and_not(oai, cluster):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    args = dict(model=model_name(cluster), messages=messages, max_tokens=5, temperature=0,
                extra_body={"ignore_eos": True})
    whole = oai.chat.completions.create(**args)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.usage.completion_tokens == 5
    chunks = list(oai.chat.completions.create(stream=True, **args))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_tandem_fields_make_a_two_stage_request(oai, cluster):
    out = oai.completions.create(
        model=model_name(cluster), prompt="Call the tool", max_tokens=4, temperature=0,
        extra_body={"ignore_eos": True, "lane": "heavy", "scenario": "tool_calling", "session_id": "s1",
                    "stages": [{"append_text": " result: 42.", "max_tokens": 3, "tool_delay_ms": 20}]})
    stages = out.model_extra["tandem"]["stages"]
    assert [s["stage"] for s in stages] == [0, 1]
    assert [s["completion_tokens"] for s in stages] == [4, 3]
    assert out.usage.completion_tokens == 7
    assert all(s["ttft_slo_s"] > 0 and s["tpot_slo_s"] > 0 for s in stages)


def test_models_lists_the_served_model(oai, cluster):
    assert [m.id for m in oai.models.list()] == [model_name(cluster)]


# ── errors ──────────────────────────────────────────────────────────────────────────────────
BAD = [
    ({"prompt": "hi", "max_tokens": -1}, 400, "max_tokens"),
    ({"prompt": "hi", "bogus": 1}, 400, "bogus: unknown field"),
    ({"prompt": "hi", "tenant": "tenant-b"}, 400, "tenant cannot be set"),
    ({"prompt": "hi", "ttft_ms": 0}, 400, "ttft_ms"),
    ({"prompt": "hi", "tpot_ms": -5}, 400, "tpot_ms"),
    ({"prompt": "hi", "stages": [{"append_text": "x", "max_tokens": 2, "ttft_ms": -1}]}, 400, "ttft_ms"),
    ({"prompt": "hi", "n": 2}, 400, "n must be 1"),
    ({"prompt": "hi", "scenario": "nope"}, 400, "scenario"),
    ({"prompt": "hi", "lane": "vip"}, 400, "lane"),
    ({"prompt": [1, 2, 100000]}, 400, "outside the vocabulary"),
    ({"prompt": [3 + i % 300 for i in range(600)]}, 400, "context window"),
    ({"prompt": "hi", "max_tokens": 600}, 400, "context window"),
    ({"prompt": "hi", "model": "gpt-4"}, 404, "does not exist"),
    ({"prompt": "hi", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ({}, 400, "prompt: Field required"),
]


@pytest.mark.parametrize("body,status,needle", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_request_gets_its_status_and_message(http, body, status, needle):
    r = http.post("/v1/completions", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"] and error["type"] and error["code"]


def test_bad_bodies_then_the_server_still_serves(http, oai, cluster):
    r = http.post("/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = http.post("/v1/completions", content=b"[1, 2]")
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    r = http.post("/v1/completions", content=b"x" * (65 * 1024))
    assert r.status_code == 413 and "larger than" in r.json()["error"]["message"]
    r = http.post("/v1/chat/completions", json={"messages": [], "max_tokens": 2})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError):
        oai.completions.create(model=model_name(cluster), prompt="hi", max_tokens=-3)
    assert http.get("/health").json() == {"status": "ok"}
    out = oai.completions.create(model=model_name(cluster), prompt="still fine", max_tokens=2)
    assert out.usage.completion_tokens >= 1
    assert_cluster_idle(cluster)


def test_missing_or_wrong_key_is_401(server, cluster):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as plain:
        r = plain.post("/v1/completions", json={"prompt": "hi"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = plain.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", timeout=TIMEOUT, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model=model_name(cluster), prompt="hi", max_tokens=2)


# ── cancellation ────────────────────────────────────────────────────────────────────────────
def test_a_tenant_cannot_cancel_another_tenants_request(server, http, cluster):
    body = {"prompt": "A long answer please", "stream": True, **LONG}
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        with client.stream("POST", "/v1/completions", json=body,
                           headers={"Authorization": "Bearer key-a", "X-Request-Id": "mine-1"}) as r:
            assert r.status_code == 200 and r.headers["x-request-id"] == "mine-1"
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            other = http.post("/v1/requests/mine-1/cancel", headers={"Authorization": "Bearer key-b"})
            assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
            own = http.post("/v1/requests/mine-1/cancel")
            assert own.status_code == 200 and own.json()["cancelled"] is True
            rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]" and '"code":"cancelled"' in rest[-2]
    assert http.post("/v1/requests/mine-1/cancel").status_code == 404      # not running any more
    assert_cluster_idle(cluster)


def generated_tokens(cluster) -> int:
    return asyncio.run(asyncio.wait_for(cluster.stats(), TIMEOUT)).generation_tokens


def test_client_disconnect_mid_stream_cancels_and_frees_kv(server, cluster):
    base = generated_tokens(cluster)
    body = {"prompt": "Tell me everything", "stream": True, **LONG}
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        with client.stream("POST", "/v1/completions", json=body,
                           headers={"Authorization": "Bearer key-a"}) as r:
            assert r.status_code == 200
            seen = 0
            for line in r.iter_lines():
                seen += line.startswith("data: ")
                if seen >= 4:
                    break                                  # leave mid-stream: the connection closes
    assert_cluster_idle(cluster)
    assert generated_tokens(cluster) - base < LONG["max_tokens"]      # stopped early


def test_client_disconnect_before_the_answer_cancels_a_non_streamed_request(server, cluster):
    base = generated_tokens(cluster)
    body = {"prompt": "Tell me everything", **LONG}
    with httpx.Client(base_url=server.url, timeout=0.5, headers={"Authorization": "Bearer key-a"}) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/completions", json=body)    # gives up while the server still decodes
    assert_cluster_idle(cluster)
    assert generated_tokens(cluster) - base < LONG["max_tokens"]


# ── health, readiness, metrics ──────────────────────────────────────────────────────────────
def test_health_and_ready(http):
    assert http.get("/health").status_code == 200
    assert http.get("/ready").json() == {"ready": True, "deep": False}
    assert http.get("/ready", params={"deep": 1}).json() == {"ready": True, "deep": True}


def _series(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def test_metrics_move_with_traffic(http, oai, cluster):
    before = http.get("/metrics")
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    oai.completions.create(model=model_name(cluster), prompt="metrics", max_tokens=3, temperature=0,
                           extra_body={"ignore_eos": True})
    after = http.get("/metrics").text
    for name in ("vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_count",
                 "vllm:e2e_request_latency_seconds_count", "tandem_tenant_requests_total{",
                 "tandem_slo_stages_total{"):
        assert _series(after, name) > _series(before.text, name), name
    assert 'tandem_tenant_requests_total{outcome="finished",tenant="tenant-a"}' in after
    assert "vllm:kv_cache_usage_perc" in after and "tandem_worker_healthy" in after

