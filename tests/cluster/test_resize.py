"""Resizing the pools of a running cluster (real loopback Ray, tiny model, 1 prefill + 1 decode).

A decode worker added by ``resize`` (two concurrent calls add one: they run one at a time)
serves requests with the single-process engine's tokens; a decode worker removed while streams
run does not lose or fail any of them (``max_retries=0``: a move that counted as a retry would
fail the request), its actor and placement group are gone and Ray's resources are back; a
prefill worker drains on its own within the deadline; bad sizes and roles fail with INVALID.
"""

from __future__ import annotations

import asyncio
import time

import pytest

ray = pytest.importorskip("ray")

from cluster.api import Admitted, ClusterError, ErrorKind, Finished, GenerateRequest, TokenChunk  # noqa: E402
from cluster.builder import build_cluster  # noqa: E402
from tests.cluster.conftest import PARAMS, assert_no_kv_left, generate, make_prompts  # noqa: E402
from tests.ray_cluster import local_ray, tiny_cluster_config  # noqa: E402

DEADLINE = 120.0        # seconds: every test's requests and resizes end within this
LONG = {"temperature": 0, "max_tokens": 60, "ignore_eos": True}


@pytest.fixture(scope="module")
def cluster(llama_dir):
    config = tiny_cluster_config(llama_dir, max_retries=0, health_interval_s=0.5, min_ttft_s=30.0,
                                 slo_scale=100.0, ready_timeout_s=60.0)
    with local_ray("tresize"):
        handle = build_cluster(config)
        try:
            yield handle
        finally:
            handle.shutdown()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, DEADLINE))


async def collect(handle, reqs):
    async def one(r):
        return [item async for item in handle.generate(r)]
    return await asyncio.gather(*(one(r) for r in reqs))


def tokens_of(items):
    return tuple(t for i in items if isinstance(i, TokenChunk) for t in i.token_ids)


def pool(handle, role):
    return sorted(h.worker_id for h in run(handle.health()) if h.role == role)


def free_cpus(want, timeout_s=30.0):
    """Ray's free CPUs once they equal ``want`` (actors and groups release theirs asynchronously)."""
    until = time.monotonic() + timeout_s
    while True:
        free = ray.available_resources().get("CPU", 0.0)
        if abs(free - want) < 1e-6 or time.monotonic() > until:
            return free
        time.sleep(0.2)


def test_a_grown_decode_pool_serves_on_the_new_worker(cluster, reference):
    free_before = ray.available_resources()["CPU"]

    async def twice():                       # serialised: the second sees the first's worker
        return await asyncio.gather(cluster.resize("decode", 2), cluster.resize("decode", 2))

    result, again = sorted(run(twice()), key=lambda r: r.before)
    assert (again.before, again.after, again.added) == (2, 2, ())
    assert (result.role, result.before, result.after) == ("decode", 1, 2)
    assert result.added == ("d1",) and result.removed == () and result.moved == ()
    assert pool(cluster, "decode") == ["d0", "d1"] and all(h.healthy for h in run(cluster.health()))
    assert set(cluster.workers) == {"p0", "d0", "d1"}
    assert free_cpus(free_before - 0.5) == pytest.approx(free_before - 0.5)   # one more 0.5-CPU bundle

    reqs = [GenerateRequest(f"g{i}", tuple(p), PARAMS) for i, p in enumerate(make_prompts())]
    results = run(collect(cluster, reqs))
    for i, items in enumerate(results):
        assert isinstance(items[-1], Finished), items[-1]
        assert tokens_of(items) == reference[i], i
    planned = {i.decode_worker for items in results for i in items if isinstance(i, Admitted)}
    started = ray.get(cluster.workers["d1"].stats.remote(), timeout=30).num_started
    assert "d1" in planned and started >= 1, (planned, started)
    assert_no_kv_left(cluster)


def test_shrinking_while_streams_run_loses_and_fails_nothing(cluster, engine):
    assert pool(cluster, "decode") == ["d0", "d1"], "runs after the grow test"
    free_before = ray.available_resources()["CPU"]
    import random

    rng = random.Random(7)
    prompts = [[rng.randrange(3, 384) for _ in range(rng.randint(5, 40))] for _ in range(8)]
    reqs = [GenerateRequest(f"s{i}", tuple(p), LONG) for i, p in enumerate(prompts)]
    old = dict(cluster.workers)

    async def shrink_when_both_decode():
        until = time.monotonic() + 60
        while time.monotonic() < until:
            live = await cluster.controller.requests.remote()
            if {r["decode_worker"] for r in live if r["where"] == "decode"} >= {"d0", "d1"}:
                break
            await asyncio.sleep(0.02)
        return await cluster.resize("decode", 1, drain_timeout_s=0.0)   # no waiting: move at once

    async def main():
        return await asyncio.gather(collect(cluster, reqs), shrink_when_both_decode())

    results, resized = run(main())
    assert (resized.before, resized.after, resized.added) == (2, 1, ())
    assert len(resized.removed) == 1 and resized.moved, resized        # it ran requests: they moved
    for items, ref in zip(results, generate(engine, prompts, LONG)):
        assert isinstance(items[-1], Finished), items[-1]
        assert tokens_of(items) == ref and items[-1].retries == 0
    gone, = resized.removed
    assert pool(cluster, "decode") == sorted({"d0", "d1"} - {gone}) and gone not in cluster.workers
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(old[gone].ready.remote(), timeout=30)
    assert_no_kv_left(cluster)
    assert free_cpus(free_before + 0.5) == pytest.approx(free_before + 0.5)   # its bundle went back
    groups = ray.get(cluster.controller.placement_groups.remote(), timeout=30)
    table = ray.util.placement_group_table()
    assert sum(g["state"] == "CREATED" for g in table.values()) == len(groups) == 2


def test_a_prefill_worker_drains_within_the_deadline_without_moving_anything(cluster, engine):
    grown = run(cluster.resize("prefill", 2))
    assert grown.added == ("p1",) and pool(cluster, "prefill") == ["p0", "p1"]
    prompts = [list(range(3 + i, 40 + i)) for i in range(6)]
    reqs = [GenerateRequest(f"pd{i}", tuple(p), LONG) for i, p in enumerate(prompts)]

    async def shrink_soon():
        await asyncio.sleep(0.3)
        return await cluster.resize("prefill", 1)          # the config's drain deadline (60 s)

    async def main():
        return await asyncio.gather(collect(cluster, reqs), shrink_soon())

    results, resized = run(main())
    assert (resized.before, resized.after, resized.moved) == (2, 1, ())
    for items, ref in zip(results, generate(engine, prompts, LONG)):
        assert isinstance(items[-1], Finished) and tokens_of(items) == ref and items[-1].retries == 0
    assert len(pool(cluster, "prefill")) == 1
    assert_no_kv_left(cluster)


def test_bad_sizes_and_roles_are_invalid_and_an_equal_size_changes_nothing(cluster):
    for role, n in (("decode", 0), ("decode", -1), ("decode", 257), ("decode", 1.5), ("decode", True),
                    ("gpu", 1), ("colocated", 1)):
        with pytest.raises(ClusterError) as err:
            run(cluster.resize(role, n))
        assert err.value.kind is ErrorKind.INVALID and err.value.message, (role, n)
    with pytest.raises(ClusterError, match="drain_timeout_s"):
        run(cluster.resize("decode", 1, drain_timeout_s=-1.0))
    same = run(cluster.resize("decode", 1))
    assert (same.before, same.after, same.added, same.removed) == (1, 1, (), ())
