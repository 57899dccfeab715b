"""The dry-run autoscaler on a real cluster (local loopback Ray, tiny model) behind the real HTTP
front: requests go through the tapped backend, decisions show up at ``GET /v1/autoscale`` with
plausible signals, and no pool is ever resized. Then an autoscaler with ``dry_run=False`` whose
config forces a scale-up resizes the decode pool through ``ClusterHandle.resize``.

The autoscaler loop runs on its own event loop thread here (uvicorn owns the other); in the Serve
replica both share one loop. The window is thread-safe for exactly this.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

ray = pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from cluster.builder import build_cluster  # noqa: E402
from deploy.auth import api_key_auth  # noqa: E402
from deploy.autoscale_config import AutoscaleConfig  # noqa: E402
from deploy.autoscale_loop import LiveAutoscaler, mount_autoscale_route  # noqa: E402
from deploy.metrics import ServingMetrics  # noqa: E402
from deploy.openai_api import make_app  # noqa: E402
from tests.deploy.test_openai_api import UvicornThread, free_port  # noqa: E402
from tests.ray_cluster import local_ray, tiny_cluster_config  # noqa: E402

TIMEOUT = 60.0
KEYS = {"key-a": "tenant-a"}
INTERVAL_S = 1.0


class LoopThread:
    """An asyncio loop in a daemon thread; ``call(coro)`` runs a coroutine there with a deadline."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro, timeout_s: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def live(llama_dir):
    from transformers import AutoTokenizer

    config = tiny_cluster_config(llama_dir)
    resized: list[tuple[str, int]] = []
    with local_ray("tauto"):
        handle = build_cluster(config)
        loop = LoopThread()
        try:
            auto = LiveAutoscaler(handle, AutoscaleConfig(), INTERVAL_S, sample_s=0.25,
                                  resize=lambda pool, n: resized.append((pool, n)))
            tokenizer = AutoTokenizer.from_pretrained(str(llama_dir))
            app = make_app(auto.backend, tokenizer, ServingMetrics(handle.info.name), api_key_auth(KEYS))
            mount_autoscale_route(app, auto)

            async def start():
                auto.start()

            loop.call(start())
            server = UvicornThread(app, free_port()).start()
            try:
                yield server, auto, resized, handle, loop
            finally:
                server.stop()
                loop.call(auto.stop())
        finally:
            loop.close()
            handle.shutdown()


def test_dry_run_decisions_appear_at_v1_autoscale_and_nothing_is_resized(live):
    server, auto, resized, _, _ = live
    with httpx.Client(base_url=server.url, timeout=TIMEOUT, headers={"Authorization": "Bearer key-a"}) as http:
        for i in range(4):
            r = http.post("/v1/completions", json={"prompt": f"Hello world {i}", "max_tokens": 6,
                                                   "temperature": 0, "ignore_eos": True})
            assert r.status_code == 200, r.text
        deadline, report = time.monotonic() + 30, None
        while time.monotonic() < deadline:
            report = http.get("/v1/autoscale").json()
            if sum(d["stages"] for d in report["decisions"]) >= 4:
                break
            time.sleep(0.25)
        assert httpx.get(server.url + "/v1/autoscale", timeout=TIMEOUT).status_code == 401
    assert report["object"] == "tandem.autoscale" and report["dry_run"] is True and report["running"]
    decisions = report["decisions"]
    assert sum(d["stages"] for d in decisions) >= 4, report      # every request fed the windows
    for d in decisions:
        s = d["signals"]
        assert (s["prefill_replicas"], s["decode_replicas"]) == (1, 1)
        assert all(0.0 <= s[k] <= 1.0 for k in ("kv_usage", "prefill_busy", "decode_busy"))
        assert s["queue_wait_p90_s"] >= 0.0 and d["stats_samples"] >= 1
        assert d["decision"]["dry_run"] is True and d["applied"] is False
        assert 0.5 <= d["window_s"] <= 10.0
    fed = [d for d in decisions if d["stages"]]
    assert all(0.0 <= d["signals"]["ttft_attainment"] <= 1.0 for d in fed)
    assert any(d["queue_wait_source"] == "items" for d in fed)
    assert any(d["signals"]["prefill_busy"] > 0 for d in fed)    # the workers did run steps
    assert resized == []


def test_a_live_autoscaler_resizes_the_decode_pool_through_the_handle(live):
    server, _, _, handle, loop = live
    config = AutoscaleConfig(decode_min=2, upscale_cooldown_s=0, dry_run=False)   # 1 decode: below min
    auto = LiveAutoscaler(handle, config, 0.5, sample_s=0.1, resize=handle.resize)

    async def start():
        auto.start()

    loop.call(start())
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any(d["applied"] for d in auto.report()["decisions"]):
            time.sleep(0.1)
    finally:
        loop.call(auto.stop())
    applied = [d for d in auto.report()["decisions"] if d["applied"]]
    assert applied, auto.report()
    first = applied[0]
    assert first["decision"]["decode_replicas"] == 2 and first["errors"] == []
    resized, = first["resized"]
    assert (resized["role"], resized["before"], resized["after"]) == ("decode", 1, 2)
    assert list(resized["added"]) == ["d1"] and not resized["removed"]
    health = loop.call(handle.health())
    assert sorted(h.worker_id for h in health if h.role == "decode") == ["d0", "d1"]
    with httpx.Client(base_url=server.url, timeout=TIMEOUT, headers={"Authorization": "Bearer key-a"}) as http:
        r = http.post("/v1/completions", json={"prompt": "After the resize", "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200, r.text
