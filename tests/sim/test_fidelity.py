"""Acceptance 1 (fidelity): FCFS on one colocated worker matches hand-computed and closed-form
token times, and the decode fast-forward changes nothing."""

from __future__ import annotations

from dataclasses import replace

import pytest

from router.baselines import DistServeScheduler, FcfsScheduler
from sim.engine import Engine, EngineConfig
from tests.sim.helpers import A, B_PREFILL, C_DECODE, SIMPLE, colocated, disaggregated, req

NOW = EngineConfig(plan_interval_s=0.0)


def run(requests, scheduler, workers, config=NOW, transfer_s=lambda t: 0.0):
    res = Engine(tuple(requests), scheduler, SIMPLE, workers, transfer_s, config).run()
    return {r.request.id: r for r in res.records}


def test_one_request_ttft_is_its_prefill_and_tpot_one_decode_step():
    rec = run([req("a", 100, 5)], FcfsScheduler(), colocated())["a"]
    assert rec.ttft(0) == pytest.approx(A + 100 * B_PREFILL)             # 20 ms
    assert rec.tpot(0) == pytest.approx(A + 1 * C_DECODE)                # 11 ms
    assert rec.count[0] == 5 and rec.met_slo()


def test_second_arrival_prefills_before_decode_resumes_hand_computed():
    """a: 100-token prompt at 0 → prefill [0, 20 ms]. b (200 tokens) arrives at 5 ms, prefills
    alone [20, 50 ms] (prefill first). Then both decode: steps of 12 ms end at 62 and 74 ms."""
    recs = run([req("a", 100, 3), req("b", 200, 3, arrival=0.005)], FcfsScheduler(), colocated())
    a, b = recs["a"], recs["b"]
    assert a.ttft(0) == pytest.approx(0.020)
    assert b.ttft(0) == pytest.approx(0.050 - 0.005)
    assert a.last[0] == pytest.approx(0.074) and b.last[0] == pytest.approx(0.074)
    assert a.tpot(0) == pytest.approx((0.074 - 0.020) / 2)
    assert b.tpot(0) == pytest.approx(0.012)


def test_burst_matches_the_closed_form():
    """n identical requests at t=0, prompts fitting one FCFS batch: TTFT = a + b·n·p for all,
    TPOT = a + c·n (every step decodes all n)."""
    n, p, o = 10, 300, 20
    recs = run([req(f"r{i}", p, o) for i in range(n)], FcfsScheduler(), colocated())
    for r in recs.values():
        assert r.ttft(0) == pytest.approx(A + B_PREFILL * n * p)
        assert r.tpot(0) == pytest.approx(A + C_DECODE * n)


def test_disaggregated_second_token_waits_for_the_kv_transfer():
    xfer = 0.004
    rec = run([req("a", 100, 3)], DistServeScheduler(), disaggregated(), transfer_s=lambda t: xfer)["a"]
    assert rec.ttft(0) == pytest.approx(A + 100 * B_PREFILL)
    assert rec.last[0] == pytest.approx(A + 100 * B_PREFILL + xfer + 2 * (A + C_DECODE))


def _timings(records):
    return {rid: (r.outcome, r.decision, dict(r.first), dict(r.last), dict(r.count)) for rid, r in records.items()}


@pytest.mark.parametrize("policy,layout", [("fcfs", (0, 0, 2)), ("sarathi", (0, 0, 2)), ("slo", (0, 0, 2)),
                                           ("distserve", (1, 1, 0)), ("slo", (1, 1, 0))])
def test_fast_forward_equals_step_by_step(policy, layout, conv_trace):
    """Segments of identical decode steps give exactly the token times of one step at a time."""
    from sim.cluster import ClusterSpec
    from sim.run import RunSpec, Workload, simulate
    spec = RunSpec(Workload(conv_trace, rate=12.0, duration_s=15), "chatbot", policy, ClusterSpec(*layout))
    fast = simulate(spec)
    slow = simulate(replace(spec, engine=replace(spec.engine, max_segment=1)))
    assert fast.engine.steps == slow.engine.steps
    assert fast.engine.batches < slow.engine.batches
    f = {r.request.id: r for r in fast.engine.records}
    s = {r.request.id: r for r in slow.engine.records}
    for rid in f:
        assert f[rid].outcome == s[rid].outcome and f[rid].decision == s[rid].decision
        assert f[rid].count == s[rid].count
        for k in f[rid].first:
            assert f[rid].first[k] == pytest.approx(s[rid].first[k], abs=1e-9)
            assert f[rid].last[k] == pytest.approx(s[rid].last[k], abs=1e-6)
