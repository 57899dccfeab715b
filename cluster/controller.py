"""The controller: runs the router's scheduler on live state and moves requests through the pools.

One asyncio actor. Its loops (all started by ``start``)::

    plan loop      pending requests + worker states → scheduler.schedule(Snapshot) → decisions:
                   REJECT → Failed(rejected, retry_after); ADMIT / BEST_EFFORT → Admitted, queued
                   on the chosen prefill worker (its decode worker is chosen with it)
    prefill loop   (one per prefill worker) admitted first, then best effort, earliest TTFT
                   deadline first, up to a token budget → prefill_batch → first tokens streamed
                   at once → a handoff task per request: decode.start (pull, import, confirm)
    decode loop    (one per decode worker, while it runs requests) step_report → tokens
                   streamed; a finished stage → StageDone, then the next stage on the same
                   decode worker (prefix cache) after its tool delay, or Finished
    health loop    pings unhealthy workers; a restarted actor that answers ``ready`` is used again
    resize         (``cluster.resize``, on request) grows a pool with new workers or drains and
                   removes the least-loaded ones; a draining worker takes no new work

Failures: a dead prefill worker's batch is queued again elsewhere; a dead decode worker's
requests are prefilled again (conversation so far) on the surviving workers; a transfer that
fails is retried by the decode side, then re-prefilled. Each re-prefill counts against
``max_retries``; past it the request fails with ``internal``. Every wait has a deadline
(``ClusterConfig``). Worker step times feed a ``Calibrator``; the scheduler's performance model
is refitted every ``refit_every`` steps. The prefill, handoff, decode, stage and failure paths
are in ``cluster.flows`` and pool resizing in ``cluster.resize`` (both mixed in); this module
holds the public face, planning and calibration.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator

from cluster.api import (ClusterStats, ErrorKind, Failed, Finished, GenerateRequest, LaneStats,
                         StreamItem, WorkerHealth)
from cluster.backend import ModelInfo
from cluster.config import ClusterConfig
from cluster.flows import RequestFlows
from cluster.pools import WorkerDied, WorkerSlot
from cluster.requests import build_request
from cluster.resize import PoolResizing
from cluster.tracking import Tracked, Where
from cluster.workers import PoolSpecs
from router.affinity import HashRing
from router.baselines import DistServeScheduler, SarathiScheduler
from router.perf_model import Calibrator, PerfModel
from router.placement import WorkerLoad, affinity_ok, pick_prefill
from router.plan import DecisionKind, Snapshot, WorkerRole, WorkerState
from router.request import Admission
from router.scheduler import SloScheduler

log = logging.getLogger("tandem.controller")
_DONE = object()


class Controller(RequestFlows, PoolResizing):
    """See the module docstring. Built by ``cluster.builder``; callers use ``cluster.handle``."""

    def __init__(self, config: ClusterConfig, prefill: dict, decode: dict, info: ModelInfo, perf: PerfModel,
                 capacities: dict[str, int], colocated: dict | None = None, pools: PoolSpecs | None = None):
        """``prefill``/``decode``/``colocated``: worker id → actor handle. A colocated worker is a
        decode worker that also runs its requests' prefill (``start_local``); a cluster has either
        colocated workers only, or prefill and decode pools. ``pools``: how the builder started
        the workers and where they sit (needed by ``resize``; None: the pools cannot be resized)."""
        self.config, self.info, self.perf = config, info, perf
        self.slots: dict[str, WorkerSlot] = {}
        colocated = colocated or {}
        for role, handles in ((WorkerRole.PREFILL, prefill), (WorkerRole.DECODE, decode),
                              (WorkerRole.COLOCATED, colocated)):
            for wid, h in handles.items():
                self.slots[wid] = WorkerSlot(wid, role, h, capacities[wid])
        self.ring = HashRing(decode or colocated)
        self.decode_role = WorkerRole.COLOCATED if colocated else WorkerRole.DECODE
        self.scheduler = self._make_scheduler(perf)
        self.calibrator = Calibrator(min_points=32)
        self._new_steps = 0
        self.t0 = time.monotonic()
        self.tracked: dict[str, Tracked] = {}
        self.streams: dict[str, asyncio.Queue] = {}
        self.pending: set[str] = set()
        self.queues: dict[str, list[str]] = {w: [] for w in prefill}
        self.sessions: dict[str, str] = {}
        self.lanes: dict[str, Counter] = {}
        self.actions: Counter = Counter()
        self.overload = "normal"
        self.size_gate_quantile = 1.0
        self.kv = {"bytes": 0, "count": 0, "seconds": 0.0, "bytes_per_token": 0.0}
        self.totals = Counter()
        self._tasks: list[asyncio.Task] = []
        self._plan_wake = asyncio.Event()
        self._plan_errors: list[str] = []
        self._closing = False
        self._loops: dict[str, asyncio.Task] = {}        # worker id → its prefill or decode loop
        self._init_resizing(pools)

    def _make_scheduler(self, perf: PerfModel):
        if self.config.policy == "fcfs":                 # no admission control: the baselines
            if self.config.colocated_workers:
                return SarathiScheduler(token_budget=self.config.max_num_batched_tokens)
            return DistServeScheduler(token_budget=self.config.prefill_batch_tokens)
        return SloScheduler(perf, self.config.scheduler, transfer_s=self._transfer_s)

    def _transfer_s(self, tokens: int) -> float:
        kv = self.kv
        if not kv["count"]:
            return 0.005
        per_byte = kv["seconds"] / max(kv["bytes"], 1)
        return 0.002 + tokens * kv["bytes_per_token"] * per_byte

    def _now(self) -> float:
        return time.monotonic() - self.t0

    # ---- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> bool:
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks.append(loop.create_task(self._plan_loop()))
            self._tasks.append(loop.create_task(self._health_loop()))
            for slot in self.slots.values():
                self._start_loop(slot)
        return True

    def _start_loop(self, slot: WorkerSlot) -> None:
        loop_fn = self._prefill_loop if slot.role is WorkerRole.PREFILL else self._decode_loop
        self._loops[slot.id] = asyncio.get_running_loop().create_task(loop_fn(slot))

    async def shutdown(self) -> None:
        self._closing = True
        for rid in list(self.tracked):
            self._fail(rid, ErrorKind.UNAVAILABLE, "the cluster is shutting down")
        for t in [*self._tasks, *self._loops.values()]:
            t.cancel()

    # ---- the public face ------------------------------------------------------------------------
    def model_info(self) -> ModelInfo:
        return self.info

    async def generate(self, req: GenerateRequest) -> AsyncIterator[StreamItem]:
        """Stream one request (see cluster.api). Always ends with Finished or Failed."""
        try:
            async for item in self._generate(req):
                yield item
        except Exception as exc:                     # a controller bug: end the stream, never hang it
            log.exception("request %s failed inside the controller", req.request_id)
            self._fail(req.request_id, ErrorKind.INTERNAL, f"{type(exc).__name__}: {exc}")
            yield Failed(req.request_id, ErrorKind.INTERNAL, f"{type(exc).__name__}: {exc}")

    async def _generate(self, req: GenerateRequest) -> AsyncIterator[StreamItem]:
        queue = asyncio.Queue()
        rid = req.request_id
        try:
            if rid in self.tracked:
                raise ValueError(f"request id {rid!r} is already in use")
            if self._closing:
                yield Failed(rid, ErrorKind.UNAVAILABLE, "the cluster is shutting down")
                return
            request = build_request(req, self._now(), self.config, self.perf, self.info.max_model_len,
                                    self.info.vocab_size)
        except ValueError as exc:
            yield Failed(rid, ErrorKind.INVALID, str(exc))
            return
        t = self.tracked[rid] = Tracked(req, request, time.monotonic(), self.t0)
        self.streams[rid] = queue
        self.pending.add(rid)
        self._plan_wake.set()
        deadline = time.monotonic() + self.config.request_timeout_s
        try:
            while True:
                left = deadline - time.monotonic()
                try:
                    item = await asyncio.wait_for(queue.get(), max(left, 0.001))
                except asyncio.TimeoutError:
                    self._fail(rid, ErrorKind.TIMEOUT, f"no result within {self.config.request_timeout_s} s")
                    item = queue.get_nowait()
                yield item
                if isinstance(item, (Finished, Failed)):
                    return
        finally:
            if t.where is not Where.DONE:          # the caller went away: free everything
                await self.cancel(rid, req.tenant)
            self.streams.pop(rid, None)

    async def cancel(self, request_id: str, tenant: str) -> bool:
        t = self.tracked.get(request_id)
        if t is None or t.req.tenant != tenant or t.where is Where.DONE:
            return False
        t.cancelled = True
        where, dw = t.where, t.decode_worker
        self._fail(request_id, ErrorKind.CANCELLED, "cancelled")
        if where is Where.DECODE and dw in self.slots:
            slot = self.slots[dw]
            self._leave_decode(slot, t)
            try:
                await slot.call("abort", request_id, timeout_s=self.config.step_timeout_s)
            except WorkerDied:
                pass
        return True                      # prefill / handoff: their tasks see ``cancelled`` and free

    async def health(self) -> tuple[WorkerHealth, ...]:
        return tuple(WorkerHealth(s.id, s.role.value, s.healthy, s.restarts,
                                  s.detail or ("draining" if s.draining else "")) for s in self.slots.values())

    async def ready(self, deep: bool = False) -> bool:
        roles = {s.role for s in self.slots.values() if s.healthy}
        if roles != {WorkerRole.PREFILL, WorkerRole.DECODE} and roles != {WorkerRole.COLOCATED}:
            return False
        if not deep:
            return True
        probe = GenerateRequest(f"ready-probe-{time.monotonic_ns()}", (1, 2, 3),
                                {"max_tokens": 2, "temperature": 0, "ignore_eos": True}, tenant="__probe__",
                                ttft_s=self.config.request_timeout_s, tpot_s=self.config.request_timeout_s)
        last = None
        async for item in self.generate(probe):
            last = item
        return isinstance(last, Finished)

    async def stats(self) -> ClusterStats:
        queued = Counter(t.req.lane.value for t in self.tracked.values()
                         if t.where in (Where.PENDING, Where.QUEUED))
        lanes = {name: LaneStats(**{k: c[k] for k in LaneStats.__dataclass_fields__ if k != "queued"},
                                 queued=queued[name]) for name, c in self.lanes.items()}
        running = sum(1 for t in self.tracked.values() if t.where is Where.DECODE)
        waiting = sum(1 for t in self.tracked.values() if t.where in (Where.PENDING, Where.QUEUED))
        tenants = Counter(t.req.tenant for t in self.tracked.values())
        return ClusterStats(running, waiting, lanes, await self.health(),
                            {s.id: s.kv_usage for s in self.slots.values()},
                            {s.id: s.busy_fraction() for s in self.slots.values()}, self.overload,
                            dict(self.actions), self.kv["bytes"], self.kv["count"], self.kv["seconds"],
                            self.totals["retries"], dict(tenants), self.totals["prompt_tokens"],
                            self.totals["generation_tokens"], self.size_gate_quantile)

    async def requests(self) -> list[dict]:
        """Live requests (where each is, on which workers, retries): for operators and tests."""
        return [{"id": t.id, "where": t.where.value, "stage": t.stage, "prefill_worker": t.prefill_worker,
                 "decode_worker": t.decode_worker, "retries": t.retries, "tokens_out": t.completion_tokens,
                 "age_s": round(time.monotonic() - t.arrival, 3)} for t in self.tracked.values()]

    async def perf_model(self) -> PerfModel:
        """The batch-time model the scheduler plans with now (startup calibration, then refits)."""
        return self.perf

    async def calibration_points(self) -> int:
        return len(self.calibrator)

    async def plan_errors(self) -> list[str]:
        """The last few scheduling-step errors (a step that fails is skipped; this shows why)."""
        return list(self._plan_errors)

    # ---- stream plumbing -------------------------------------------------------------------------
    def _lane(self, lane: str) -> Counter:
        return self.lanes.setdefault(lane, Counter())

    def _emit(self, rid: str, item: StreamItem) -> None:
        q = self.streams.get(rid)
        if q is not None:
            q.put_nowait(item)

    def _fail(self, rid: str, kind: ErrorKind, message: str, retry_after_s: float | None = None) -> None:
        t = self.tracked.pop(rid, None)
        if t is None:
            return
        self.pending.discard(rid)
        if kind not in (ErrorKind.REJECTED, ErrorKind.CANCELLED):
            self._lane(t.req.lane.value)["failed"] += 1
        t.where = Where.DONE
        self._emit(rid, Failed(rid, kind, message, retry_after_s))

    def _finish(self, t: Tracked) -> None:
        fin = t.finished(time.monotonic())
        c = self._lane(t.req.lane.value)
        c["completed"] += 1
        c["slo_met"] += int(fin.slo_met)
        self.tracked.pop(t.id, None)
        self._emit(t.id, fin)

    # ---- planning ----------------------------------------------------------------------------------
    async def _plan_loop(self) -> None:
        last = 0.0
        while True:
            try:
                await asyncio.wait_for(self._plan_wake.wait(), 0.25)
            except asyncio.TimeoutError:
                pass
            self._plan_wake.clear()
            if not self.pending:
                continue
            wait = last + self.config.plan_interval_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            last = time.monotonic()
            try:
                self._plan_once()
            except Exception as exc:                # a planner bug must not stop the cluster
                log.exception("scheduling step failed")
                self._plan_errors.append(f"{type(exc).__name__}: {exc}")
                del self._plan_errors[:-5]
            if self.pending:                        # deferred requests: decide again next tick
                await asyncio.sleep(self.config.plan_interval_s)
                self._plan_wake.set()

    def _plan_once(self) -> None:
        workers = tuple(WorkerState(s.id, s.role, s.kv_capacity_tokens, self._now(), s.accepting)
                        for s in self.slots.values())       # draining: unhealthy for new work
        roles = {w.role for w in workers if w.healthy}
        if not (WorkerRole.COLOCATED in roles or {WorkerRole.PREFILL, WorkerRole.DECODE} <= roles):
            return                                  # wait for a restart (requests keep their deadline)
        states = tuple(t.state for t in self.tracked.values() if t.where is not Where.DONE)
        plan = self.scheduler.schedule(Snapshot(self._now(), states, workers))
        self.overload = plan.overload.value
        self.size_gate_quantile = float(plan.stats.get("size_gate_quantile", 1.0))
        for a in plan.actions:
            self.actions[a.value] += 1
        for d in plan.decisions:
            t = self.tracked.get(d.request_id)
            if t is None or d.request_id not in self.pending or d.kind is DecisionKind.DEFER:
                continue
            self.pending.discard(d.request_id)
            lane = self._lane(d.lane.value)
            if d.kind is DecisionKind.REJECT:
                lane["rejected"] += 1
                self._fail(d.request_id, ErrorKind.REJECTED, f"rejected: {d.reason or 'over capacity'}",
                           d.retry_after_s if d.retry_after_s is not None else 1.0)
                continue
            lane["admitted" if d.kind is DecisionKind.ADMIT else "best_effort"] += 1
            self._emit(t.id, t.admitted(d, time.monotonic()))
            self._affinity(t)
            self.totals["prompt_tokens"] += len(t.req.prompt_token_ids)
            self._enqueue(t)
        for rid in plan.promote:
            t = self.tracked.get(rid)
            if t is not None and t.state.admission is Admission.BEST_EFFORT:
                t.promoted()
                self._lane(t.req.lane.value)["promoted"] += 1
        for rid in plan.preempt:
            t = self.tracked.get(rid)
            if t is not None and t.where is Where.DECODE:
                asyncio.get_running_loop().create_task(self._recompute(t, "preempted"))

    def _affinity(self, t: Tracked) -> None:
        sid = t.req.session_id
        if not (sid and self.config.session_affinity):
            return
        want = self.sessions.get(sid)
        if want not in self.slots:                  # new session, or its worker was removed
            want = self.ring.pick(sid, self._dead(self.decode_role))
        if want and want != t.decode_worker and affinity_ok(self._load(self.slots[want]), len(t.tokens) +
                                                            t.stage_max_tokens()):
            t.decode_worker = want
        self.sessions[sid] = t.decode_worker

    def _dead(self, role: WorkerRole) -> set[str]:
        return {s.id for s in self.slots.values() if s.role is role and not s.accepting}

    def _load(self, s: WorkerSlot) -> WorkerLoad:
        return WorkerLoad(s.id, s.accepting, s.queued_tokens, s.context_tokens, s.kv_capacity_tokens)

    def _accepting(self, wid: str | None) -> bool:
        slot = self.slots.get(wid or "")
        return slot is not None and slot.accepting

    def _enqueue(self, t: Tracked) -> None:
        """Queue ``t`` for prefill (its planned worker if healthy, else the least loaded); on a
        colocated cluster, or for a session turn whose prefix the decode worker caches, run the
        prefill on the decode worker itself."""
        loop = asyncio.get_running_loop()
        if self.decode_role is WorkerRole.COLOCATED:
            t.where = Where.QUEUED
            loop.create_task(self._colocated_start(t))
            return
        if t.req.session_id and self.config.session_affinity and self._accepting(t.decode_worker) \
                and t.stage == 0 and not t.retries:
            t.where = Where.QUEUED
            loop.create_task(self._session_start(t))
            return
        self._queue_prefill(t)

    def _queue_prefill(self, t: Tracked) -> None:
        pw = t.prefill_worker
        if pw not in self.queues or not self.slots[pw].accepting:
            prefill = [s for s in self.slots.values() if s.role is WorkerRole.PREFILL]
            pw = pick_prefill(self._load(s) for s in prefill) or (      # none healthy: wait on one
                pw if pw in self.queues and not self.slots[pw].draining
                else next(s.id for s in prefill if not s.draining))
        t.prefill_worker, t.where = pw, Where.QUEUED
        self.queues[pw].append(t.id)
        slot = self.slots[pw]
        slot.queued_tokens += len(t.tokens)
        slot.wake.set()

    # ---- calibration ------------------------------------------------------------------------------
    def _usable(self, model: PerfModel) -> bool:
        """A refit replaces the model only if the scheduler can plan with it (prefill costs time)."""
        try:
            budget = model.max_prefill_tokens(self.config.scheduler.prefill_batch_time_s)
            return model.prefill_time(512) > model.prefill_time(1) and budget >= 1
        except ValueError:
            return False

    def _observe(self, records) -> None:
        for r in records:
            self.calibrator.observe(r.shape, r.seconds)
            self._new_steps += 1
        if self._new_steps >= self.config.refit_every and len(self.calibrator) >= self.calibrator.min_points:
            self._new_steps = 0
            try:
                model, _ = self.calibrator.refit()
            except Exception:
                log.exception("refit failed")
                return
            if not self._usable(model):
                log.warning("refit rejected: the fitted model gives no usable prefill budget")
                return
            self.perf = model
            if isinstance(self.scheduler, SloScheduler):
                self.scheduler.model = model if self.config.scheduler.safety_margin is None else \
                    model.with_margin(self.config.scheduler.safety_margin)
