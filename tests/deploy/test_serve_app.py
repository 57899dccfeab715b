"""The whole serving stack as Ray Serve runs it: ``build_app`` on a local loopback Ray with the
tiny model; one completion over HTTP (Serve's proxy → the FastAPI ingress) and one over gRPC
(the replica's own server on 127.0.0.1, through the SDK), then ``serve.shutdown()``."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")

from client import TandemClient  # noqa: E402
from deploy.config import ServeConfig  # noqa: E402
from tests.deploy.test_openai_api import free_port  # noqa: E402
from tests.ray_cluster import serve_app, tiny_cluster_config  # noqa: E402

TIMEOUT = 60.0
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def deployed(llama_dir):
    cluster = tiny_cluster_config(llama_dir, ready_timeout_s=120.0)
    config = ServeConfig(cluster=cluster, http_port=free_port(), grpc_port=free_port(),
                         api_keys={"key-s": "tenant-s"}, controller_name="tandem-serve-test")
    with serve_app(config, "tserve", timeout_s=240):
        yield config


def test_completion_over_serve_http(deployed):
    url = f"http://127.0.0.1:{deployed.http_port}"
    with httpx.Client(base_url=url, timeout=TIMEOUT, headers={"Authorization": "Bearer key-s"}) as http:
        assert http.get("/health").json() == {"status": "ok"}
        r = http.post("/v1/completions", json={"prompt": "Hello world", "max_tokens": 5, "temperature": 0,
                                               "ignore_eos": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["usage"]["completion_tokens"] == 5 and body["tandem"]["admission"]
        assert http.post("/v1/completions", json={"prompt": "hi"},
                         headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_completion_over_the_replicas_grpc_server(deployed):
    with TandemClient.connect(f"127.0.0.1:{deployed.grpc_port}", api_key="key-s") as client:
        assert client.health(timeout=TIMEOUT) == "SERVING"
        out = client.complete("Hello world", max_tokens=4, temperature=0, ignore_eos=True, timeout=TIMEOUT)
    assert out.finished.completion_tokens == 4 and len(out.token_ids) == 4
