"""CPU transports between real Ray actors on a local loopback cluster: bytes, engines, failures.

One Ray cluster per module. Each test builds fresh actors (``num_cpus=0.5``) and kills them.
After every test: no /dev/shm segment of ours is left, every engine's block invariants hold.
"""

from __future__ import annotations

import time
import uuid

import pytest

ray = pytest.importorskip("ray")

from engine.sampling import SamplingParams  # noqa: E402
from kv_transfer.handoff import Decision  # noqa: E402
from kv_transfer.transport import ReleaseReason  # noqa: E402
from tests.engine.helpers import make_engine  # noqa: E402
from tests.ray_cluster import local_ray, shm_segments  # noqa: E402

TIMEOUT = 60
KINDS = ["cpu_shm", "cpu_gloo", "cpu_ray"]


@pytest.fixture(scope="module")
def cluster():
    with local_ray("tkv"):
        from tests.kv_transfer.ray_actors import Worker

        yield ray.remote(num_cpus=0.5)(Worker)


def _segments() -> list[str]:
    return sorted(shm_segments())


@pytest.fixture
def pair(cluster, request):
    """Builds (sender, receiver) actors wired with a transport; kills them after the test."""
    made = []

    def build(kind: str, model_dir=None, stall: bool = False, deadline_s: float = 10.0):
        a, b = (cluster.options(name=f"kv-{uuid.uuid4().hex[:8]}", max_concurrency=8).remote(model_dir)
                for _ in range(2))
        made.extend([a, b])
        if kind in ("cpu_shm", "cpu_ray"):
            use = "use_shm" if kind == "cpu_shm" else "use_ray"
            ray.get([getattr(a, use).remote(stall, deadline_s), getattr(b, use).remote()], timeout=TIMEOUT)
        else:
            addr = ray.get(a.gloo_listen.remote(), timeout=TIMEOUT)
            ray.get([a.gloo_join.remote(addr, 0, stall, deadline_s), b.gloo_join.remote(addr, 1)], timeout=TIMEOUT)
        return a, b

    before = _segments()
    yield build
    for actor in made:                  # a graceful shutdown unlinks pooled segments too
        try:
            ray.get(actor.close.remote(), timeout=TIMEOUT)
        except ray.exceptions.RayActorError:
            pass                        # killed by the test
        ray.kill(actor)
    assert set(_segments()) <= set(before), "leaked /dev/shm segments"


def _sweep_all(sender, wait_s=5.0):
    return ray.get(sender.sweep.remote(wait_s), timeout=TIMEOUT)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_is_bit_exact_and_confirm_frees_the_sender(pair, kind):
    sender, receiver = pair(kind)
    for seed, blocks in ((1, 1), (2, 16)):          # 64 KiB and 1 MiB ... and 4 MiB below
        ticket, sha = ray.get(sender.offer_random.remote(blocks, seed), timeout=TIMEOUT)
        assert ticket.transport == kind and ticket.nbytes == blocks * 64 * 1024
        got = ray.get(receiver.pull.remote(ticket, 10.0), timeout=TIMEOUT)
        assert got.error is None and got.sha == sha
        [released] = _sweep_all(sender)
        assert released.transfer_id == ticket.transfer_id and released.reason is ReleaseReason.CONFIRMED
    ticket, sha = ray.get(sender.offer_random.remote(64, 3), timeout=TIMEOUT)
    assert ray.get(receiver.pull.remote(ticket, 10.0), timeout=TIMEOUT).sha == sha
    _sweep_all(sender)
    assert ray.get(sender.pending.remote(), timeout=TIMEOUT) == []
    stats = ray.get(receiver.stats.remote(), timeout=TIMEOUT)
    assert [s.nbytes for s in stats] == [2**16, 2**20, 2**22] and all(s.seconds > 0 for s in stats)


