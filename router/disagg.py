"""Disaggregated planning: prefill pools and decode pools planned apart, KV transfer in between.

    new requests (deadline order)
       │ 1. decode screen: some decode worker keeps every TPOT and has the KV memory
       ▼      (tentative, in deadline order)
       │ 2. prefill DP per prefill worker (dp.plan_worker with no decode rows): TTFT deadlines
       ▼      moved earlier by the KV transfer time, batch time chosen from a ladder (below)
       │ 3. pair choice: each prefill-admitted request takes the decode worker with the most
       ▼      step-time slack that still fits it ("least loaded" in time, not in count)
    (prefill worker, decode worker) per admitted request

A decode worker is feasible for a set S when planned_time(|S| decode tokens at their largest
contexts) <= the tightest TPOT in S and S's KV reservations fit under the lane's limit. Step 3
assigns a subset of step 1's requests, so it never fails for a request that passed step 1 on the
same worker order; when it does (a different worker was chosen), the request goes best effort.

The prefill batch time. A prefill worker keeps no TPOT, so its batch time τ only trades the
per-batch overhead (a longer batch amortises it) against how many whole batches fit before a
deadline (the DP counts N = ⌊(deadline − start)/τ⌋ slots). A fixed τ longer than the TTFT
budget gives N = 0 and nobody can be admitted, so the DP is offered the ladder
prefill_batch_time_s · 2^-k down to min_prefill_batch_time_s and keeps the τ that holds the
admitted on track and admits the most value (dp.plan_worker); the directive carries that τ.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from router.config import SchedulerConfig
from router.dp import plan_worker
from router.items import row_for, to_items
from router.perf_model import PerfModel
from router.plan import BatchMode, Directive, Snapshot, WorkerRole, WorkerState
from router.policies.lanes import memory_limit
from router.request import Admission, Lane, Phase, RequestState


@dataclass(frozen=True)
class PoolResult:
    admitted: dict[str, tuple[str, str]]
    deferred: set[str]
    directives: list[Directive]
    at_risk: list[str]


class DecodePool:
    """The decode workers' admitted loads as columns, one entry per worker in worker order:
    sequences, the sum of their largest contexts, the tightest TPOT, reserved KV memory.

    `pick` is the pair-choice rule: among the workers where r fits (its reservation under the
    lane's memory limit, and planned_time(seqs + 1 decode tokens at context + r's largest
    context) <= min(tightest TPOT, r's TPOT)), the one with the most TPOT slack after adding r;
    ties go to the earlier worker. Evaluated for all workers at once (PerfModel.times_of equals
    the scalar model bit for bit, so the choice is the one a per-worker loop would make).
    """

    def __init__(self, decode: list[WorkerState], model: PerfModel, reserve: float) -> None:
        self.ids = [w.id for w in decode]
        self.index = {wid: i for i, wid in enumerate(self.ids)}
        self.model = model
        n = len(decode)
        self.seqs = np.zeros(n)
        self.context = np.zeros(n)
        self.tpot = np.full(n, math.inf)
        self.mem = np.zeros(n)
        self.limit = {lane: np.array([memory_limit(lane, w.kv_capacity_tokens, reserve) for w in decode],
                                     dtype=float) for lane in Lane}

    @staticmethod
    def of(snap: Snapshot, decode: list[WorkerState], model: PerfModel, reserve: float) -> "DecodePool":
        pool = DecodePool(decode, model, reserve)
        for r in snap.requests:
            if r.admission is Admission.ADMITTED and r.phase is not Phase.DONE and r.decode_worker in pool.index:
                pool.add(pool.index[r.decode_worker], r)
        return pool

    def copy(self) -> "DecodePool":
        out = object.__new__(DecodePool)
        out.__dict__.update(self.__dict__)
        out.seqs, out.context, out.tpot, out.mem = (self.seqs.copy(), self.context.copy(), self.tpot.copy(),
                                                    self.mem.copy())
        return out

    def add(self, i: int, r: RequestState) -> None:
        res = r.reserved_tokens
        self.seqs[i] += 1
        self.context[i] += res
        self.tpot[i] = min(self.tpot[i], r.tightest_remaining_tpot_s)
        self.mem[i] += res

    def pick(self, r: RequestState, lane: Lane) -> int | None:
        """Index of the worker r goes to (class docstring), or None when no worker fits it."""
        res = r.reserved_tokens
        n1 = self.seqs + 1
        m = self.model
        planned = m.times_of(0.0, n1, self.context + res, 0.0, n1) * (1.0 + m.margin)
        slack = np.minimum(self.tpot, r.tightest_remaining_tpot_s) - planned
        fits = (self.mem + res <= self.limit[lane]) & (slack >= 0)
        if not fits.any():
            return None
        return int(np.argmax(np.where(fits, slack, -np.inf)))


def prefill_taus(cfg: SchedulerConfig) -> list[float]:
    """Candidate prefill batch times, longest first: prefill_batch_time_s halved down to the floor."""
    out = [cfg.prefill_batch_time_s]
    while out[-1] / 2 >= cfg.min_prefill_batch_time_s - 1e-12:
        out.append(out[-1] / 2)
    return out


def plan_pools(snap: Snapshot, workers: list[WorkerState], gated: list[tuple[RequestState, Lane]],
               values: dict[str, float], model: PerfModel, cfg: SchedulerConfig, taus: dict[str, float],
               transfer_s: Callable[[int], float] = lambda tokens: 0.0) -> PoolResult:
    """Admission and (prefill, decode) pairs for a disaggregated snapshot (module docstring)."""
    prefill = [w for w in workers if w.role is WorkerRole.PREFILL]
    decode = [w for w in workers if w.role is WorkerRole.DECODE]
    if not prefill or not decode or len(prefill) + len(decode) != len(workers):
        raise ValueError("a disaggregated snapshot needs prefill and decode workers and no colocated ones")
    reserve = cfg.interactive_kv_reserve
    loads = DecodePool.of(snap, decode, model, reserve)
    screen = loads.copy()
    ok: list[tuple[RequestState, Lane]] = []
    for r, lane in sorted(gated, key=lambda x: x[0].ttft_deadline_s):
        i = screen.pick(r, lane)
        if i is not None:
            screen.add(i, r)
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
    heap = [(v, i, wid) for i, (wid, v) in enumerate(load.items())]   # least load, then worker order
    heapq.heapify(heap)
    for r, lane in ok:
        v, i, wid = heapq.heappop(heap)
        routed[wid].append((r, lane))
        heapq.heappush(heap, (v + r.remaining_prefill, i, wid))
    admitted_p: dict[str, str] = {}
    deferred: set[str] = set()
    at_risk: list[str] = []
    directives: list[Directive] = []
    ladder = prefill_taus(cfg)
    for w in prefill:
        tau_p = taus.get(w.id, ladder[0])
        f = [r for r in forced[w.id] if r.phase in (Phase.WAITING, Phase.TOOL_WAIT)]
        rows = [row_for(r, True, False, True, 0, math.inf, 0.0) for r in f]
        rows += [row_for(r, False, False, True, r.reserved_tokens,
                         memory_limit(lane, w.kv_capacity_tokens, reserve), values[r.id])
                 for r, lane in routed[w.id]]
        if rows:
            used = sum(r.reserved_tokens for r in f)
            res = plan_worker(to_items(rows), model, max(snap.now_s, w.busy_until_s), used, ladder,
                              cfg.dp_window, cfg.dp_labels, cfg.greedy_rounds, cfg.horizon_s)
            tau_p = res.tau_s
            admitted_p.update({rid: w.id for rid in res.admitted})
            deferred |= set(res.deferred)
            at_risk += list(res.at_risk)
        taus[w.id] = tau_p
        directives.append(Directive(w.id, BatchMode.PREFILL_ONLY, tau_p, 0, urgency=cfg.urgency_order))
    admitted: dict[str, tuple[str, str]] = {}
    for r, lane in ok:
        if r.id in admitted_p:
            i = loads.pick(r, lane)
            if i is not None:
                loads.add(i, r)
                admitted[r.id] = (admitted_p[r.id], loads.ids[i])
    for i, w in enumerate(decode):
        t = float(loads.tpot[i])
        tau = t if math.isfinite(t) else cfg.idle_batch_time_s
        taus[w.id] = tau
        directives.append(Directive(w.id, BatchMode.DECODE_ONLY, tau, 0))
    return PoolResult(admitted, deferred, directives, at_risk)
