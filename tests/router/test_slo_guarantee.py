"""Acceptance 1: with an exact performance model and no arrivals after admission, every admitted
request meets every stage's TTFT and TPOT in a replay of the plan; admitted requests are never
dropped; best-effort requests never delay admitted ones."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.perf_model import AffinePiece, PerfModel
from router.plan import DecisionKind, WorkerRole, WorkerState
from router.pool_order import form_batch
from router.request import SLO, Admission, Lane, Request, Stage
from router.scheduler import SloScheduler
from tests.router.replay import replay

SETTINGS = settings(max_examples=int(__import__("os").environ.get("ROUTER_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def workloads(draw, model: PerfModel):
    """Single-stage, reasoning or tool-chain requests; most arrive together, some a little later
    (later arrivals are admitted only if they fit, so the guarantee must still hold)."""
    n = draw(st.integers(1, 32))
    out = []
    for i in range(n):
        p = draw(st.integers(1, 3000))
        o = draw(st.integers(1, 80))
        slow = draw(st.sampled_from([1.5, 3.0, 5.0, 20.0]))
        ttft = slow * model.prefill_time(p) + draw(st.sampled_from([0.0, 0.05, 0.3]))
        kind = draw(st.sampled_from(["single", "reasoning", "tool"]))
        tpot = draw(st.sampled_from([0.03, 0.05, 0.1]))
        if kind == "single":
            stages = (Stage(p, o, SLO(ttft, tpot)),)
        elif kind == "reasoning":
            stages = (Stage(p, o, SLO(ttft, 0.05)), Stage(0, draw(st.integers(1, 40)), SLO(0.2, 0.1)))
        else:
            a = draw(st.integers(1, 600))
            stages = (Stage(p, o, SLO(ttft, 0.05)),
                      Stage(a, draw(st.integers(1, 40)), SLO(3 * model.prefill_time(a) + 0.2, 0.1),
                            tool_delay_s=draw(st.sampled_from([0.0, 0.01, 0.4]))))
        lane = draw(st.sampled_from(list(Lane)))
        arrival = draw(st.sampled_from([0.0, 0.0, 0.001, 0.05, 0.2, 0.5]))
        out.append(Request(f"r{i}", draw(st.sampled_from("ab")), lane, arrival, stages))
    kv = draw(st.sampled_from([6_000, 30_000, 400_000]))
    return out, WorkerState("w0", WorkerRole.COLOCATED, kv)


def _random_model(draw) -> PerfModel:
    pieces = []
    for _ in range(draw(st.integers(1, 3))):
        pieces.append(AffinePiece(draw(st.floats(0.001, 0.02)),
                                  (draw(st.floats(1e-6, 4e-5)), draw(st.floats(0, 1e-3)),
                                   draw(st.floats(0, 1e-6)), draw(st.floats(0, 3e-9)),
                                   draw(st.floats(0, 1e-5)))))
    return PerfModel(tuple(pieces))


def _check(trace):
    """Every admitted request met every stage's SLO, none was ever decided again (dropped,
    demoted or preempted), and the scheduler never lost track of one (at_risk)."""
    assert trace.violations() == []
    admitted: set[str] = set()
    for plan in trace.plans:
        assert plan.at_risk == ()
        assert not admitted & {d.request_id for d in plan.decisions}
        assert not admitted & set(plan.preempt)
        admitted |= {d.request_id for d in plan.decisions if d.kind is DecisionKind.ADMIT}
    assert admitted == trace.admitted


@SETTINGS
@given(data=st.data())
def test_admitted_requests_meet_every_stage_slo_with_the_fitted_model(exact_model, calm_config, data):
    requests, worker = data.draw(workloads(exact_model))
    trace = replay(requests, SloScheduler(exact_model, calm_config), exact_model, worker)
    _check(trace)


@SETTINGS
@given(data=st.data())
def test_admitted_requests_meet_every_stage_slo_with_random_exact_models(calm_config, data):
    model = _random_model(data.draw)
    requests, worker = data.draw(workloads(model))
    trace = replay(requests, SloScheduler(model, calm_config), model, worker)
    _check(trace)


@SETTINGS
@given(data=st.data())
def test_best_effort_never_takes_admitted_work_from_a_batch(exact_model, calm_config, data):
    """Every replayed batch holds exactly the admitted work it would hold without the best-effort
    requests, and stays within the plan's batch time (so it never stretches an admitted TPOT)."""
    requests, worker = data.draw(workloads(exact_model))
    trace = replay(requests, SloScheduler(exact_model, calm_config), exact_model, worker)
    _check(trace)
    for step in trace.batches:
        assert step.end - step.start <= step.directive.batch_time_s + 1e-9
        admitted_only = [r for r in step.resident if r.admission is Admission.ADMITTED]
        alone = form_batch(step.start, admitted_only, step.directive, exact_model, worker.kv_capacity_tokens)
        assert [c for c in step.batch.chunks if c.request_id in trace.admitted] == list(alone.chunks)
        assert [r for r in step.batch.decode if r in trace.admitted] == list(alone.decode)


def test_best_effort_work_is_placed_after_admitted_work(exact_model):
    """A batch with and without best-effort residents carries the same admitted work."""
    from router.plan import BatchMode, Directive
    from router.request import Phase, RequestState
    adm = [RequestState(Request(f"a{i}", "t", Lane.INTERACTIVE, 0.0, (Stage(800, 50, SLO(1.0, 0.05)),)),
                        admission=Admission.ADMITTED, prefill_worker="w0", decode_worker="w0")
           for i in range(3)]
    adm.append(RequestState(Request("d", "t", Lane.INTERACTIVE, 0.0, (Stage(100, 50, SLO(1.0, 0.05)),)),
                            phase=Phase.DECODING, prefilled=100, decoded=3, context_tokens=103,
                            admission=Admission.ADMITTED, prefill_worker="w0", decode_worker="w0"))
    be = [replace(a, request=replace(a.request, id=f"b{i}"), admission=Admission.BEST_EFFORT)
          for i, a in enumerate(adm)]
    d = Directive("w0", BatchMode.SLO, 0.05, 0)
    alone = form_batch(0.0, adm, d, exact_model, 10**6)
    mixed = form_batch(0.0, adm + be, d, exact_model, 10**6)
    assert [c for c in mixed.chunks if c.request_id.startswith("a")] == list(alone.chunks)
    assert [r for r in mixed.decode if not r.startswith("b")] == list(alone.decode)
    assert exact_model.time(mixed.shape) <= 0.05 + 1e-12


def test_an_overloaded_burst_is_split_between_admitted_and_best_effort(exact_model, calm_config):
    reqs = [Request(f"r{i}", "t", Lane.INTERACTIVE, 0.0,
                    (Stage(2000, 20, SLO(3 * exact_model.prefill_time(2000), 0.05)),)) for i in range(30)]
    trace = replay(reqs, SloScheduler(exact_model, calm_config), exact_model, WorkerState("w0", WorkerRole.COLOCATED, 400_000))
    _check(trace)
    assert 0 < len(trace.admitted) < 30
    assert trace.admitted | trace.best_effort == {r.id for r in reqs}
