"""The discrete-event loop: router/ policies, unchanged, driving modelled GPUs.

    events (heap, by time then sequence number):
      ARRIVE   a request arrives             → pending; a plan is due
      PLAN     scheduler.schedule(Snapshot)  → apply decisions / preemptions / directives
      FREE     a worker's batch (segment) ends → progress.apply_batch; next batch
      XFER     KV of a prefilled request reaches its decode worker (disaggregated only)
      TOOL     a tool result arrives: progress.arrive_stage

    a worker, whenever idle:  batch = pool_order.form_batch(now, resident, directive, perf, kv)
                              runs for perf.time(batch.shape) seconds

Segments (the speed-up, sim/segment.py). When a batch is pure decode and the next batch would
be the same set of sequences, the worker runs k identical steps at once, k = steps until the
first sequence finishes (at most `max_segment`), each step's time from the model at its own
context. Anything that changes the worker's inputs
mid-segment (a new resident, a tool result, a new directive) truncates the segment at the end of
the step in progress, so the result equals a step-by-step run. Plans see decode progress as of
the last segment boundary (the scheduler reads phases and reservations, which only change at
boundaries). Preemption of a request inside a running batch waits for the batch's end.

Contract: deterministic (heap ties broken by insertion order, no wall clock in decisions);
every loop is bounded (`max_events`, `horizon_s`).
"""

from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass, replace

from router.perf_model import PerfModel
from router.plan import DecisionKind, Directive, Plan, Snapshot, WorkerRole, WorkerState
from router.pool_order import form_batch
from router.progress import EventKind, apply_batch, arrive_stage, preempt
from router.request import Admission, Phase, Request, RequestState
from router.scheduler import Scheduler
from sim.records import Outcome, RequestRecord
from sim.segment import Segment, segment_length, step_times

ARRIVE, PLAN, FREE, XFER, TOOL = range(5)
_ADMISSION = {DecisionKind.ADMIT: Admission.ADMITTED, DecisionKind.BEST_EFFORT: Admission.BEST_EFFORT,
              DecisionKind.REJECT: Admission.REJECTED}


def _busy_until(w: WorkerState, busy: float) -> WorkerState:
    """`dataclasses.replace(w, busy_until_s=busy)`, without re-running the constructor's checks
    (w passed them; only the time changes). Three times faster, and it runs per plan per running
    worker."""
    out = object.__new__(WorkerState)
    out.__dict__.update(w.__dict__)
    out.__dict__["busy_until_s"] = busy
    return out


@dataclass(frozen=True)
class EngineConfig:
    """`plan_interval_s`: plans at most this often (arrivals wait for the next one; 0 = at once);
    `tick_s`: re-plan period while requests stay pending (deferred); `horizon_s`: stop the clock
    there (None: last arrival + `drain_s`); `fail_budget`: stop early once this many requests
    have failed (capacity search); `max_segment`: longest decode fast-forward."""

    plan_interval_s: float = 0.02
    tick_s: float = 0.1
    drain_s: float = 600.0
    horizon_s: float | None = None
    fail_budget: int | None = None
    max_events: int = 50_000_000
    max_segment: int = 1024


@dataclass(frozen=True)
class EngineResult:
    """What happened: one record per request, the simulated span, and loop counters."""

    records: tuple[RequestRecord, ...]
    end_s: float
    plans: int
    batches: int
    steps: int
    events: int
    stopped_early: bool
    peak_kv_fraction: float


