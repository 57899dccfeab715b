"""Baseline policies behind the same `Scheduler` interface, for honest comparisons.

All of them admit every request that passes the prompt ceiling (no admission control, so they
make no SLO promise; ADMIT here only means "queued for service") and reserve KV for a request's
whole output when it starts, like the SLO scheduler, so memory is accounted the same way.

    policy     worker choice                       batch formation (pool_order.form_batch)
    fcfs       least reserved memory               PREFILL_FIRST, whole prompts in arrival order (vLLM)
    sarathi    least reserved memory               CHUNKED, token budget, arrival order
    priority   least reserved memory               CHUNKED, lane priority then arrival
    edf        least reserved memory               CHUNKED, earliest TTFT deadline first
    distserve  shortest prefill queue (tokens) /   PREFILL_ONLY FCFS chunks / DECODE_ONLY, all
               least-loaded decode worker          running sequences every step
"""

from __future__ import annotations

import heapq
from typing import Callable

from router.plan import (BatchMode, Decision, DecisionKind, Directive, Plan, Snapshot, WorkerRole,
                         WorkerState)
from router.request import Admission, Lane, Phase, RequestState
from router.scheduler import Scheduler

_LANE_RANK = {Lane.INTERACTIVE: 0, Lane.HEAVY: 1, Lane.BACKGROUND: 2}


class _Baseline(Scheduler):
    """Shared skeleton: admit everything admissible to a worker, then order the queues."""

    mode = BatchMode.CHUNKED

    def __init__(self, token_budget: int = 512, max_prompt_tokens: int = 32768,
                 max_batch_time_s: float = 10.0) -> None:
        if token_budget < 1 or max_prompt_tokens < 1:
            raise ValueError("token_budget and max_prompt_tokens must be >= 1")
        self.token_budget = token_budget
        self.max_prompt_tokens = max_prompt_tokens
        self.max_batch_time_s = max_batch_time_s

    def _key(self, r: RequestState) -> tuple:
        return (r.request.arrival_s, r.id)

    def _reserved(self, snap: Snapshot) -> dict[str, int]:
        out = {w.id: 0 for w in snap.workers}
        for r in snap.requests:
            if r.admission is Admission.ADMITTED and r.phase is not Phase.DONE and r.prefill_worker in out:
                out[r.prefill_worker] += r.reserved_tokens
        return out

    def _placer(self, snap: Snapshot, load: dict[str, int]) -> Callable[[RequestState], tuple[str, str]]:
        """Placement for this step's requests, in order: the worker with the least reserved memory
        (fraction of its KV), ties to the earlier worker; a heap keeps it O(log workers) each."""
        heap = [(load[w.id] / w.kv_capacity_tokens, i, w) for i, w in enumerate(snap.workers) if w.healthy]
        heapq.heapify(heap)

        def place(r: RequestState) -> tuple[str, str]:
            _, i, w = heapq.heappop(heap)
            load[w.id] += r.reserved_tokens
            heapq.heappush(heap, (load[w.id] / w.kv_capacity_tokens, i, w))
            return w.id, w.id
        return place

    def _directive(self, w: WorkerState, order: tuple[str, ...]) -> Directive:
        return Directive(w.id, self.mode, self.max_batch_time_s, self.token_budget, order)

    def schedule(self, snapshot: Snapshot) -> Plan:
        snap = snapshot
        load = self._reserved(snap)
        place = None
        decisions = []
        for r in sorted((r for r in snap.requests if r.admission is Admission.PENDING), key=self._key):
            if r.request.prompt_tokens > self.max_prompt_tokens:
                decisions.append(Decision(r.id, DecisionKind.REJECT, r.request.lane, reason="prompt_too_long"))
                continue
            place = place or self._placer(snap, load)
            pw, dw = place(r)
            decisions.append(Decision(r.id, DecisionKind.ADMIT, r.request.lane, pw, dw))
        queued = sorted((r for r in snap.requests if r.phase is Phase.WAITING
                         and r.admission in (Admission.PENDING, Admission.ADMITTED)), key=self._key)
        order = tuple(r.id for r in queued)
        return Plan(snap.now_s, tuple(decisions), tuple(self._directive(w, order) for w in snap.workers))


class FcfsScheduler(_Baseline):
    """vLLM-style continuous batching: whole prompts first in arrival order, then decode."""

    mode = BatchMode.PREFILL_FIRST

    def __init__(self, token_budget: int = 8192, **kw) -> None:
        super().__init__(token_budget=token_budget, **kw)


class SarathiScheduler(_Baseline):
    """Sarathi-Serve: decode every running sequence, then prefill chunks up to a token budget."""


class PriorityScheduler(_Baseline):
    """Static lane priority (interactive, heavy, background), then arrival, chunked."""

    def _key(self, r: RequestState) -> tuple:
        return (_LANE_RANK[r.request.lane], r.request.arrival_s, r.id)


class EdfScheduler(_Baseline):
    """Earliest TTFT deadline first, chunked."""

    def _key(self, r: RequestState) -> tuple:
        return (r.ttft_deadline_s, r.id)


class DistServeScheduler(_Baseline):
    """DistServe-style FCFS disaggregation: shortest prefill queue, least-loaded decode worker."""

    def _placer(self, snap: Snapshot, load: dict[str, int]) -> Callable[[RequestState], tuple[str, str]]:
        """Shortest prefill queue (tokens), least-loaded decode worker (sequences), counting this
        step's placements; ties to the smaller worker id."""
        pre = [w for w in snap.workers if w.role is WorkerRole.PREFILL and w.healthy]
        dec = [w for w in snap.workers if w.role is WorkerRole.DECODE and w.healthy]
        if not pre or not dec:
            raise ValueError("DistServe needs healthy prefill and decode workers")
        queue = {w.id: 0 for w in pre}
        seqs = {w.id: 0 for w in dec}
        for x in snap.requests:
            if x.admission is Admission.ADMITTED and x.phase is not Phase.DONE:
                if x.prefill_worker in queue and x.phase is Phase.WAITING:
                    queue[x.prefill_worker] += x.remaining_prefill
                if x.decode_worker in seqs:
                    seqs[x.decode_worker] += 1
        qh = [(queue[w.id] + load.get(w.id, 0), w.id) for w in pre]
        sh = [(seqs[w.id] + load.get(w.id, 0), w.id) for w in dec]
        heapq.heapify(qh)
        heapq.heapify(sh)

        def place(r: RequestState) -> tuple[str, str]:
            q, p = heapq.heappop(qh)
            n, d = heapq.heappop(sh)
            load[p] += r.remaining_prefill
            load[d] += 1
            heapq.heappush(qh, (q + r.remaining_prefill, p))
            heapq.heappush(sh, (n + 1, d))
            return p, d
        return place

    def _reserved(self, snap: Snapshot) -> dict[str, int]:
        return {w.id: 0 for w in snap.workers}

    def _directive(self, w: WorkerState, order: tuple[str, ...]) -> Directive:
        mode = BatchMode.PREFILL_ONLY if w.role is WorkerRole.PREFILL else BatchMode.DECODE_ONLY
        return Directive(w.id, mode, self.max_batch_time_s, self.token_budget, order)


BASELINES = {"fcfs": FcfsScheduler, "sarathi": SarathiScheduler, "priority": PriorityScheduler,
             "edf": EdfScheduler, "distserve": DistServeScheduler}
