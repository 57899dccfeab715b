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
        caps, at = np.unique(np.array([w.kv_capacity_tokens for w in decode], dtype=np.int64), return_inverse=True)
        self.limit = {lane: np.array([memory_limit(lane, int(c), reserve) for c in caps], dtype=float)[at]
                      for lane in Lane}      # one memory_limit per distinct capacity

    @staticmethod
    def of(snap: Snapshot, decode: list[WorkerState], model: PerfModel, reserve: float) -> "DecodePool":
        return DecodePool.of_admitted(_admitted(snap), decode, model, reserve)

    @staticmethod
    def of_admitted(admitted: list[RequestState], decode: list[WorkerState], model: PerfModel,
                    reserve: float) -> "DecodePool":
        """The loads of `admitted` (admitted, not done): what `add` per request gives, as columns
        (the sums are of whole token counts, exact in any order, and min is order-free)."""
        pool = DecodePool(decode, model, reserve)
        index = pool.index
        on = [r for r in admitted if r.decode_worker in index]
        if on:
            n, at = len(pool.ids), [index[r.decode_worker] for r in on]
            pool.seqs += np.bincount(at, minlength=n)
            load = np.bincount(at, np.array([r.reserved_tokens for r in on], dtype=float), n)
            pool.context += load
            pool.mem += load
            np.minimum.at(pool.tpot, at, [r.tightest_remaining_tpot_s for r in on])
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


def _admitted(snap: Snapshot) -> list[RequestState]:
    """The snapshot's admitted requests that are not done, in snapshot order."""
    admitted, done = Admission.ADMITTED, Phase.DONE
    return [r for r in snap.requests if r.admission is admitted and r.phase is not done]


def prefill_taus(cfg: SchedulerConfig) -> list[float]:
    """Candidate prefill batch times, longest first: prefill_batch_time_s halved down to the floor."""
    out = [cfg.prefill_batch_time_s]
    while out[-1] / 2 >= cfg.min_prefill_batch_time_s - 1e-12:
        out.append(out[-1] / 2)
    return out


class PoolDirectives:
    """The directives of the last step, one list per pool (prefill, decode) in worker order.

    `of` returns Directive(id, mode, τ, 0, urgency) for every worker; entries whose τ did not
    change since the last call are the same objects as then (a caller sees "unchanged" by
    identity), and only the changed ones are built: no Python work per idle worker.
    """

    def __init__(self) -> None:
        self._last: dict[BatchMode, tuple[list[str], bool, np.ndarray, list[Directive]]] = {}

    def of(self, mode: BatchMode, ids: list[str], tau: list[float], urgency: bool = False) -> list[Directive]:
        t = np.array(tau, dtype=float)
        last = self._last.get(mode)
        if last is None or last[0] != ids or last[1] != urgency:
            out = [Directive(wid, mode, x, 0, urgency=urgency) for wid, x in zip(ids, tau)]
        else:
            out = list(last[3])
            for i in np.flatnonzero(t != last[2]).tolist():
                out[i] = Directive(ids[i], mode, tau[i], 0, urgency=urgency)
        self._last[mode] = (ids, urgency, t, out)
        return out


def plan_pools(snap: Snapshot, workers: list[WorkerState], gated: list[tuple[RequestState, Lane]],
               values: dict[str, float], model: PerfModel, cfg: SchedulerConfig, taus: dict[str, float],
               transfer_s: Callable[[int], float] = lambda tokens: 0.0,
               last: PoolDirectives | None = None) -> PoolResult:
    """Admission and (prefill, decode) pairs for a disaggregated snapshot (module docstring).
    `last`: the directives of the caller's previous step (reused where unchanged); kept up to date."""
    last = PoolDirectives() if last is None else last
    role_p, role_d = WorkerRole.PREFILL, WorkerRole.DECODE
    prefill = [w for w in workers if w.role is role_p]
    decode = [w for w in workers if w.role is role_d]
    if not prefill or not decode or len(prefill) + len(decode) != len(workers):
        raise ValueError("a disaggregated snapshot needs prefill and decode workers and no colocated ones")
    reserve = cfg.interactive_kv_reserve
    live = _admitted(snap)
    loads = DecodePool.of_admitted(live, decode, model, reserve)
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
    pids = [w.id for w in prefill]
    load = dict.fromkeys(pids, 0)
    # admitted work still to prefill (or between stages), by worker; the others add 0 to load
    forced: dict[str, list[RequestState]] = {}
    waiting, tool_wait = Phase.WAITING, Phase.TOOL_WAIT
    for r in live:
        if (r.phase is waiting or r.phase is tool_wait) and r.prefill_worker in load:
            forced.setdefault(r.prefill_worker, []).append(r)
            load[r.prefill_worker] += r.remaining_prefill
    routed: dict[str, list[tuple[RequestState, Lane]]] = {}
    if ok:
        heap = [(v, i, wid) for i, (wid, v) in enumerate(load.items())]   # least load, then worker order
        heapq.heapify(heap)
        for r, lane in ok:
            v, i, wid = heapq.heappop(heap)
            routed.setdefault(wid, []).append((r, lane))
            heapq.heappush(heap, (v + r.remaining_prefill, i, wid))
    admitted_p: dict[str, str] = {}
    deferred: set[str] = set()
    at_risk: list[str] = []
    ladder = prefill_taus(cfg)
    tau_ps = [taus.get(wid, ladder[0]) for wid in pids]     # a worker with nothing to plan keeps its τ
    at = {wid: i for i, wid in enumerate(pids)}
    for k in sorted(at[wid] for wid in forced.keys() | routed.keys()):
        w = prefill[k]
        tau_p = tau_ps[k]
        f = forced.get(w.id, [])
        rows = [row_for(r, True, False, True, 0, math.inf, 0.0, snap.in_flight.get(r.id, 0)) for r in f]
        rows += [row_for(r, False, False, True, r.reserved_tokens,
                         memory_limit(lane, w.kv_capacity_tokens, reserve), values[r.id])
                 for r, lane in routed.get(w.id, ())]
        if rows:
            used = sum(r.reserved_tokens for r in f)
            res = plan_worker(to_items(rows), model, max(snap.now_s, w.busy_until_s), used, ladder,
                              cfg.dp_window, cfg.dp_labels, cfg.greedy_rounds, cfg.horizon_s,
                              cfg.later_stage_reserve, taus.get(w.id))
            tau_p = res.tau_s
            admitted_p.update({rid: w.id for rid in res.admitted})
            deferred |= set(res.deferred)
            at_risk += list(res.at_risk)
        tau_ps[k] = tau_p
    taus.update(zip(pids, tau_ps))
    admitted: dict[str, tuple[str, str]] = {}
    for r, lane in ok:
        if r.id in admitted_p:
            i = loads.pick(r, lane)
            if i is not None:
                loads.add(i, r)
                admitted[r.id] = (admitted_p[r.id], loads.ids[i])
    idle = cfg.idle_batch_time_s
    tau_ds = [t if math.isfinite(t) else idle for t in loads.tpot.tolist()]
    taus.update(zip(loads.ids, tau_ds))
    directives = (last.of(BatchMode.PREFILL_ONLY, pids, tau_ps, cfg.urgency_order)
                  + last.of(BatchMode.DECODE_ONLY, loads.ids, tau_ds))
    return PoolResult(admitted, deferred, directives, at_risk)
