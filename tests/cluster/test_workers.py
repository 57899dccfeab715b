"""Acceptance 1 of issue 5 on a real local Ray cluster (loopback): prefill actor → cpu_shm → decode actor.

Greedy tokens equal the single-process ``LLMEngine.generate`` for 16 prompts of varied lengths;
afterwards both workers' block managers are consistent with nothing referenced, and no
/dev/shm segment of ours is left. Every ``ray.get`` has a timeout.
"""

from __future__ import annotations


import pytest

ray = pytest.importorskip("ray")

from decode_worker.worker import remote_decode_worker  # noqa: E402
from prefill_worker.worker import remote_prefill_worker  # noqa: E402
from tests.cluster.conftest import PARAMS, make_prompts  # noqa: E402
from tests.ray_cluster import local_ray, shm_segments  # noqa: E402

TIMEOUT = 60


@pytest.fixture(scope="module")
def cluster():
    with local_ray("tcl"):
        yield


_segments = shm_segments


@pytest.fixture
def workers(cluster, engine_config):
    before = _segments()
    prefill = remote_prefill_worker().remote(engine_config, "cpu_shm")
    decode = remote_decode_worker().remote(engine_config, "cpu_shm")
    assert ray.get([prefill.ready.remote(), decode.ready.remote()], timeout=TIMEOUT) == [True, True]
    yield prefill, decode
    for actor in (prefill, decode):
        try:
            ray.get(actor.close.remote(), timeout=TIMEOUT)
        except ray.exceptions.RayActorError:
            pass
        ray.kill(actor)
    assert _segments() <= before, "leaked /dev/shm segments"


def test_prefill_to_decode_over_cpu_shm_matches_the_single_process_engine(workers, reference):
    prefill, decode = workers
    prompts, firsts, cached = make_prompts(), {}, []
    for i, prompt in enumerate(prompts):
        rid = f"r{i}"
        res = ray.get(prefill.prefill.remote(rid, prompt, PARAMS), timeout=TIMEOUT)
        assert not res.finished and res.ticket is not None and res.ticket.transport == "cpu_shm"
        started = ray.get(decode.start.remote(res.ticket, prompt + [res.first_token], len(prompt), PARAMS),
                          timeout=TIMEOUT)
        assert started.decision is None and started.pulls == 1, started
        firsts[rid], cached = res.first_token, cached + [res.num_cached_tokens]
    assert cached[13] == 64 and sum(cached) == 64          # prompt 13 reuses prompt 12's first 4 blocks
    got = ray.get(decode.run_until_done.remote(list(firsts), 30.0), timeout=TIMEOUT)
    for i, expected in enumerate(reference):
        assert (firsts[f"r{i}"], *got[f"r{i}"]) == expected, f"prompt {i} (length {len(prompts[i])})"

    ray.get(prefill.sweep.remote(5.0), timeout=TIMEOUT)
    for worker in (prefill, decode):
        ray.get(worker.check_invariants.remote(), timeout=TIMEOUT)
        assert ray.get(worker.stats.remote(), timeout=TIMEOUT).kv_usage == 0
    p, d = ray.get([prefill.stats.remote(), decode.stats.remote()], timeout=TIMEOUT)
    assert p.pending_transfers == 0 and p.num_parked == 0 and p.num_released == len(prompts)
    assert d.num_running == 0 and d.num_started == len(prompts) and d.bytes_pulled == p.bytes_offered > 0
