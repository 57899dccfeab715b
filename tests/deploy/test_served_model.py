"""The HTTP front over a ``MultiBackend`` of in-memory backends: responses name the model that
served the request (lane rule, capability and overload fallback moves included), and chat
completions go only to models tagged "chat". No Ray (tests/deploy/test_multi_model.py is live)."""

from __future__ import annotations

import asyncio
import json

import pytest

httpx = pytest.importorskip("httpx")

from cluster.api import ErrorKind, Finished, GenerateRequest, Routed  # noqa: E402
from deploy.auth import api_key_auth  # noqa: E402
from deploy.metrics import ServingMetrics  # noqa: E402
from deploy.model_router import ModelRouter, ModelRoutes, RouteReason  # noqa: E402
from deploy.multi_backend import MultiBackend  # noqa: E402
from deploy.openai_api import make_app  # noqa: E402
from router.request import Lane  # noqa: E402
from tests.deploy.test_multi_backend import FakeBackend  # noqa: E402

ROUTES = {
    "main": {"versions": {"v1": 1, "v2": 0}, "fallback": "small", "tags": ["chat"]},
    "small": {"versions": {"v1": 1}, "max_context": 64, "tags": ["chat"]},
    "base": {"versions": {"v1": 1}, "lanes": {"heavy": "main"}},          # a completion-only model
}
KEYS = ("main", "v1"), ("main", "v2"), ("small", "v1"), ("base", "v1")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tests.tiny_models import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def multi(routes: dict = ROUTES, states: dict | None = None) -> MultiBackend:
    states = states or {}
    fakes = {k: FakeBackend(f"{k[0]}-{k[1]}") for k in KEYS if k[0] in routes}
    windows = {m: 512 for m in routes}
    return MultiBackend(fakes, ModelRouter(ModelRoutes.model_validate({"models": routes}), windows),
                        overload_state_of=lambda m: states.get(m, "normal"))


def app_over(backend, tokenizer):
    return make_app(backend, tokenizer, ServingMetrics("main"), api_key_auth({}), disconnect_poll_s=0.05)


def post(app, path: str, body: dict) -> httpx.Response:
    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://front") as client:
            return await client.post(path, json=body)
    return asyncio.run(asyncio.wait_for(main(), 30))


def chunks(response: httpx.Response) -> list[dict]:
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


COMPLETION = {"prompt": "Hello world", "max_tokens": 4}
CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}


# ── the model field names the model that served the request ─────────────────────────────────
def test_multi_backend_streams_the_route_first():
    backend = multi(states={"main": "degraded"})

    async def collect():
        request = GenerateRequest("r", (1, 2, 3), {"max_tokens": 2}, lane=Lane.BACKGROUND)
        return [i async for i in backend.generate(request)]
    items = asyncio.run(collect())
    assert items[0] == Routed("r", "small", "v1", RouteReason.FALLBACK.value)
    assert isinstance(items[-1], Finished)


def test_a_fallback_is_named_in_the_whole_body_and_in_every_chunk(tokenizer):
    app = app_over(multi(states={"main": "degraded"}), tokenizer)
    body = {**COMPLETION, "model": "main", "lane": "background"}
    whole = post(app, "/v1/completions", body)
    assert whole.status_code == 200, whole.text
    assert whole.json()["model"] == "small"
    assert whole.json()["tandem"]["route"] == {"model": "small", "version": "v1", "reason": "fallback"}
    streamed = chunks(post(app, "/v1/completions", {**body, "stream": True,
                                                    "stream_options": {"include_usage": True}}))
    assert len(streamed) >= 3 and {c["model"] for c in streamed} == {"small"}


def test_a_chat_stream_moved_by_a_lane_rule_names_the_target_in_every_chunk(tokenizer):
    app = app_over(multi(), tokenizer)
    streamed = chunks(post(app, "/v1/chat/completions",
                           {**CHAT, "model": "base", "stream": True, "lane": "heavy"}))
    assert len(streamed) >= 3 and {c["model"] for c in streamed} == {"main"}
    assert streamed[-1]["tandem"]["route"]["reason"] == "lane"
    moved = post(app, "/v1/completions", {**COMPLETION, "model": "base", "lane": "heavy"})
    assert moved.json()["model"] == "main" and moved.json()["tandem"]["route"]["reason"] == "lane"


def test_a_capability_move_is_named(tokenizer):
    app = app_over(multi(), tokenizer)
    r = post(app, "/v1/completions", {**COMPLETION, "model": "small", "max_tokens": 100})
    assert r.status_code == 200 and r.json()["model"] == "main"
    assert r.json()["tandem"]["route"]["reason"] == "capability"


def test_a_request_served_by_the_model_it_names_keeps_the_name(tokenizer):
    app = app_over(multi(), tokenizer)
    r = post(app, "/v1/completions", {**COMPLETION, "model": "small"})
    assert r.json()["model"] == "small" and r.json()["tandem"]["route"]["reason"] == "requested"
    streamed = chunks(post(app, "/v1/chat/completions", {**CHAT, "stream": True}))
    assert {c["model"] for c in streamed} == {"main"}          # no model named: the default


def test_a_single_model_backend_names_its_model_and_has_no_route(tokenizer):
    app = app_over(FakeBackend("solo"), tokenizer)
    r = post(app, "/v1/completions", COMPLETION)
    assert r.json()["model"] == "solo-folder-name" and r.json()["tandem"]["route"] is None


# ── chat completions need a model tagged "chat" ─────────────────────────────────────────────
def test_chat_for_a_model_without_chat_goes_to_the_first_chat_model(tokenizer):
    backend = multi()
    app = app_over(backend, tokenizer)
    r = post(app, "/v1/chat/completions", {**CHAT, "model": "base"})
    assert r.status_code == 200 and r.json()["model"] == "main"
    assert r.json()["tandem"]["route"]["reason"] == "capability"
    assert backend.backends[("base", "v1")].seen == []


def test_completions_are_not_bound_by_the_chat_tag(tokenizer):
    backend = multi()
    r = post(app_over(backend, tokenizer), "/v1/completions", {**COMPLETION, "model": "base"})
    assert r.status_code == 200 and r.json()["model"] == "base"
    assert [q.needs for q in backend.backends[("base", "v1")].seen] == [frozenset()]


def test_chat_requests_carry_the_chat_need_to_the_backend(tokenizer):
    backend = multi()
    post(app_over(backend, tokenizer), "/v1/chat/completions", CHAT)
    assert [q.needs for q in backend.backends[("main", "v1")].seen] == [frozenset({"chat"})]


def test_chat_when_no_model_serves_chat_is_a_clear_400(tokenizer):
    app = app_over(multi({"base": ROUTES["base"] | {"lanes": {}}}), tokenizer)
    r = post(app, "/v1/chat/completions", CHAT)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == ErrorKind.INVALID.value and "chat" in error["message"]
    assert post(app, "/v1/completions", COMPLETION).status_code == 200


def test_per_request_metrics_are_labelled_with_the_serving_model(tokenizer):
    metrics = ServingMetrics("main")
    app = make_app(multi(states={"main": "degraded"}), tokenizer, metrics, api_key_auth({}))
    assert post(app, "/v1/completions", {**COMPLETION, "lane": "background"}).status_code == 200
    text = metrics.render()[0].decode()
    ttft = [line for line in text.splitlines() if line.startswith("vllm:time_to_first_token_seconds_count")]
    assert ttft == ['vllm:time_to_first_token_seconds_count{model_name="small"} 1.0']
