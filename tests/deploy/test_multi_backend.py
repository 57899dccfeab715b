"""``deploy.multi_backend.MultiBackend`` over in-memory backends: routing per request, cancel
forwarded to the backend that holds the request, merged stats and health, readiness, and the
``models`` section of ``ServeConfig``. No Ray (the live version is tests/deploy/test_multi_model.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from cluster.api import (ClusterStats, ErrorKind, Failed, Finished, GenerateRequest, LaneStats,
                         TokenChunk, WorkerHealth)
from cluster.backend import ModelInfo
from deploy.config import ServeConfig, load_serve_config
from deploy.model_router import ModelRouter, ModelRoutes
from deploy.multi_backend import MultiBackend, merge_stats
from router.request import Lane

ROOT = Path(__file__).resolve().parents[2]
ROUTES = ModelRoutes.model_validate({"models": {
    "main": {"versions": {"v1": 1, "v2": 0}, "fallback": "small"},
    "small": {"versions": {"v1": 1}, "max_context": 64}}})


class FakeBackend:
    """Streams one token then Finished, or holds the request open until cancelled."""

    def __init__(self, name: str, window: int = 512, hold: bool = False, state: str = "normal"):
        self.name, self.window, self.hold, self.state = name, window, hold, state
        self.seen: list[GenerateRequest] = []
        self.cancelled: list[str] = []
        self._release = asyncio.Event()

    def model_info(self) -> ModelInfo:
        return ModelInfo(f"{self.name}-folder-name", f"/models/{self.name}", self.window, 384)

    async def generate(self, request):
        self.seen.append(request)
        yield TokenChunk(request.request_id, 0, (5,), "x")
        if self.hold:
            await self._release.wait()
        yield Finished(request.request_id, "admitted", 3, 1, "length", True, 0.01, 0)

    async def cancel(self, request_id, tenant):
        self.cancelled.append(request_id)
        self._release.set()
        return True

    async def health(self):
        return (WorkerHealth("c0", "decode", True, 0),)

    async def ready(self, deep=False):
        return self.state != "down"

    async def stats(self):
        return ClusterStats(1, 2, {"interactive": LaneStats(completed=3)}, (), {"c0": 0.5}, {"c0": 0.1},
                            self.state, {"cap_max_tokens": 1}, 0, 0, 0.0, 0, {"t": 1}, 10, 20)


def make(**kw) -> tuple[MultiBackend, dict]:
    fakes = {("main", "v1"): FakeBackend("m1", **kw), ("main", "v2"): FakeBackend("m2"),
             ("small", "v1"): FakeBackend("s1")}
    return MultiBackend(fakes, ModelRouter(ROUTES, {"main": 512, "small": 512})), fakes


def req(rid: str = "r1", model: str | None = None, lane: Lane = Lane.INTERACTIVE, n: int = 3,
        max_tokens: int = 4) -> GenerateRequest:
    return GenerateRequest(rid, tuple(range(1, n + 1)), {"max_tokens": max_tokens}, lane=lane, model=model)


async def collect(backend, request):
    return [item async for item in backend.generate(request)]


def test_a_request_goes_to_its_model_and_carries_the_routed_name():
    mb, fakes = make()
    items = asyncio.run(collect(mb, req(model="small")))
    assert isinstance(items[-1], Finished)
    assert [r.model for r in fakes[("small", "v1")].seen] == ["small"]
    assert mb.counts == {("small", "v1"): 1}


def test_no_model_means_the_default_and_its_weighted_version():
    mb, fakes = make()
    asyncio.run(collect(mb, req()))
    assert len(fakes[("main", "v1")].seen) == 1 and not fakes[("main", "v2")].seen


def test_too_long_for_small_moves_to_main():
    mb, fakes = make()
    asyncio.run(collect(mb, req(model="small", n=60, max_tokens=10)))
    assert mb.counts == {("main", "v1"): 1}


def test_an_unknown_model_or_a_request_nothing_fits_is_one_failed_item():
    mb, _ = make()
    (item,) = asyncio.run(collect(mb, req(model="nope")))
    assert isinstance(item, Failed) and item.kind is ErrorKind.NOT_FOUND
    (item,) = asyncio.run(collect(mb, req(n=600)))
    assert isinstance(item, Failed) and item.kind is ErrorKind.INVALID


def test_cancel_reaches_the_backend_that_holds_the_request():
    async def scenario():
        mb, fakes = make(hold=True)
        stream = mb.generate(req("held"))
        await stream.__anext__()                         # the request is running on main/v1
        assert await mb.cancel("held", "default") is True
        rest = [item async for item in stream]
        assert await mb.cancel("held", "default") is False   # finished: forgotten
        assert await mb.cancel("never", "default") is False
        return fakes, rest
    fakes, rest = asyncio.run(scenario())
    assert fakes[("main", "v1")].cancelled == ["held"] and isinstance(rest[-1], Finished)


def test_the_default_overload_state_comes_from_the_backends_stats():
    async def scenario():
        mb, fakes = make(state="degraded")
        await mb.stats()                                 # refreshes the cached states
        assert mb.cached_state("main") == "degraded" and mb.cached_state("small") == "normal"
        await collect(mb, req("bg", lane=Lane.BACKGROUND))
        await collect(mb, req("ia", lane=Lane.INTERACTIVE))
        return mb
    assert asyncio.run(scenario()).counts == {("small", "v1"): 1, ("main", "v1"): 1}


def test_stats_are_summed_and_worker_ids_prefixed():
    mb, _ = make(state="batch_paused")
    merged = asyncio.run(mb.stats())
    assert (merged.running, merged.waiting, merged.generation_tokens) == (3, 6, 60)
    assert merged.lanes["interactive"].completed == 9 and merged.tenants_running == {"t": 3}
    assert set(merged.kv_usage) == {"main/v1/c0", "main/v2/c0", "small/v1/c0"}
    assert merged.overload_state == "batch_paused" and merged.fallback_actions == {"cap_max_tokens": 3}
    assert merge_stats({}).overload_state == "normal"


def test_health_ready_and_the_model_listing():
    mb, fakes = make()
    assert {h.worker_id for h in asyncio.run(mb.health())} == {"main/v1/c0", "main/v2/c0", "small/v1/c0"}
    assert asyncio.run(mb.ready()) is True
    fakes[("small", "v1")].state = "down"
    assert asyncio.run(mb.ready()) is False
    assert [i.name for i in mb.model_infos()] == ["main", "small"] and mb.model_info().name == "main"
    assert mb.model_info_for("small").max_model_len == 512 and mb.model_info_for("x") is None


def test_every_routed_version_needs_a_backend():
    with pytest.raises(ValueError, match="no backend"):
        MultiBackend({("main", "v1"): FakeBackend("m")}, ModelRouter(ROUTES))


def test_the_two_models_example_config_loads():
    config = load_serve_config(ROOT / "deploy" / "two_models.yaml")
    routes = config.routes()
    assert list(routes.models) == ["main", "small"] and routes.models["main"].fallback == "small"
    assert ServeConfig().routes() is None


def test_a_models_section_needs_a_cluster_per_version_and_no_single_cluster():
    served = {"versions": {"v1": 1, "v2": 1}, "clusters": {"v1": {}}}
    with pytest.raises(ValidationError, match="exactly the versions"):
        ServeConfig.model_validate({"models": {"m": served}})
    with pytest.raises(ValidationError, match="either cluster"):
        ServeConfig.model_validate({"cluster": {"decode_workers": 2},
                                    "models": {"m": {"clusters": {"v1": {}}}}})
    with pytest.raises(ValidationError, match="no model 'zz'"):
        ServeConfig.model_validate({"models": {"m": {"fallback": "zz", "clusters": {"v1": {}}}}})
