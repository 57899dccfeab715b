"""Session hash ring and token-aware worker choice (pure policy)."""

from __future__ import annotations

from router.affinity import HashRing
from router.placement import WorkerLoad, affinity_ok, pick_decode, pick_prefill


def test_ring_is_stable_and_moves_few_sessions_when_a_worker_leaves():
    ring = HashRing(["d0", "d1", "d2", "d3"])
    sessions = [f"s{i}" for i in range(2000)]
    before = {s: ring.pick(s) for s in sessions}
    assert before == {s: HashRing(["d3", "d2", "d1", "d0"]).pick(s) for s in sessions}   # order-free
    counts = {w: list(before.values()).count(w) for w in ring.workers}
    assert min(counts.values()) > 2000 / 4 * 0.5                     # roughly balanced
    ring.remove("d2")
    after = {s: ring.pick(s) for s in sessions}
    moved = [s for s in sessions if before[s] != after[s]]
    assert all(before[s] == "d2" for s in moved)                    # only d2's sessions move
    assert all(after[s] != "d2" for s in sessions)


def test_ring_skips_excluded_workers_and_handles_empty():
    ring = HashRing(["a", "b"])
    s = "session-x"
    first = ring.pick(s)
    other = ring.pick(s, exclude={first})
    assert other is not None and other != first
    assert ring.pick(s, exclude={"a", "b"}) is None
    assert HashRing([]).pick(s) is None


def test_prefill_choice_counts_tokens_not_requests():
    loads = [WorkerLoad("p0", True, queued_prefill_tokens=4000), WorkerLoad("p1", True, queued_prefill_tokens=300),
             WorkerLoad("p2", False, queued_prefill_tokens=0)]
    assert pick_prefill(loads) == "p1"                              # p2 is dead
    assert pick_prefill([WorkerLoad("p0", False)]) is None


def test_decode_choice_prefers_free_kv_and_fits():
    loads = [WorkerLoad("d0", True, context_tokens=900, capacity_tokens=1000),
             WorkerLoad("d1", True, context_tokens=5000, capacity_tokens=8000),
             WorkerLoad("d2", True, context_tokens=20, capacity_tokens=200)]
    assert pick_decode(loads, need_tokens=50) == "d2"               # lowest fraction after adding 50
    assert pick_decode(loads, need_tokens=500) == "d1"              # only d1 can hold 500 more
    assert pick_decode([WorkerLoad("d0", False)], 10) is None


def test_affinity_guard():
    w = WorkerLoad("d0", True, context_tokens=800, capacity_tokens=1000)
    assert affinity_ok(w, 50)
    assert not affinity_ok(w, 200)                                  # past 90% of its KV
    assert not affinity_ok(WorkerLoad("d0", False), 1)
