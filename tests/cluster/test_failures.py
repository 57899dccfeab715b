"""Issue 5, acceptance 2: failures on a real local Ray cluster (1 prefill + 2 decode actors).

Kill a decode actor mid-stream, kill the prefill actor while handoffs are in flight, drop a
transfer: every request completes or fails cleanly within ``DEADLINE``; killed actors come back
(Ray restarts them, the controller sees ``ready``); no KV block is left referenced on any worker
(the block managers' invariant checker) and no shared-memory segment is left behind.
"""

from __future__ import annotations

import asyncio
import time

import pytest

ray = pytest.importorskip("ray")

from cluster.api import ErrorKind, Failed, Finished, GenerateRequest, TokenChunk  # noqa: E402
from cluster.builder import build_cluster  # noqa: E402
from tests.cluster.conftest import assert_no_kv_left, generate  # noqa: E402
from tests.ray_cluster import local_ray, shm_segments, tiny_cluster_config  # noqa: E402

DEADLINE = 120          # seconds: every test's requests end (Finished or Failed) within this
PARAMS = {"temperature": 0, "max_tokens": 40, "ignore_eos": True}


@pytest.fixture(scope="module")
def cluster(llama_dir):
    config = tiny_cluster_config(llama_dir, decode_workers=2, min_ttft_s=30.0, slo_scale=100.0,
                                 health_interval_s=0.5, max_retries=3, handoff_deadline_s=20.0, pull_deadline_s=3.0)
    with local_ray("tfail"):
        handle = build_cluster(config)
        try:
            yield handle
        finally:
            handle.shutdown()


def prompts(n, seed):
    import random

    rng = random.Random(seed)
    return [[rng.randrange(3, 384) for _ in range(rng.randint(5, 60))] for _ in range(n)]


async def drive(handle, reqs, on_item=None):
    """Run ``reqs`` concurrently; ``on_item(rid, item)`` sees every item as it arrives."""
    seen = {}

    async def one(r):
        items = seen[r.request_id] = []
        async for item in handle.generate(r):
            items.append(item)
            if on_item is not None:
                await on_item(r.request_id, item)
        return items
    try:
        return await asyncio.wait_for(asyncio.gather(*(one(r) for r in reqs)), DEADLINE)
    except asyncio.TimeoutError:
        live = await handle.controller.requests.remote()
        open_ = {rid: (len(v), v[-1:] if v else None) for rid, v in seen.items()
                 if not v or not isinstance(v[-1], (Finished, Failed))}
        errors = await handle.controller.plan_errors.remote()
        raise AssertionError(f"requests still open after {DEADLINE} s: {live}; client side {open_}; "
                             f"plan errors {errors}; "
                             f"health {await handle.health()}") from None


def wait_healthy(handle, restarted=(), timeout_s=60):
    """Every worker healthy, and each of ``restarted`` seen dead and revived at least once (a
    killed actor the controller has not noticed yet still looks healthy, but is restarting)."""
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        health = asyncio.run(handle.health())
        restarts = {h.worker_id: h.restarts for h in health}
        if all(h.healthy for h in health) and all(restarts.get(w, 0) >= 1 for w in restarted):
            return health
        time.sleep(0.25)
    raise AssertionError(f"workers not healthy again: {health}")


def check_outcomes(results, expected):
    finished = 0
    for items, ref in zip(results, expected):
        last = items[-1]
        assert isinstance(last, (Finished, Failed)), items[-3:]
        if isinstance(last, Failed):
            assert last.kind in (ErrorKind.INTERNAL, ErrorKind.UNAVAILABLE) and last.message, last
            continue
        finished += 1
        got = [t for i in items if isinstance(i, TokenChunk) for t in i.token_ids]
        assert tuple(got) == tuple(ref)
    return finished


def test_kill_decode_mid_stream(cluster, engine):
    ps = prompts(6, seed=1)
    reqs = [GenerateRequest(f"kd{i}", tuple(p), PARAMS) for i, p in enumerate(ps)]
    victim = cluster.workers["d0"]
    state = {"killed": False, "tokens": 0}

    async def on_item(rid, item):
        if isinstance(item, TokenChunk):
            state["tokens"] += 1
            if not state["killed"] and state["tokens"] >= 12:
                state["killed"] = True
                ray.kill(victim, no_restart=False)

    results = asyncio.run(drive(cluster, reqs, on_item))
    assert state["killed"]
    done = check_outcomes(results, generate(engine, ps, PARAMS))
    assert done == len(reqs)                 # a survivor (d1) and re-prefill: nobody fails
    assert sum(i[-1].retries for i in results) >= 1
    wait_healthy(cluster, restarted=("d0",))
    assert_no_kv_left(cluster)


def test_kill_prefill_during_handoffs(cluster, engine):
    ps = prompts(8, seed=2)
    reqs = [GenerateRequest(f"kp{i}", tuple(p), PARAMS) for i, p in enumerate(ps)]
    state = {"killed": False}

    async def on_item(rid, item):
        if isinstance(item, TokenChunk) and not state["killed"]:
            state["killed"] = True          # first tokens are out: handoffs are in flight now
            ray.kill(cluster.workers["p0"], no_restart=False)

    begin = time.monotonic()
    results = asyncio.run(drive(cluster, reqs, on_item))
    assert time.monotonic() - begin < DEADLINE
    check_outcomes(results, generate(engine, ps, PARAMS))
    wait_healthy(cluster, restarted=("p0",))
    assert_no_kv_left(cluster)
    deadline = time.monotonic() + 10
    while shm_segments() and time.monotonic() < deadline:
        time.sleep(0.25)
    # Segments of the live prefill worker's pool may stay mapped for reuse; none of a dead pid.
    from kv_transfer.cpu_shm import pid_alive
    orphans = [s for s in shm_segments() if not pid_alive(int(s.split("-")[2]))]
    assert not orphans, orphans


def test_dropped_transfer_is_prefilled_again(cluster, engine):
    wait_healthy(cluster)
    ray.get(cluster.workers["p0"].drop_next_offers.remote(1), timeout=30)
    p = prompts(1, seed=3)
    results = asyncio.run(drive(cluster, [GenerateRequest("dt0", tuple(p[0]), PARAMS)]))
    assert check_outcomes(results, generate(engine, p, PARAMS)) == 1
    assert results[0][-1].retries == 1
    assert_no_kv_left(cluster)
