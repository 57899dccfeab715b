"""Small builders for simulator tests: a hand-checkable performance model and requests."""

from __future__ import annotations

from router.perf_model import AffinePiece, PerfModel
from router.plan import WorkerRole, WorkerState
from router.request import SLO, Lane, Request, Stage

A, B_PREFILL, C_DECODE = 0.010, 1e-4, 1e-3
# time(batch) = 10 ms + 0.1 ms per prefill token + 1 ms per decode token (nothing else)
SIMPLE = PerfModel((AffinePiece(A, (B_PREFILL, C_DECODE, 0.0, 0.0, 0.0)),))


def req(rid: str, prompt: int, out: int, arrival: float = 0.0, ttft: float = 10.0, tpot: float = 1.0,
        stages=None) -> Request:
    return Request(rid, "t", Lane.INTERACTIVE, arrival, stages or (Stage(prompt, out, SLO(ttft, tpot)),))


def colocated(n: int = 1, kv: int = 1_000_000) -> tuple[WorkerState, ...]:
    return tuple(WorkerState(f"c{i}", WorkerRole.COLOCATED, kv) for i in range(n))


def disaggregated(p: int = 1, d: int = 1, kv: int = 1_000_000) -> tuple[WorkerState, ...]:
    return tuple([WorkerState(f"p{i}", WorkerRole.PREFILL, kv) for i in range(p)]
                 + [WorkerState(f"d{i}", WorkerRole.DECODE, kv) for i in range(d)])
