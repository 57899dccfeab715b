"""The live cluster through the controller on a real local Ray cluster (loopback, tiny model).

Greedy streams equal the single-process engine for 16 prompts; bad input fails cleanly; a
cancelled request frees its KV; a two-stage request reports each stage against its SLO.
"""

from __future__ import annotations

import asyncio

import pytest

ray = pytest.importorskip("ray")

from cluster.api import (Admitted, ErrorKind, Failed, Finished, GenerateRequest, StageDone,  # noqa: E402
                         StageSpec, TokenChunk)
from cluster.builder import build_cluster  # noqa: E402
from router.request import Lane  # noqa: E402
from tests.cluster.conftest import PARAMS, make_prompts  # noqa: E402
from tests.ray_cluster import local_ray, tiny_cluster_config  # noqa: E402

TIMEOUT = 120


@pytest.fixture(scope="module")
def cluster(llama_dir):
    config = tiny_cluster_config(llama_dir)
    with local_ray("tctl"):
        handle = build_cluster(config)
        try:
            yield handle
        finally:
            handle.shutdown()


async def collect(handle, req):
    return [item async for item in handle.generate(req)]


def run(handle, *reqs):
    async def main():
        return await asyncio.gather(*(collect(handle, r) for r in reqs))
    return asyncio.run(asyncio.wait_for(main(), TIMEOUT))


def tokens_of(items):
    return [t for i in items if isinstance(i, TokenChunk) for t in i.token_ids]


def test_streams_equal_the_single_process_engine(cluster, reference):
    reqs = [GenerateRequest(f"g{i}", tuple(p), PARAMS) for i, p in enumerate(make_prompts())]
    results = run(cluster, *reqs)
    for i, items in enumerate(results):
        assert isinstance(items[0], Admitted), items[0]
        assert isinstance(items[-1], Finished), items[-1]
        assert tuple(tokens_of(items)) == reference[i], i
        assert items[-1].completion_tokens == len(reference[i])
    stats = asyncio.run(cluster.stats())
    assert stats.kv_transfers >= 1 and stats.kv_transfer_bytes > 0
    assert stats.running == 0 and stats.waiting == 0


def test_bad_input_fails_with_invalid(cluster):
    bad = [GenerateRequest("b0", (), PARAMS),
           GenerateRequest("b1", (1, 2, 10**9), PARAMS),
           GenerateRequest("b2", (1, 2), {"max_tokens": -1}),
           GenerateRequest("b3", (1, 2), {"temperature": -1.0}),
           GenerateRequest("b4", (1, 2), {"bogus": 1}),
           GenerateRequest("b5", tuple(3 + i % 300 for i in range(500)), {"max_tokens": 20}),  # > 512 ctx
           GenerateRequest("b6", (1, 2), PARAMS, ttft_s=-1.0),
           GenerateRequest("b7", (1, 2), PARAMS, scenario="nope")]
    for items in run(cluster, *bad):
        assert len(items) == 1 and isinstance(items[0], Failed), items
        assert items[0].kind is ErrorKind.INVALID and items[0].message


def test_cancel_frees_kv_on_both_sides(cluster):
    req = GenerateRequest("c0", tuple(range(3, 40)), {"temperature": 0, "max_tokens": 150, "ignore_eos": True})

    async def main():
        items = []
        async for item in cluster.generate(req):
            items.append(item)
            if len(tokens_of(items)) >= 3:
                break                       # closing the stream cancels the request
        await asyncio.sleep(1.0)
        return items, await cluster.cancel("c0", "default")

    items, again = asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    assert again is False                   # already cancelled
    for name, worker in cluster.workers.items():
        ray.get(worker.check_invariants.remote(), timeout=30)
        st = ray.get(worker.stats.remote(), timeout=30)
        assert st.kv_usage == 0, (name, st)


def test_two_stage_request_reports_each_stage(cluster):
    req = GenerateRequest("s0", tuple(range(3, 30)), {"temperature": 0, "max_tokens": 6, "ignore_eos": True},
                          lane=Lane.HEAVY, scenario="tool_calling",
                          stages=(StageSpec((5, 6, 7, 8), max_tokens=5, tool_delay_s=0.05),))
    items = run(cluster, req)[0]
    done = [i for i in items if isinstance(i, StageDone)]
    assert [d.stage for d in done] == [0, 1]
    assert [d.completion_tokens for d in done] == [6, 5]
    assert all(d.ttft_slo_s > 0 and d.tpot_slo_s > 0 for d in done)
    assert isinstance(items[-1], Finished) and items[-1].completion_tokens == 11
    assert items[-1].slo_met == all(d.slo_met for d in done)
    stats = asyncio.run(cluster.stats())
    assert stats.lanes["heavy"].completed >= 1


def test_session_turn_prefills_on_its_decode_worker(cluster):
    """Turn 2 of a session goes to the decode worker that served turn 1 and, its prefix being
    cached there, skips the prefill pool."""
    first = tuple(range(3, 70))
    items1 = run(cluster, GenerateRequest("t1", first, {"temperature": 0, "max_tokens": 8, "ignore_eos": True},
                                          session_id="sess-a"))[0]
    out1 = tuple(tokens_of(items1))
    before = ray.get(cluster.controller.stats.remote(), timeout=30)
    turn2 = first + out1 + (7, 8, 9)
    items2 = run(cluster, GenerateRequest("t2", turn2, {"temperature": 0, "max_tokens": 8, "ignore_eos": True},
                                          session_id="sess-a"))[0]
    assert isinstance(items2[-1], Finished)
    assert items2[0].decode_worker == items1[0].decode_worker
    after = ray.get(cluster.controller.stats.remote(), timeout=30)
    assert after.kv_transfers == before.kv_transfers      # no handoff: prefilled where the KV lives
