"""Several models behind one OpenAI front, on a real local Ray cluster: three tiny clusters (one
colocated worker each) built from a ``ServeConfig.models`` section by
``deploy.multi_cluster.build_model_clusters``, served by uvicorn on 127.0.0.1::

    main   v1         tiny Llama     (stable)
           v2-canary  tiny Llama     (same weights: a canary of a new build)
    small  v1         tiny Qwen2     (main's fallback; same tokenizer)

Which cluster served a request is read from the clusters' own stats (completed requests), and
checked against ``MultiBackend.counts``. The overload state is injected through the router's
``overload_state_of`` callable.
"""

from __future__ import annotations

import asyncio
import time

import pytest

ray = pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from cluster.config import ClusterConfig  # noqa: E402
from deploy.auth import api_key_auth  # noqa: E402
from deploy.config import ServeConfig  # noqa: E402
from deploy.metrics import ServingMetrics  # noqa: E402
from deploy.multi_cluster import build_model_clusters, load_tokenizers  # noqa: E402
from deploy.openai_api import make_app  # noqa: E402
from router.request import Lane  # noqa: E402
from tests.deploy.test_openai_api import UvicornThread, free_port  # noqa: E402
from tests.ray_cluster import local_ray  # noqa: E402

TIMEOUT = 60.0
TINY = {"max_tokens": 2, "temperature": 0, "ignore_eos": True}
STATES: dict[str, str] = {}


def cluster(path) -> dict:
    return ClusterConfig(model=str(path), device="cpu", dtype="float32", kernels="torch", num_blocks=64,
                         colocated_workers=1, colocated_resources={"num_cpus": 0.25},
                         calibration_steps=32, slo_scale=50.0, min_ttft_s=5.0,
                         ready_timeout_s=120.0).model_dump()


@pytest.fixture(scope="module")
def clusters(llama_dir, qwen2_dir):
    config = ServeConfig.model_validate({"controller_name": "tmm", "models": {
        "main": {"versions": {"v1": 90, "v2-canary": 10}, "fallback": "small",
                 "clusters": {"v1": cluster(llama_dir), "v2-canary": cluster(llama_dir)}},
        "small": {"versions": {"v1": 100}, "max_context": 64, "clusters": {"v1": cluster(qwen2_dir)}}}})
    with local_ray("tmulti"):
        built = build_model_clusters(config, lambda model: STATES.get(model, "normal"))
        try:
            yield built
        finally:
            built.shutdown()


@pytest.fixture(scope="module")
def http(clusters):
    tokenizers = load_tokenizers(clusters)
    app = make_app(clusters, tokenizers["main"], ServingMetrics("main"), api_key_auth({}),
                   disconnect_poll_s=0.1, tokenizers=tokenizers)
    srv = UvicornThread(app, free_port()).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=TIMEOUT) as client:
            yield client
    finally:
        srv.stop()


def completed(clusters) -> dict[tuple[str, str], int]:
    """Requests each (model, version) cluster has completed, from its own controller."""
    per = asyncio.run(asyncio.wait_for(clusters.per_model_stats(), TIMEOUT))
    return {k: sum(lane.completed for lane in s.lanes.values()) for k, s in per.items()}


def served_by(clusters, send) -> dict[tuple[str, str], int]:
    """Run ``send()``; how many requests each cluster completed meanwhile (counts must agree)."""
    before, routed = completed(clusters), dict(clusters.counts)
    send()
    deadline = time.monotonic() + 10
    while True:                       # the controller counts a request just after its last item
        after = completed(clusters)
        delta = {k: after[k] - before[k] for k in after if after[k] != before[k]}
        counted = {k: n - routed.get(k, 0) for k, n in clusters.counts.items() if n != routed.get(k, 0)}
        if delta == counted or time.monotonic() > deadline:
            assert delta == counted
            return delta
        time.sleep(0.1)


def complete(http, rid: str, **body) -> dict:
    r = http.post("/v1/completions", json={"prompt": "Hello world", **TINY, **body},
                  headers={"X-Request-Id": rid})
    assert r.status_code == 200, r.text
    return r.json()


def test_models_lists_every_served_name(http):
    models = http.get("/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["main", "small"]
    assert all(m["max_model_len"] == 512 for m in models)


def test_a_request_for_small_is_served_by_the_small_model(http, clusters):
    delta = served_by(clusters, lambda: complete(http, "to-small", model="small"))
    assert delta == {("small", "v1"): 1}
    assert complete(http, "to-main")["model"] == "main"
    assert http.post("/v1/completions", json={"prompt": "hi", "model": "gpt-9"}).status_code == 404


def test_canary_weights_split_requests_between_versions(http, clusters):
    router = clusters.router
    router.set_weights("main", {"v1": 50, "v2-canary": 50})
    ids = [f"canary-{i}" for i in range(20)]
    expected = {}
    for rid in ids:   # the version is a hash of the request id: the split is known in advance
        version = router.route("main", Lane.INTERACTIVE, 10, lambda m: "normal", key=rid).version
        expected[("main", version)] = expected.get(("main", version), 0) + 1
    delta = served_by(clusters, lambda: [complete(http, rid) for rid in ids])
    assert delta == expected and 5 <= expected[("main", "v2-canary")] <= 15


def test_rollback_sends_everything_to_the_stable_version(http, clusters):
    clusters.router.set_weights("main", {"v1": 10, "v2-canary": 90})
    assert clusters.router.rollback("main") == {"v1": 10.0, "v2-canary": 0.0}
    delta = served_by(clusters, lambda: [complete(http, f"rolled-{i}") for i in range(8)])
    assert delta == {("main", "v1"): 8}


def test_under_overload_background_falls_back_and_interactive_stays(http, clusters):
    clusters.router.rollback("main")
    STATES["main"] = "degraded"
    try:
        background = served_by(clusters, lambda: complete(http, "bg-1", lane="background"))
        interactive = served_by(clusters, lambda: complete(http, "ia-1", lane="interactive"))
    finally:
        STATES.clear()
    assert background == {("small", "v1"): 1} and interactive == {("main", "v1"): 1}
    assert served_by(clusters, lambda: complete(http, "bg-2", lane="background")) == {("main", "v1"): 1}


def test_a_request_longer_than_smalls_context_goes_to_main(http, clusters):
    clusters.router.rollback("main")
    delta = served_by(clusters, lambda: complete(http, "long-1", model="small", max_tokens=80))
    assert delta == {("main", "v1"): 1}
    r = http.post("/v1/completions", json={"prompt": "Hello", "model": "small", "max_tokens": 600})
    assert r.status_code == 400 and "context window" in r.json()["error"]["message"]


def test_cancel_reaches_the_cluster_that_holds_the_request(http, clusters):
    clusters.router.rollback("main")
    body = {"prompt": "Hello world", "max_tokens": 400, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with http.stream("POST", "/v1/completions", json=body, headers={"X-Request-Id": "cancel-me"}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        next(lines)                                     # running on main/v1 now
        cancelled = http.post("/v1/requests/cancel-me/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["cancelled"] is True
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]" and '"code":"cancelled"' in rest[-2]
    assert http.post("/v1/requests/cancel-me/cancel").status_code == 404    # forgotten once done