@pytest.mark.parametrize("kind", KINDS)
def test_receiver_abort_frees_the_sender(pair, kind):
    sender, receiver = pair(kind)
    ticket, _ = ray.get(sender.offer_random.remote(2, 5), timeout=TIMEOUT)
    assert ray.get(receiver.pull.remote(ticket, 10.0, False), timeout=TIMEOUT).error is None
    [released] = _sweep_all(sender)
    assert released.reason is ReleaseReason.ABORTED


@pytest.mark.parametrize("kind", KINDS)
def test_unpulled_offer_expires_and_is_freed(pair, kind):
    sender, receiver = pair(kind, deadline_s=0.5)
    ticket, _ = ray.get(sender.offer_random.remote(2, 6), timeout=TIMEOUT)
    time.sleep(0.6)
    [released] = _sweep_all(sender)
    assert released.reason is ReleaseReason.EXPIRED
    late = ray.get(receiver.pull.remote(ticket, 1.0), timeout=TIMEOUT)
    assert late.error in ("TransferTimeout", "TransferFailed") and late.seconds < 1.5


PROMPTS = [list(range(3, 3 + 70)), list(range(50, 50 + 17)), [7, 9, 11]]
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def reference(llama_dir):
    engine = make_engine(llama_dir)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    return [tuple(o.output_token_ids) for o in engine.generate(PROMPTS, params)]


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_actor_hands_kv_to_decode_actor_and_tokens_match(pair, kind, llama_dir, reference):
    prefill, decode = pair(kind, model_dir=str(llama_dir))
    for prompt, expected in zip(PROMPTS, reference):
        ticket, first = ray.get(prefill.prefill.remote(prompt, MAX_TOKENS), timeout=TIMEOUT)
        result = ray.get(decode.decode.remote(ticket, prompt, first, MAX_TOKENS, 10.0), timeout=TIMEOUT)
        assert result.outcome.decision is None and result.outcome.pulls == 1
        assert result.tokens == expected
        [released] = _sweep_all(prefill)
        assert released.reason is ReleaseReason.CONFIRMED
    for worker in (prefill, decode):
        live, usage = ray.get(worker.check.remote(), timeout=TIMEOUT)
        assert not live and usage == 0


@pytest.mark.parametrize("kind", KINDS)
def test_dropped_transfer_is_retried_then_reported_for_recompute(pair, kind, llama_dir, reference):
    prefill, decode = pair(kind, model_dir=str(llama_dir), stall=True, deadline_s=2.0)
    prompt = PROMPTS[0]
    ticket, first = ray.get(prefill.prefill.remote(prompt, MAX_TOKENS), timeout=TIMEOUT)
    result = ray.get(decode.decode.remote(ticket, prompt, first, MAX_TOKENS, 0.3, 2), timeout=TIMEOUT)
    assert result.outcome.decision is Decision.RECOMPUTE and result.outcome.pulls == 3
    assert all("TransferTimeout" in e for e in result.outcome.errors)
    assert ray.get(decode.generate.remote(prompt, MAX_TOKENS), timeout=TIMEOUT) == reference[0]
    [released] = _sweep_all(prefill, wait_s=5.0)    # the sender frees the stale offer at its deadline
    assert released.reason in (ReleaseReason.EXPIRED, ReleaseReason.ABORTED)
    for worker in (prefill, decode):
        live, usage = ray.get(worker.check.remote(), timeout=TIMEOUT)
        assert not live and usage == 0


@pytest.mark.parametrize("kind", KINDS)
def test_killed_sender_fails_the_receiver_within_its_deadline(pair, kind):
    sender, receiver = pair(kind, stall=True, deadline_s=30.0)
    ticket, _ = ray.get(sender.offer_random.remote(4, 7), timeout=TIMEOUT)
    pending = receiver.pull.remote(ticket, 8.0)
    time.sleep(0.5)
    ray.kill(sender)
    start = time.monotonic()
    got = ray.get(pending, timeout=TIMEOUT)
    assert got.error == "TransferFailed" and any(w in got.message for w in ("died", "closed")), got
    assert got.seconds < 8.0 and time.monotonic() - start < 8.0
