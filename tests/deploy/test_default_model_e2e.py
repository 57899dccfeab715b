"""Issue 6, acceptance 1 on the embedded default model: a real Ray Serve app (1 prefill + 1
decode worker); the real ``openai`` client streams and non-streams completions and chat
completions; the gRPC SDK streams, cancels, and retries after a 429 (a tenant over its request
rate is rejected with a retry-after); ``/metrics`` shows the series moving.
"""

from __future__ import annotations

import time

import pytest

ray = pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from client import Admitted, TandemClient  # noqa: E402
from client.retry import RetryPolicy  # noqa: E402
from cluster.config import ClusterConfig  # noqa: E402
from deploy.config import ServeConfig  # noqa: E402
from router.config import SchedulerConfig, TenantLimit  # noqa: E402
from tests.deploy.test_openai_api import free_port  # noqa: E402
from tests.ray_cluster import serve_app  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
TIMEOUT = 120.0


@pytest.fixture(scope="module")
def deployed():
    from engine.default_model import default_model_path, is_ready

    if not is_ready():
        pytest.skip("the default model is not fetched (tandem model fetch)")
    limited = TenantLimit(requests_per_s=0.2, request_burst=1)
    cluster = ClusterConfig(model=str(default_model_path()), device="cpu", num_blocks=1024, calibration_steps=32,
                            prefill_resources={"num_cpus": 0.5}, decode_resources={"num_cpus": 0.5},
                            slo_scale=50.0, min_ttft_s=30.0, ready_timeout_s=240.0,
                            scheduler=SchedulerConfig(tenants={"slow-tenant": limited}))
    config = ServeConfig(cluster=cluster, http_port=free_port(), grpc_port=free_port(),
                         api_keys={"key-a": "tenant-a", "key-slow": "slow-tenant"}, controller_name="tandem-e2e")
    with serve_app(config, "te2e", timeout_s=400):
        yield config


def test_openai_client_completions_and_chat(deployed):
    oai = openai.OpenAI(base_url=f"http://127.0.0.1:{deployed.http_port}/v1", api_key="key-a", timeout=TIMEOUT)
    model = oai.models.list().data[0].id
    done = oai.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert done.choices[0].text and done.usage.completion_tokens <= 8
    chunks = list(oai.completions.create(model=model, prompt="The capital of France is", max_tokens=8,
                                         temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == done.choices[0].text
    chat = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hi."}],
                                       max_tokens=12, temperature=0)
    assert chat.choices[0].message.content
    streamed = list(oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hi."}],
                                                max_tokens=12, temperature=0, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == chat.choices[0].message.content


def test_grpc_streams_and_cancels(deployed):
    with TandemClient.connect(f"127.0.0.1:{deployed.grpc_port}", api_key="key-a") as client:
        events = list(client.generate("Once upon a time", max_tokens=6, temperature=0, ignore_eos=True,
                                      timeout=TIMEOUT))
        assert isinstance(events[0], Admitted) and events[-1].completion_tokens == 6
        stream = client.generate("Tell me a long story", max_tokens=200, ignore_eos=True, timeout=TIMEOUT)
        got = 0
        for event in stream:
            got += 1
            if got == 4:
                stream.cancel()
        assert got < 50


def test_grpc_retries_after_a_429(deployed):
    retry = RetryPolicy(max_attempts=4, initial_backoff=0.1, max_backoff=10.0)
    with TandemClient.connect(f"127.0.0.1:{deployed.grpc_port}", api_key="key-slow", retry=retry) as client:
        assert client.complete("one", max_tokens=2, timeout=TIMEOUT).finished.completion_tokens == 2
        begin = time.monotonic()
        out = client.complete("two", max_tokens=2, timeout=TIMEOUT)   # over the tenant's rate: 429, then retried
        waited = time.monotonic() - begin
    assert out.finished.completion_tokens == 2
    assert waited >= 1.0, "the second request should have been rejected and retried after retry-after"


def test_metrics_move(deployed):
    url = f"http://127.0.0.1:{deployed.http_port}"
    with httpx.Client(base_url=url, timeout=TIMEOUT, headers={"Authorization": "Bearer key-a"}) as http:
        text = http.get("/metrics").text
        for name in ("vllm:time_to_first_token_seconds", "vllm:generation_tokens_total", "vllm:kv_cache_usage_perc",
                     "tandem_"):
            assert name in text, name
        count = _ttft_count(text)
        assert http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3}).status_code == 200
        assert _ttft_count(http.get("/metrics").text) > count


def _ttft_count(text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:time_to_first_token_seconds_count"))