class Engine:
    """One simulation run. Not reusable: build a new one (and a new scheduler) per run."""

    def __init__(self, requests: tuple[Request, ...], scheduler: Scheduler, perf: PerfModel,
                 workers: tuple[WorkerState, ...], transfer_s=lambda tokens: 0.0,
                 config: EngineConfig = EngineConfig()) -> None:
        if not workers:
            raise ValueError("the simulator needs at least one worker")
        if not requests:
            raise ValueError("the simulator needs at least one request")
        self.requests = {r.id: r for r in requests}
        self.sched, self.perf, self.cfg = scheduler, perf, config
        self.workers = {w.id: w for w in workers}
        self.disagg = any(w.role is not WorkerRole.COLOCATED for w in workers)
        self.transfer_s = transfer_s
        self.states: dict[str, RequestState] = {}
        self.records = {r.id: RequestRecord(r) for r in requests}
        self.resident: dict[str, set[str]] = {w: set() for w in self.workers}
        self.directive: dict[str, Directive] = {}
        first = min(r.arrival_s for r in requests)
        # the workers as snapshots show them, in worker order (see _snapshot_workers)
        self._view = [w if w.busy_until_s <= first else replace(w, busy_until_s=first) for w in workers]
        self._shown_version: dict[str, int] = {}     # segment version each shown busy_until came from
        self._decoders = {w.id for w in workers if w.role is WorkerRole.DECODE}
        self._slot = {w.id: i for i, w in enumerate(workers)}
        self._running: dict[str, None] = {}          # workers with a segment, in start order
        self._in_flight: dict[str, int] = {}         # prefill tokens per request in running batches
        self.seg: dict[str, Segment | None] = {w: None for w in self.workers}
        self.hold_preempt: dict[str, set[str]] = {w: set() for w in self.workers}
        self.pending: set[str] = set()
        self.heap: list = []
        self._seq = 0
        self._version = 0
        self.plan_due: float | None = None
        self.last_plan = -math.inf
        self.now = 0.0
        self.counts = {"plans": 0, "batches": 0, "steps": 0}
        self.failed = 0
        self.peak_kv = 0.0
        last = max(r.arrival_s for r in requests)
        self.horizon = config.horizon_s if config.horizon_s is not None else last + config.drain_s

    # ---- events ----------------------------------------------------------------------------
    def _push(self, t: float, kind: int, payload) -> None:
        self._seq += 1
        heapq.heappush(self.heap, (t, self._seq, kind, payload))

    def _want_plan(self, t: float) -> None:
        t = max(t, self.last_plan + self.cfg.plan_interval_s)
        if self.plan_due is None or t < self.plan_due:
            self.plan_due = t
            self._push(t, PLAN, t)

    def run(self) -> EngineResult:
        for r in sorted(self.requests.values(), key=lambda r: (r.arrival_s, r.id)):
            self._push(r.arrival_s, ARRIVE, r.id)
        events, stopped = 0, False
        while self.heap and events < self.cfg.max_events:
            t, _, kind, payload = heapq.heappop(self.heap)
            if t > self.horizon:
                break
            events += 1
            self.now = t
            if kind == ARRIVE:
                self.states[payload] = RequestState(self.requests[payload])
                self.pending.add(payload)
                self._want_plan(t)
            elif kind == PLAN:
                if payload == self.plan_due:
                    self.plan_due = None
                    self._plan()
            elif kind == FREE:
                self._finish(*payload)
            elif kind == XFER:
                self._land(*payload)
            else:
                self._tool(payload)
            if self.cfg.fail_budget is not None and self.failed > self.cfg.fail_budget:
                stopped = True
                break
        return EngineResult(tuple(self.records.values()), self.now, self.counts["plans"],
                            self.counts["batches"], self.counts["steps"], events, stopped, self.peak_kv)

    # ---- planning ----------------------------------------------------------------------------
    def _plan(self) -> None:
        now = self.now
        self.last_plan = now
        self.counts["plans"] += 1
        plan = self.sched.schedule(Snapshot(now, tuple(self.states.values()), self._snapshot_workers(),
                                            self._in_flight))
        self._apply(plan)
        if self.pending:
            self._want_plan(now + self.cfg.tick_s)

    def _snapshot_workers(self) -> tuple[WorkerState, ...]:
        """The workers as the next snapshot shows them; only running workers are recomputed.

        A running prefill or colocated worker shows the end of its step in progress; decode workers
        keep their first value (``WorkerState``: the scheduler does not read it for them). An idle
        worker keeps the value it showed last (the end of a step that is over, or the first
        arrival): any value <= now means idle (WorkerState's contract), so its object is reused and
        the per-plan cost follows the running prefill workers, not the cluster size.
        """
        view, slot, seg, now, after = self._view, self._slot, self.seg, self.now, bisect.bisect_right
        seen, decoders = self._shown_version, self._decoders
        for wid in self._running:
            if wid in decoders:    # the scheduler reads busy_until_s only where prefill runs (plan.py)
                continue
            s = seg[wid]           # busy until the end of the step in progress (the next may differ)
            i = slot[wid]
            w = view[i]
            if now < w.busy_until_s and seen.get(wid) == s.version:
                continue           # same segment, same step still in progress: nothing to redo
            j = after(s.ends, now, 0, s.steps)
            busy = s.ends[j if j < s.steps else s.steps - 1]
            seen[wid] = s.version
            if w.busy_until_s != busy:
                view[i] = _busy_until(w, busy)
        return tuple(view)

    def _apply(self, plan: Plan) -> None:
        touched: set[str] = set()
        for d in plan.decisions:
            if d.kind is DecisionKind.DEFER:
                continue
            rid = d.request_id
            r = self.states[rid]
            self.pending.discard(rid)
            rec = self.records[rid]
            rec.decision = d.kind
            rec.lane = d.lane
            if d.kind is DecisionKind.REJECT:
                rec.outcome = Outcome.REJECTED
                self.failed += 1
                del self.states[rid]
                continue
            self.states[rid] = replace(r, admission=_ADMISSION[d.kind], prefill_worker=d.prefill_worker,
                                       decode_worker=d.decode_worker, max_tokens_cap=d.max_tokens_cap)
            rec.stage_arrival[0] = r.request.arrival_s
            self.resident[d.prefill_worker].add(rid)
            touched.add(d.prefill_worker)
        for rid in plan.promote:
            r = self.states.get(rid)
            if r is not None and r.admission is Admission.BEST_EFFORT:
                self.states[rid] = replace(r, admission=Admission.ADMITTED)
                self.records[rid].promoted = True
                touched.add(self._where(r))          # its batches change: decode is now mandatory
        for rid in plan.preempt:
            r = self.states.get(rid)
            if r is None:
                continue
            w = self._where(r)
            s = self.seg.get(w) if w else None
            if s is not None and (rid in s.batch.decode or any(c.request_id == rid for c in s.batch.chunks)):
                self.hold_preempt[w].add(rid)
            else:
                self._preempt(rid)
                touched.add(w)
        current = self.directive.get
        for d in plan.directives:
            cur = current(d.worker_id)
            if cur is not d and cur != d:         # (a scheduler may hand back unchanged objects)
                self.directive[d.worker_id] = d
                if self.seg[d.worker_id] is None:     # a running segment is unaffected (module doc)
                    touched.add(d.worker_id)
        for w in sorted(x for x in touched if x):
            self._poke(w)

    def _where(self, r: RequestState) -> str | None:
        for w in (r.prefill_worker, r.decode_worker):
            if w is not None and r.id in self.resident.get(w, ()):
                return w
        return None

    def _preempt(self, rid: str) -> None:
        r = self.states[rid]
        if r.admission is not Admission.BEST_EFFORT or r.phase is Phase.DONE:
            return
        for w in (r.prefill_worker, r.decode_worker):
            if w is not None:
                self.resident[w].discard(rid)
        self.resident[r.prefill_worker].add(rid)     # restarts from its prefill
        rec = self.records[rid]
        rec.preempted += 1
        rec.count[r.stage] = 0                          # the stage's tokens are generated again
        self.states[rid] = preempt(r)

    # ---- workers -----------------------------------------------------------------------------
    def _poke(self, wid: str) -> None:
        """The worker's inputs changed: start it if idle, else cut its segment short."""
        s = self.seg[wid]
        if s is None:
            self._start(wid)
            return
        j = bisect.bisect_right(s.ends, self.now, 0, s.steps)
        if j + 1 < s.steps:
            self._version += 1
            s.steps, s.version = j + 1, self._version
            self._push(s.ends[j], FREE, (wid, s.version))

    def _start(self, wid: str) -> None:
        d = self.directive.get(wid)
        if d is None or not self.resident[wid]:
            return
        w = self.workers[wid]
        resident = [self.states[r] for r in self.resident[wid]]
        resident.sort(key=lambda r: r.id)
        batch = form_batch(self.now, resident, d, self.perf, w.kv_capacity_tokens)
        if batch.empty:
            return
        self.counts["batches"] += 1
        members = [self.states[r] for r in batch.decode]
        full = segment_length(batch, members, resident, d, self.perf, self.cfg.max_segment)
        ends = (self.now + step_times(batch, full, self.perf)).tolist()
        self._version += 1
        self.seg[wid] = Segment(batch, ends, len(ends), full, self._version)
        for c in batch.chunks:
            self._in_flight[c.request_id] = c.tokens
        self._running[wid] = None
        self._push(ends[-1], FREE, (wid, self._version))

    def _finish(self, wid: str, version: int) -> None:
        s = self.seg[wid]
        if s is None or s.version != version:
            return                      # a stale end (the segment was cut short)
        self.seg[wid] = None
        del self._running[wid]
        k, batch = s.steps, s.batch
        for c in batch.chunks:
            del self._in_flight[c.request_id]
        self.counts["steps"] += k
        bulk = k - 1 if k == s.full else k
        if bulk:
            t_first, t_last = s.ends[0], s.ends[bulk - 1]
            for rid in batch.decode:
                r = self.states[rid]
                self.states[rid] = replace(r, decoded=r.decoded + bulk, context_tokens=r.context_tokens + bulk,
                                           first_token_s=t_first if r.first_token_s is None else r.first_token_s)
                self.records[rid].tokens(r.stage, t_first, t_last, bulk)
        if bulk < k:
            end = s.ends[k - 1]
            ids = [c.request_id for c in batch.chunks] + list(batch.decode)
            sub = {rid: self.states[rid] for rid in ids}
            sub, events = apply_batch(sub, batch, end)
            self.states.update(sub)
            self._events(wid, events, end)
        for rid in sorted(self.hold_preempt[wid]):
            if rid in self.states:
                self._preempt(rid)
        self.hold_preempt[wid].clear()
        self._kv_check(wid)
        self._start(wid)

    def _kv_check(self, wid: str) -> None:
        cap = self.workers[wid].kv_capacity_tokens
        used = sum(self.states[r].context_tokens for r in self.resident[wid])
        self.peak_kv = max(self.peak_kv, used / cap)

    def _events(self, wid: str, events, end: float) -> None:
        done_any = False
        for e in events:
            rid = e.request_id
            rec = self.records[rid]
            if e.kind in (EventKind.FIRST_TOKEN, EventKind.TOKEN):
                rec.tokens(e.stage, end, end, 1)
                if e.kind is EventKind.FIRST_TOKEN and self.disagg and \
                        self.workers[wid].role is WorkerRole.PREFILL:
                    r = self.states[rid]
                    if r.phase is Phase.DECODING:
                        self.resident[wid].discard(rid)
                        self._push(end + self.transfer_s(r.context_tokens), XFER, (rid, r.decode_worker))
            elif e.kind is EventKind.STAGE_DONE:
                done_any = True
                r = self.states[rid]
                rec.stage_end[e.stage] = end
                if r.phase is Phase.TOOL_WAIT:
                    delay = r.request.stages[r.stage + 1].tool_delay_s
                    self._push(end + delay, TOOL, rid)
                elif r.phase is not Phase.DONE and r.stage > e.stage:
                    rec.stage_arrival[r.stage] = end
                    self._place(rid)
            elif e.kind is EventKind.DONE:
                self._retire(rid)
        if done_any and self.pending:
            self._want_plan(end)

    def _retire(self, rid: str) -> None:
        r = self.states.pop(rid)
        for w in (r.prefill_worker, r.decode_worker):
            if w is not None:
                self.resident[w].discard(rid)
        rec = self.records[rid]
        rec.outcome = Outcome.DONE
        if not rec.met_slo():
            self.failed += 1

    def _place(self, rid: str) -> None:
        """Where a request's current stage runs in a disaggregated cluster: its prefill worker
        while it waits for prefill, else its decode worker (after a KV transfer if it moves)."""
        r = self.states[rid]
        if not self.disagg:
            return
        pw, dw = r.prefill_worker, r.decode_worker
        if r.phase is Phase.WAITING and r.remaining_prefill > 0:
            if rid not in self.resident[pw]:
                self.resident[dw].discard(rid)
                self.resident[pw].add(rid)
                self._poke(pw)
        elif rid in self.resident[pw] and pw != dw:
            self.resident[pw].discard(rid)
            self._push(self.now + self.transfer_s(r.context_tokens), XFER, (rid, dw))

    def _land(self, rid: str, wid: str) -> None:
        r = self.states.get(rid)
        if r is None or r.phase is Phase.WAITING:     # finished, or preempted in flight
            return
        self.resident[wid].add(rid)
        self._poke(wid)

    def _tool(self, rid: str) -> None:
        r = self.states.get(rid)
        if r is None or r.phase is not Phase.TOOL_WAIT:
            return
        r = self.states[rid] = arrive_stage(r, self.now)
        self.records[rid].stage_arrival[r.stage] = self.now
        w = self._where(r)
        self._place(rid)
        if w is not None:
            self._poke(w)
