"""Disaggregated planning: prefill pools and decode pools planned apart, KV transfer in between.

    new requests (deadline order)
       │ 1. decode screen: some decode worker keeps every TPOT and has the KV memory
       ▼      (tentative, in deadline order)
       │ 2. prefill DP per prefill worker (dp.plan_worker with no decode rows): TTFT deadlines
       ▼      moved earlier by the KV transfer time, batches of prefill_batch_time_s
       │ 3. pair choice: each prefill-admitted request takes the decode worker with the most
       ▼      step-time slack that still fits it ("least loaded" in time, not in count)
    (prefill worker, decode worker) per admitted request

A decode worker is feasible for a set S when planned_time(|S| decode tokens at their largest
contexts) <= the tightest TPOT in S and S's KV reservations fit under the lane's limit. Step 3
assigns a subset of step 1's requests, so it never fails for a request that passed step 1 on the
same worker order; when it does (a different worker was chosen), the request goes best effort.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

from router.config import SchedulerConfig
from router.dp import plan_worker
from router.items import row_for, to_items
from router.perf_model import BatchShape, PerfModel
from router.plan import BatchMode, Directive, Snapshot, WorkerRole, WorkerState
from router.policies.lanes import memory_limit
from router.request import Admission, Lane, Phase, RequestState


@dataclass(frozen=True)
class PoolResult:
    admitted: dict[str, tuple[str, str]]
    deferred: set[str]
    directives: list[Directive]
    at_risk: list[str]


@dataclass
class _DecodeLoad:
    """One decode worker's admitted load: sequences, their largest contexts, tightest TPOT, memory."""

    worker: WorkerState
    seqs: int
    context: float
    tpot: float
    mem: float

    def step_s(self, model: PerfModel, seqs: int, context: float) -> float:
        return model.planned_time(BatchShape(decode_tokens=seqs, decode_context=int(context), num_seqs=seqs))

    def slack_with(self, r: RequestState, lane: Lane, model: PerfModel, reserve: float) -> float | None:
        """TPOT slack (s) after adding r, or None when r does not fit (time or memory)."""
        tpot = min(self.tpot, r.tightest_remaining_tpot_s)
        if self.mem + r.reserved_tokens > memory_limit(lane, self.worker.kv_capacity_tokens, reserve):
            return None
        slack = tpot - self.step_s(model, self.seqs + 1, self.context + r.reserved_tokens)
        return slack if slack >= 0 else None

    def add(self, r: RequestState) -> None:
        self.seqs += 1
        self.context += r.reserved_tokens
        self.tpot = min(self.tpot, r.tightest_remaining_tpot_s)
        self.mem += r.reserved_tokens


def _decode_loads(snap: Snapshot, decode: list[WorkerState]) -> dict[str, _DecodeLoad]:
    loads = {w.id: _DecodeLoad(w, 0, 0.0, math.inf, 0.0) for w in decode}
    for r in snap.requests:
        if r.admission is Admission.ADMITTED and r.phase is not Phase.DONE and r.decode_worker in loads:
            loads[r.decode_worker].add(r)
    return loads


def _pick(loads: dict[str, _DecodeLoad], r: RequestState, lane: Lane, model: PerfModel,
          reserve: float) -> str | None:
    best, best_slack = None, -1.0
    for wid, load in loads.items():
        s = load.slack_with(r, lane, model, reserve)
        if s is not None and s > best_slack:
            best, best_slack = wid, s
    return best


def plan_pools(snap: Snapshot, workers: list[WorkerState], gated: list[tuple[RequestState, Lane]],
               values: dict[str, float], model: PerfModel, cfg: SchedulerConfig, taus: dict[str, float],
               transfer_s: Callable[[int], float] = lambda tokens: 0.0) -> PoolResult:
    """Admission and (prefill, decode) pairs for a disaggregated snapshot (module docstring)."""
    prefill = [w for w in workers if w.role is WorkerRole.PREFILL]
    decode = [w for w in workers if w.role is WorkerRole.DECODE]
    if not prefill or not decode or len(prefill) + len(decode) != len(workers):
        raise ValueError("a disaggregated snapshot needs prefill and decode workers and no colocated ones")
    reserve = cfg.interactive_kv_reserve
    screen = _decode_loads(snap, decode)
    ok: list[tuple[RequestState, Lane]] = []
    for r, lane in sorted(gated, key=lambda x: x[0].ttft_deadline_s):
        wid = _pick(screen, r, lane, model, reserve)
        if wid is not None:
            screen[wid].add(r)
            # the prefill deadline leaves room for the KV transfer
            moved = replace(r, stage_arrival_s=r.arrived_s - transfer_s(r.current.input_tokens))
            ok.append((moved, lane))
    # route to prefill workers: least outstanding prefill tokens first
    load = {w.id: 0 for w in prefill}
    forced: dict[str, list[RequestState]] = {w.id: [] for w in prefill}
    for r in snap.requests:
        if r.admission is Admission.ADMITTED and r.phase is not Phase.DONE and r.prefill_worker in forced:
            forced[r.prefill_worker].append(r)
            load[r.prefill_worker] += r.remaining_prefill
    routed: dict[str, list[tuple[RequestState, Lane]]] = {w.id: [] for w in prefill}
    for r, lane in ok:
        wid = min(load, key=load.get)
        routed[wid].append((r, lane))
        load[wid] += r.remaining_prefill
    admitted_p: dict[str, str] = {}
    deferred: set[str] = set()
    at_risk: list[str] = []
    directives: list[Directive] = []
    tau_p = cfg.prefill_batch_time_s
    for w in prefill:
        f = [r for r in forced[w.id] if r.phase in (Phase.WAITING, Phase.TOOL_WAIT)]
        rows = [row_for(r, True, False, True, 0, math.inf, 0.0) for r in f]
        rows += [row_for(r, False, False, True, r.reserved_tokens,
                         memory_limit(lane, w.kv_capacity_tokens, reserve), values[r.id])
                 for r, lane in routed[w.id]]
        if rows:
            used = sum(r.reserved_tokens for r in f)
            res = plan_worker(to_items(rows), model, max(snap.now_s, w.busy_until_s), used, [tau_p],
                              cfg.dp_window, cfg.dp_labels, cfg.greedy_rounds, cfg.horizon_s)
            admitted_p.update({rid: w.id for rid in res.admitted})
            deferred |= set(res.deferred)
            at_risk += list(res.at_risk)
        directives.append(Directive(w.id, BatchMode.PREFILL_ONLY, tau_p, 0, urgency=cfg.urgency_order))
    loads = _decode_loads(snap, decode)
    admitted: dict[str, tuple[str, str]] = {}
    for r, lane in ok:
        if r.id in admitted_p:
            wid = _pick(loads, r, lane, model, reserve)
            if wid is not None:
                loads[wid].add(r)
                admitted[r.id] = (admitted_p[r.id], wid)
    for w in decode:
        tau = loads[w.id].tpot if math.isfinite(loads[w.id].tpot) else cfg.idle_batch_time_s
        taus[w.id] = tau
        directives.append(Directive(w.id, BatchMode.DECODE_ONLY, tau, 0))
    return PoolResult(admitted, deferred, directives, at_risk)
