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
