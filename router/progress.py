"""How a finished batch moves requests forward: one shared rule for the simulator, the cluster
controller and the tests, so they all agree on what "first token" and "stage done" mean.

    WAITING ──last prefill chunk (emits token 1)──▶ DECODING ──token max_output──▶ stage done
    stage done ─▶ DONE (last stage) | next stage WAITING (tool_delay 0) | TOOL_WAIT (tool_delay > 0)
    TOOL_WAIT ──arrive_stage(now)──▶ WAITING, or DECODING when the stage appends no tokens
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Collection

from router.pool_order import Batch
from router.request import Admission, Phase, RequestState


class EventKind(str, Enum):
    FIRST_TOKEN = "first_token"
    TOKEN = "token"
    STAGE_DONE = "stage_done"
    DONE = "done"


@dataclass(frozen=True)
class Event:
    request_id: str
    kind: EventKind
    stage: int
    time_s: float


def arrive_stage(r: RequestState, now_s: float) -> RequestState:
    """Start the next stage of a request in TOOL_WAIT (its tool result arrived at `now_s`)."""
    if r.phase is not Phase.TOOL_WAIT:
        raise ValueError(f"request {r.id} is {r.phase.value}, not waiting for a tool")
    nxt = r.stage + 1
    phase = Phase.WAITING if r.request.stages[nxt].input_tokens > 0 else Phase.DECODING
    return replace(r, stage=nxt, stage_arrival_s=now_s, phase=phase, prefilled=0, decoded=0, first_token_s=None)


def preempt(r: RequestState) -> RequestState:
    """Free a best-effort request's KV: its current stage restarts from scratch when it runs again
    (a request waiting for a tool keeps waiting, with nothing cached). Admitted requests are never
    preempted."""
    if r.admission is not Admission.BEST_EFFORT:
        raise ValueError(f"only best-effort requests are preempted; {r.id} is {r.admission.value}")
    if r.phase is Phase.TOOL_WAIT:
        return replace(r, context_tokens=0)
    return replace(r, phase=Phase.WAITING, prefilled=0, decoded=0, context_tokens=0)


def _finish_stage(r: RequestState, t: float, events: list[Event]) -> RequestState:
    events.append(Event(r.id, EventKind.STAGE_DONE, r.stage, t))
    if r.stage + 1 == len(r.request.stages):
        events.append(Event(r.id, EventKind.DONE, r.stage, t))
        return replace(r, phase=Phase.DONE)
    waiting = replace(r, phase=Phase.TOOL_WAIT)
    if r.request.stages[r.stage + 1].tool_delay_s == 0:
        return arrive_stage(waiting, t)
    return waiting


def apply_batch(states: dict[str, RequestState], batch: Batch, end_s: float,
                stop: Collection[str] = ()) -> tuple[dict[str, RequestState], list[Event]]:
    """New states after `batch` ended at `end_s`; `stop` ids hit end-of-sequence on this batch.

    Returns a new dict (the input is not modified) and the token events, in batch order.
    """
    out = dict(states)
    events: list[Event] = []
    for c in batch.chunks:
        r = out[c.request_id]
        r = replace(r, prefilled=r.prefilled + c.tokens, context_tokens=r.context_tokens + c.tokens)
        if r.prefilled >= r.current.input_tokens:
            r = replace(r, phase=Phase.DECODING, decoded=1,
                        first_token_s=end_s if r.first_token_s is None else r.first_token_s)
            events.append(Event(r.id, EventKind.FIRST_TOKEN, r.stage, end_s))
            if r.decoded >= r.max_output(r.stage) or r.id in stop:
                r = _finish_stage(r, end_s, events)
        out[r.id] = r
    for rid in batch.decode:
        r = out[rid]
        first = r.decoded == 0
        r = replace(r, phase=Phase.DECODING, decoded=r.decoded + 1, context_tokens=r.context_tokens + 1,
                    first_token_s=end_s if r.first_token_s is None else r.first_token_s)
        events.append(Event(r.id, EventKind.FIRST_TOKEN if first else EventKind.TOKEN, r.stage, end_s))
        if r.decoded >= r.max_output(r.stage) or r.id in stop:
            r = _finish_stage(r, end_s, events)
        out[rid] = r
    return out, events
