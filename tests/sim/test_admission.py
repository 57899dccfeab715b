"""The SLO policy in the simulator admits what fits: disaggregated prefill batch times."""

from __future__ import annotations

from sim.cluster import ClusterSpec
from sim.run import RunSpec, Workload, simulate


def test_disaggregated_chatbot_at_the_trace_rate_is_admitted_not_best_effort(conv_trace):
    # chatbot TTFTs are mostly the 0.25 s floor: no longer than the longest prefill batch time
    spec = RunSpec(Workload(conv_trace, duration_s=60), "chatbot", "slo", ClusterSpec(prefill=1, decode=1))
    s = simulate(spec).summary
    assert s.requests > 150
    assert s.admitted >= 0.95 * s.requests and s.attainment >= 0.95


def test_promoted_best_effort_requests_all_meet_their_slo(conv_trace):
    """Past capacity some best effort is promoted (Plan.promote); the guarantee then holds for it."""
    spec = RunSpec(Workload(conv_trace, rate=50.0, duration_s=20), "chatbot", "slo", ClusterSpec(colocated=1))
    recs = simulate(spec).engine.records
    promoted = [r for r in recs if r.promoted]
    assert len(promoted) >= 10 and all(r.met_slo() for r in promoted)
    assert any(not r.met_slo() for r in recs)                   # it was past capacity


def test_a_smaller_later_stage_reserve_admits_more_tool_calls(conv_trace):
    """Each admitted tool call holds its later prefill's worst-case rate; reserving half of it
    admits more of them past capacity (the later stages still go first, without the guarantee)."""
    from router.config import SchedulerConfig

    def admitted(reserve: float) -> int:
        spec = RunSpec(Workload(conv_trace, rate=30.0, duration_s=15), "tool_calling", "slo",
                       ClusterSpec(colocated=1), scheduler=SchedulerConfig(later_stage_reserve=reserve))
        return simulate(spec).summary.admitted

    assert admitted(0.5) > admitted(1.0)


def test_snapshots_show_the_prefill_chunks_in_flight(conv_trace):
    """Snapshot.in_flight holds exactly the chunks of running batches: never more than a request
    has left to prefill, only on workers still busy, and gone once the batch ends."""
    from router.request import Phase
    from sim.run import make_scheduler, prepare
    from sim.engine import Engine

    spec = RunSpec(Workload(conv_trace, rate=30.0, duration_s=5), "chatbot", "slo", ClusterSpec(colocated=2))
    cluster, reqs, _ = prepare(spec)
    sched = make_scheduler("slo", cluster)
    seen = []
    inner = sched.schedule

    def spy(snap):
        states = {r.id: r for r in snap.requests}
        busy = {w.id for w in snap.workers if w.busy_until_s >= snap.now_s}
        for rid, tokens in snap.in_flight.items():
            r = states[rid]
            assert r.phase is Phase.WAITING and 0 < tokens <= r.remaining_prefill
            assert r.prefill_worker in busy
        seen.append(len(snap.in_flight))
        return inner(snap)

    sched.schedule = spy
    Engine(reqs, sched, cluster.perf, cluster.workers, cluster.transfer_s, spec.engine).run()
    assert max(seen) > 0 and seen.count(0) > 0
