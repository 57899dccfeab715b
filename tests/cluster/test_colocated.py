"""A colocated cluster (no prefill/decode split; the baseline of the disaggregation benchmark):
the same greedy tokens as the single-process engine, through the same controller."""

from __future__ import annotations

import asyncio

import pytest

ray = pytest.importorskip("ray")

from cluster.api import Finished, GenerateRequest, StageSpec, StageDone, TokenChunk  # noqa: E402
from cluster.builder import build_cluster  # noqa: E402
from tests.cluster.conftest import PARAMS, make_prompts  # noqa: E402
from tests.ray_cluster import local_ray, tiny_cluster_config  # noqa: E402


def test_colocated_cluster_matches_the_engine(llama_dir, reference):
    config = tiny_cluster_config(llama_dir, colocated_workers=2, colocated_resources={"num_cpus": 0.5})
    reqs = [GenerateRequest(f"c{i}", tuple(p), PARAMS) for i, p in enumerate(make_prompts())]
    staged = GenerateRequest("cs", tuple(range(3, 30)), {"temperature": 0, "max_tokens": 4, "ignore_eos": True},
                             scenario="reasoning", stages=(StageSpec((9, 10, 11), max_tokens=3),))

    async def collect(handle, r):
        return [i async for i in handle.generate(r)]

    async def main(handle):
        return await asyncio.wait_for(asyncio.gather(*(collect(handle, r) for r in reqs + [staged])), 120)

    with local_ray("tcol"):
        handle = build_cluster(config)
        try:
            results = asyncio.run(main(handle))
            stats = asyncio.run(handle.stats())
            for w in handle.workers.values():
                ray.get(w.check_invariants.remote(), timeout=30)
                assert ray.get(w.stats.remote(), timeout=30).kv_usage == 0
        finally:
            handle.shutdown()
    for i, items in enumerate(results[:-1]):
        assert isinstance(items[-1], Finished), items[-1]
        assert tuple(t for x in items if isinstance(x, TokenChunk) for t in x.token_ids) == reference[i]
    assert [d.completion_tokens for d in results[-1] if isinstance(d, StageDone)] == [4, 3]
    assert stats.kv_transfers == 0


def test_the_colocated_pool_shrinks_while_streaming_and_grows_back(llama_dir, reference):
    from cluster.api import ClusterError, ErrorKind

    config = tiny_cluster_config(llama_dir, colocated_workers=2, colocated_resources={"num_cpus": 0.5},
                                 max_retries=0)
    reqs = [GenerateRequest(f"r{i}", tuple(p), PARAMS) for i, p in enumerate(make_prompts())]

    async def collect(handle, r):
        return [i async for i in handle.generate(r)]

    async def shrink_when_both_run(handle):
        for _ in range(3000):
            live = await handle.controller.requests.remote()
            if {r["decode_worker"] for r in live if r["where"] == "decode"} >= {"c0", "c1"}:
                break
            await asyncio.sleep(0.02)
        return await handle.resize("decode", 1, drain_timeout_s=0.0)   # "decode" names the colocated pool

    async def main(handle):
        return await asyncio.wait_for(asyncio.gather(asyncio.gather(*(collect(handle, r) for r in reqs)),
                                                     shrink_when_both_run(handle)), 120)

    with local_ray("tcolr"):
        handle = build_cluster(config)
        try:
            results, shrunk = asyncio.run(main(handle))
            with pytest.raises(ClusterError) as err:
                asyncio.run(handle.resize("colocated", 0))
            assert err.value.kind is ErrorKind.INVALID
            grown = asyncio.run(asyncio.wait_for(handle.resize("colocated", 2), 120))
            again = asyncio.run(asyncio.wait_for(collect(handle, GenerateRequest("again", tuple(make_prompts()[5]),
                                                                                 PARAMS)), 120))
            health = asyncio.run(handle.health())
            for w in handle.workers.values():
                ray.get(w.check_invariants.remote(), timeout=30)
        finally:
            handle.shutdown()
    assert (shrunk.role, shrunk.before, shrunk.after, len(shrunk.removed)) == ("colocated", 2, 1, 1)
    for i, items in enumerate(results):
        assert isinstance(items[-1], Finished) and items[-1].retries == 0, items[-1]
        assert tuple(t for x in items if isinstance(x, TokenChunk) for t in x.token_ids) == reference[i]
    assert (grown.before, grown.after, grown.added) == (1, 2, ("c2",))
    assert sorted(h.worker_id for h in health) == sorted({"c0", "c1", "c2"} - set(shrunk.removed))
    assert tuple(t for x in again if isinstance(x, TokenChunk) for t in x.token_ids) == reference[5]
