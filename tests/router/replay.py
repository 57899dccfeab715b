"""A tiny discrete-event replay of plans on colocated workers with an exact performance model.

It is the test oracle: it executes what the scheduler planned (directives through
pool_order.form_batch, progress through progress.apply_batch), re-plans on every completion,
stage arrival and first token, and records every token time so SLOs can be checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from router.perf_model import PerfModel
from router.plan import DecisionKind, Directive, Plan, Snapshot, WorkerState
from router.pool_order import Batch, form_batch
from router.progress import EventKind, apply_batch, arrive_stage, preempt
from router.request import Admission, Phase, Request, RequestState
from router.scheduler import Scheduler

_KIND = {DecisionKind.ADMIT: Admission.ADMITTED, DecisionKind.BEST_EFFORT: Admission.BEST_EFFORT,
         DecisionKind.REJECT: Admission.REJECTED}


@dataclass(frozen=True)
class Step:
    """One executed batch and what it was formed from."""

    start: float
    end: float
    batch: Batch
    directive: Directive
    resident: tuple[RequestState, ...]


@dataclass
class Trace:
    states: dict[str, RequestState]
    tokens: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    stage_arrival: dict[tuple[str, int], float] = field(default_factory=dict)
    admitted: set[str] = field(default_factory=set)
    best_effort: set[str] = field(default_factory=set)
    batches: list[Step] = field(default_factory=list)
    plans: list[Plan] = field(default_factory=list)
    preempted: set[str] = field(default_factory=set)

    def violations(self) -> list[str]:
        """Every TTFT / TPOT miss of an admitted request, and admitted requests not finished."""
        out = []
        for rid in sorted(self.admitted):
            st = self.states[rid]
            if st.phase is not Phase.DONE:
                out.append(f"{rid} not done ({st.phase.value})")
                continue
            for k, stage in enumerate(st.request.stages):
                times = self.tokens.get((rid, k), [])
                arr = self.stage_arrival[(rid, k)]
                if not times:
                    out.append(f"{rid} stage {k}: no tokens")
                    continue
                if times[0] - arr > stage.slo.ttft_s + 1e-9:
                    out.append(f"{rid} stage {k}: ttft {times[0] - arr:.4f} > {stage.slo.ttft_s:.4f}")
                gaps = [b - a for a, b in zip(times, times[1:])]
                if gaps and max(gaps) > stage.slo.tpot_s + 1e-9:
                    out.append(f"{rid} stage {k}: tpot {max(gaps):.4f} > {stage.slo.tpot_s:.4f}")
        return out


def apply_plan(states: dict[str, RequestState], plan: Plan, trace: Trace) -> dict[str, RequestState]:
    out = dict(states)
    for d in plan.decisions:
        if d.kind is DecisionKind.DEFER:
            continue
        r = out[d.request_id]
        out[d.request_id] = replace(r, admission=_KIND[d.kind], prefill_worker=d.prefill_worker,
                                    decode_worker=d.decode_worker, max_tokens_cap=d.max_tokens_cap)
        if d.kind is DecisionKind.ADMIT:
            trace.admitted.add(d.request_id)
        elif d.kind is DecisionKind.BEST_EFFORT:
            trace.best_effort.add(d.request_id)
    for rid in plan.preempt:
        trace.preempted.add(rid)
        out[rid] = preempt(out[rid])
    return out


def replay(requests: list[Request], scheduler: Scheduler, model: PerfModel, worker: WorkerState,
           max_batches: int = 20000, drop_best_effort: bool = False) -> Trace:
    """Run `requests` on one colocated worker until all are done or rejected.

    Arrivals and tool results become visible at the next batch boundary, where the scheduler
    re-plans; it also re-plans after every batch that finished a stage.
    """
    states = {r.id: RequestState(r) for r in requests}
    trace = Trace(states)
    for r in requests:
        trace.stage_arrival[(r.id, 0)] = r.arrival_s
    arrivals = sorted({r.arrival_s for r in requests})
    now = arrivals[0] if arrivals else 0.0
    last_plan = -1.0
    tool_due: dict[str, float] = {}

    def plan_at(t: float) -> Plan:
        nonlocal states, last_plan
        snap = Snapshot(t, tuple(v for v in states.values()
                                 if v.request.arrival_s <= t and v.phase is not Phase.DONE),
                        (replace(worker, busy_until_s=t),))
        plan = scheduler.schedule(snap)
        trace.plans.append(plan)
        states = apply_plan(states, plan, trace)
        if drop_best_effort:
            for rid in trace.best_effort:
                states[rid] = replace(states[rid], phase=Phase.DONE)
        last_plan = t
        return plan

    plan = plan_at(now)
    for _ in range(max_batches):
        replan = any(last_plan < a <= now for a in arrivals)
        for rid, due in sorted(tool_due.items(), key=lambda x: x[1]):
            if due <= now:
                states[rid] = arrive_stage(states[rid], due)
                trace.stage_arrival[(rid, states[rid].stage)] = due
                del tool_due[rid]
                replan = True
        if replan:
            plan = plan_at(now)
        resident = [s for s in states.values() if s.request.arrival_s <= now and s.prefill_worker == worker.id
                    and s.admission in (Admission.ADMITTED, Admission.BEST_EFFORT)]
        directive = plan.directive(worker.id)
        batch = form_batch(now, resident, directive, model, worker.kv_capacity_tokens)
        if batch.empty:
            future = [a for a in arrivals if a > now] + list(tool_due.values())
            if not future:
                break
            now = min(future)
            continue
        end = now + model.time(batch.shape)
        trace.batches.append(Step(now, end, batch, directive, tuple(resident)))
        states, events = apply_batch(states, batch, end)
        for e in events:
            if e.kind in (EventKind.FIRST_TOKEN, EventKind.TOKEN):
                trace.tokens.setdefault((e.request_id, e.stage), []).append(e.time_s)
            if e.kind is EventKind.STAGE_DONE:
                nxt = states[e.request_id]
                if nxt.phase is Phase.TOOL_WAIT:
                    tool_due[e.request_id] = e.time_s + nxt.request.stages[nxt.stage + 1].tool_delay_s
                elif nxt.stage > e.stage:
                    trace.stage_arrival[(e.request_id, nxt.stage)] = e.time_s
        now = end
        if any(e.kind is EventKind.STAGE_DONE for e in events):
            plan = plan_at(now)
    trace.states = states
    return trace
