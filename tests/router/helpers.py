"""Small builders for router tests."""

from __future__ import annotations

from router.plan import Snapshot, WorkerRole, WorkerState
from router.request import SLO, Admission, Lane, Phase, Request, RequestState, Stage


def req(rid: str, prompt: int = 100, out: int = 10, ttft: float = 1.0, tpot: float = 0.1,
        lane: Lane = Lane.INTERACTIVE, tenant: str = "t", arrival: float = 0.0, stages=None) -> Request:
    return Request(rid, tenant, lane, arrival, stages or (Stage(prompt, out, SLO(ttft, tpot)),))


def pending(*requests: Request) -> tuple[RequestState, ...]:
    return tuple(RequestState(r) for r in requests)


def decoding(r: Request, worker: str = "w0", lane_admission: Admission = Admission.ADMITTED) -> RequestState:
    return RequestState(r, phase=Phase.DECODING, prefilled=r.prompt_tokens, decoded=1,
                        context_tokens=r.prompt_tokens, admission=lane_admission,
                        prefill_worker=worker, decode_worker=worker)


def worker(wid: str = "w0", kv: int = 400_000, role: WorkerRole = WorkerRole.COLOCATED) -> WorkerState:
    return WorkerState(wid, role, kv)


def snap(now: float, states, workers=None) -> Snapshot:
    return Snapshot(now, tuple(states), tuple(workers or (worker(),)))
