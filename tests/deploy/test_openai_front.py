"""The HTTP front's edges without a cluster: status mapping from a scripted backend, the chat
template, API keys, the example serve configs and the ``tandem serve`` command line."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")

from cluster.api import (Admitted, ErrorKind, Failed, Finished, StageDone,  # noqa: E402
                         TokenChunk)
from cluster.backend import ModelInfo  # noqa: E402
from deploy.auth import OPEN_TENANT, api_key_auth, keys_from_env, parse_api_keys  # noqa: E402
from deploy.config import ServeConfig, load_serve_config  # noqa: E402
from deploy.metrics import ServingMetrics  # noqa: E402
from deploy.openai_api import make_app  # noqa: E402
from deploy.openai_request import chat_prompt_ids  # noqa: E402
from deploy.openai_schema import ChatCompletionRequest  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


class Scripted:
    """A Backend whose stream is a fixed list of items per prompt length (tests only)."""

    def __init__(self, script):
        self.script, self.requests = script, []

    def model_info(self):
        return ModelInfo("tiny", "/nowhere", 512, 384)

    async def generate(self, req):
        self.requests.append(req)
        for item in self.script(req.request_id):
            yield item

    async def cancel(self, request_id, tenant):
        return False

    async def ready(self, deep=False):
        return False

    async def stats(self):
        raise RuntimeError("no stats")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tests.tiny_models import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def call(app, method, path, **kwargs):
    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://front") as client:
            return await client.request(method, path, **kwargs)
    return asyncio.run(asyncio.wait_for(main(), 30))


def test_rejected_is_429_with_retry_after(tokenizer):
    backend = Scripted(lambda rid: [Failed(rid, ErrorKind.REJECTED, "overloaded: try later", 2.2)])
    app = make_app(backend, tokenizer, ServingMetrics("tiny"), api_key_auth({}))
    r = call(app, "POST", "/v1/completions", json={"prompt": "hi", "stream": True})
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert r.json()["error"] == {"message": "overloaded: try later", "type": "rate_limit_error",
                                 "code": "rejected", "param": None}


def test_failure_after_admission_is_an_sse_error_event(tokenizer):
    def script(rid):
        return [Admitted(rid, "best_effort", "p0", "d0", None, 0.0), TokenChunk(rid, 0, (5,), "a"),
                Failed(rid, ErrorKind.INTERNAL, "worker died")]
    app = make_app(Scripted(script), tokenizer, ServingMetrics("tiny"), api_key_auth({}))
    r = call(app, "POST", "/v1/completions", json={"prompt": "hi", "stream": True})
    events = [line for line in r.text.splitlines() if line.startswith("data: ")]
    assert r.status_code == 200 and '"text":"a"' in events[0]
    assert '"code":"internal"' in events[-2] and events[-1] == "data: [DONE]"
    r = call(app, "POST", "/v1/completions", json={"prompt": "hi"})
    assert r.status_code == 500 and r.json()["error"]["message"] == "worker died"


def test_open_tenant_and_defaults_reach_the_backend(tokenizer):
    def script(rid):
        return [Admitted(rid, "admitted", "p0", "d0", None, 0.0), TokenChunk(rid, 0, (5,), "ok"),
                StageDone(rid, 0, 3, 1, 0.1, None, 1.0, 1.0, True, "stop"),
                Finished(rid, "admitted", 3, 1, "stop", True, 0.1, 0)]
    backend = Scripted(script)
    app = make_app(backend, tokenizer, ServingMetrics("tiny"), api_key_auth({}), default_max_tokens=7)
    r = call(app, "POST", "/v1/completions", json={"prompt": "hi", "stop": "x", "top_k": -1,
                                                   "user": "u1", "logit_bias": {}})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "ok"
    req = backend.requests[-1]
    assert req.tenant == OPEN_TENANT and req.params == {"max_tokens": 7, "stop": ["x"]}
    assert call(app, "GET", "/ready").status_code == 503
    assert call(app, "GET", "/metrics").status_code == 200        # stats failing: still renders


def test_chat_uses_the_tokenizers_template_when_it_has_one(tokenizer):
    body = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "Hello"}]})
    fallback = chat_prompt_ids(body, tokenizer)
    assert tokenizer.decode(fallback, skip_special_tokens=True) == "user: Hello\nassistant:"
    tokenizer.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
                               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    try:
        templated = chat_prompt_ids(body, tokenizer)
    finally:
        tokenizer.chat_template = None
    assert tokenizer.decode(templated) == "<|user|>Hello<|assistant|>"


def test_api_keys_from_text_and_env():
    assert parse_api_keys(" k1=a, k2 = b ,") == {"k1": "a", "k2": "b"}
    for bad in ("k1", "=a", "k1=", "k1=a,k1=b"):
        with pytest.raises(ValueError):
            parse_api_keys(bad)
    assert keys_from_env({"TANDEM_API_KEYS": "x=t"}) == {"x": "t"}
    auth = api_key_auth({"x": "t"})
    assert auth({"authorization": "Bearer x"}) == "t"
    assert auth({"authorization": "Bearer y"}) is None and auth({}) is None
    assert api_key_auth({})({}) == OPEN_TENANT


def test_example_configs_load():
    laptop = load_serve_config(ROOT / "deploy" / "cpu_laptop.yaml")
    assert laptop.cluster.model is None and laptop.api_keys == {}
    gpu = load_serve_config(ROOT / "deploy" / "gpu_node.yaml")
    assert gpu.cluster.device == "cuda" and gpu.cluster.prefill_resources.num_gpus == 1
    with pytest.raises(ValueError):
        ServeConfig(http_port=9000, grpc_port=9000)


def test_tandem_serve_is_a_subcommand():
    from cluster.cli import _parser

    args = _parser().parse_args(["serve", "--config", "x.yaml", "--grpc-port", "50099"])
    assert (args.command, args.config, args.grpc_port, args.http_port) == ("serve", "x.yaml", 50099, None)


def test_serve_entry_builds_the_app_from_tandem_config(monkeypatch):
    import importlib
    import sys

    from ray.serve import Application

    monkeypatch.setenv("TANDEM_CONFIG", str(ROOT / "deploy" / "gpu_node.yaml"))
    monkeypatch.setenv("TANDEM_API_KEYS", "env-key=env-tenant")
    sys.modules.pop("deploy.serve_entry", None)
    entry = importlib.import_module("deploy.serve_entry")
    assert isinstance(entry.app, Application)
    sys.modules.pop("deploy.serve_entry", None)
