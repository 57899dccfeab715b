"""Baselines behind the same interface, replayed to completion, and compared with the SLO policy."""

from __future__ import annotations

import pytest

from router.baselines import BASELINES, DistServeScheduler, FcfsScheduler
from router.plan import DecisionKind, WorkerRole, WorkerState
from router.request import SLO, Admission, Lane, Request, RequestState, Stage
from router.scheduler import SloScheduler
from tests.router.helpers import req, snap, worker
from tests.router.replay import replay


def _burst(model, n=24):
    return [Request(f"r{i}", "t", [Lane.INTERACTIVE, Lane.HEAVY][i % 2], i * 0.01,
                    (Stage(600 + 50 * i, 30, SLO(5 * model.prefill_time(600 + 50 * i), [0.05, 0.1][i % 2])),))
            for i in range(n)]


def _met(trace) -> int:
    """Requests whose every stage met TTFT and TPOT (admitted or not)."""
    ok = 0
    for rid, st in trace.states.items():
        good = True
        for k, stage in enumerate(st.request.stages):
            t = trace.tokens.get((rid, k), [])
            arr = trace.stage_arrival.get((rid, k))
            if not t or arr is None or t[0] - arr > stage.slo.ttft_s + 1e-9 or \
                    any(b - a > stage.slo.tpot_s + 1e-9 for a, b in zip(t, t[1:])):
                good = False
        ok += good
    return ok


@pytest.mark.parametrize("name", ["fcfs", "sarathi", "priority", "edf"])
def test_colocated_baselines_serve_everything(name, exact_model):
    reqs = _burst(exact_model)
    trace = replay(reqs, BASELINES[name](), exact_model, WorkerState("w0", WorkerRole.COLOCATED, 400_000))
    assert trace.admitted == {r.id for r in reqs}
    assert all(s.phase.value == "done" for s in trace.states.values())


def test_priority_orders_by_lane_and_edf_by_deadline(exact_model):
    a = RequestState(req("bg", lane=Lane.BACKGROUND, arrival=0.0, ttft=0.5))
    b = RequestState(req("it", lane=Lane.INTERACTIVE, arrival=1.0, ttft=5.0))
    pr = BASELINES["priority"]().schedule(snap(1.0, [a, b]))
    assert pr.directive("w0").order == ("it", "bg")
    edf = BASELINES["edf"]().schedule(snap(1.0, [a, b]))
    assert edf.directive("w0").order == ("bg", "it")


def test_fcfs_rejects_only_over_the_prompt_ceiling(exact_model):
    plan = FcfsScheduler(max_prompt_tokens=100).schedule(snap(0.0, [RequestState(req("a", prompt=101)),
                                                                    RequestState(req("b", prompt=100))]))
    assert plan.decision("a").kind is DecisionKind.REJECT and plan.decision("b").kind is DecisionKind.ADMIT


def test_distserve_picks_the_shortest_prefill_queue_and_least_loaded_decode():
    pools = [worker("p0", role=WorkerRole.PREFILL), worker("p1", role=WorkerRole.PREFILL),
             worker("d0", role=WorkerRole.DECODE), worker("d1", role=WorkerRole.DECODE)]
    plan = DistServeScheduler().schedule(snap(0.0, [RequestState(req(f"r{i}", prompt=100 * (i + 1))) for i in range(4)],
                                              pools))
    pairs = [(d.prefill_worker, d.decode_worker) for d in plan.decisions]
    assert pairs[0] == ("p0", "d0") and pairs[1] == ("p1", "d1")
    assert {p for p, _ in pairs} == {"p0", "p1"} and {d for _, d in pairs} == {"d0", "d1"}


def test_the_slo_policy_meets_more_slos_than_fcfs_on_an_overloaded_burst(exact_model, calm_config):
    reqs = _burst(exact_model, 40)
    w = WorkerState("w0", WorkerRole.COLOCATED, 400_000)
    slo = replay(reqs, SloScheduler(exact_model, calm_config), exact_model, w)
    fcfs = replay(reqs, FcfsScheduler(), exact_model, w)
    assert slo.violations() == []
    assert _met(slo) > _met(fcfs)


def test_placement_in_one_step_follows_the_least_loaded_rule_request_by_request():
    # reference: each pending request (arrival order) takes the healthy worker with the least
    # reserved fraction of its KV, ties to the earlier worker, counting this step's placements
    workers = [WorkerState(f"w{i}", WorkerRole.COLOCATED, kv) for i, kv in
               enumerate([100_000, 300_000, 200_000, 300_000, 150_000])]
    running = [RequestState(req(f"a{i}", prompt=500 * i, out=100), admission=Admission.ADMITTED,
                            prefill_worker=f"w{i % 3}", decode_worker=f"w{i % 3}") for i in range(1, 7)]
    new = [RequestState(req(f"r{i}", prompt=50 + 97 * (i % 11), out=20 + i, arrival=0.01 * i)) for i in range(40)]
    plan = FcfsScheduler().schedule(snap(1.0, running + new, workers))
    load = {w.id: 0 for w in workers}
    for r in running:
        load[r.prefill_worker] += r.reserved_tokens
    for r, d in zip(new, plan.decisions):
        w = min(workers, key=lambda w: load[w.id] / w.kv_capacity_tokens)
        load[w.id] += r.reserved_tokens
        assert (d.request_id, d.prefill_worker) == (r.id, w.id)
