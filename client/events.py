"""What a Generate stream yields: typed, frozen events (times in milliseconds).

    Admitted        once, when the scheduler decided
    Chunk ...       tokens of a stage as they are produced
    StageDone       at the end of every stage
    Finished        last event of a successful request

``Completion`` is what ``complete()`` returns: the whole text plus the summary. ``model`` on
Admitted, Finished and Completion is the served model that took the request (it may differ from
the one asked for: lane rules, capability routing, overload fallback); None from a server that
does not say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import grpc

from client.errors import TandemError
from client.proto import tandem_pb2 as pb


@dataclass(frozen=True)
class Admitted:
    request_id: str
    admission: str                  # "admitted" | "best_effort"
    prefill_worker: str
    decode_worker: str
    max_tokens_cap: int | None      # set when overload capped max_tokens
    queue_ms: float
    model: str | None = None        # the served model that took the request


@dataclass(frozen=True)
class Chunk:
    request_id: str
    stage: int
    token_ids: tuple[int, ...]
    text: str                       # may be "" mid-character


@dataclass(frozen=True)
class StageDone:
    request_id: str
    stage: int
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    tpot_ms: float | None           # None for a one-token stage
    ttft_slo_ms: float
    tpot_slo_ms: float
    slo_met: bool
    finish_reason: str


@dataclass(frozen=True)
class Finished:
    request_id: str
    admission: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    slo_met: bool
    e2e_ms: float
    retries: int
    model: str | None = None        # the served model that took the request


Event = Union[Admitted, Chunk, StageDone, Finished]


@dataclass(frozen=True)
class Completion:
    request_id: str
    text: str
    token_ids: tuple[int, ...]
    stages: tuple[StageDone, ...]
    finished: Finished

    @property
    def model(self) -> str | None:
        """The served model that took the request."""
        return self.finished.model


def _optional(msg, name: str):
    return getattr(msg, name) if msg.HasField(name) else None


def _admitted(rid: str, m: pb.Admitted) -> Admitted:
    return Admitted(rid, m.admission, m.prefill_worker, m.decode_worker,
                    _optional(m, "max_tokens_cap"), m.queue_ms, m.model or None)


def _chunk(rid: str, m: pb.Chunk) -> Chunk:
    return Chunk(rid, m.stage, tuple(m.token_ids), m.text)


def _stage_done(rid: str, m: pb.StageDone) -> StageDone:
    return StageDone(rid, m.stage, m.prompt_tokens, m.completion_tokens, m.ttft_ms,
                     _optional(m, "tpot_ms"), m.ttft_slo_ms, m.tpot_slo_ms, m.slo_met,
                     m.finish_reason)


def _finished(rid: str, m: pb.Finished) -> Finished:
    return Finished(rid, m.admission, m.prompt_tokens, m.completion_tokens, m.finish_reason,
                    m.slo_met, m.e2e_ms, m.retries, m.model or None)


_FROM_PROTO = {"admitted": _admitted, "chunk": _chunk, "stage_done": _stage_done,
               "finished": _finished}


def event_from_proto(msg: pb.GenerateResponse) -> Event | None:
    """The event a response carries; None for an event kind this SDK does not know yet."""
    kind = msg.WhichOneof("event")
    convert = _FROM_PROTO.get(kind)
    return convert(msg.request_id, getattr(msg, kind)) if convert else None


class CompletionBuilder:
    """Folds a stream's events into a ``Completion`` (used by both clients' ``complete``)."""

    def __init__(self, request_id: str):
        self.request_id = request_id
        self._text: list[str] = []
        self._ids: list[int] = []
        self._stages: list[StageDone] = []
        self._finished: Finished | None = None

    def add(self, event: Event) -> None:
        if isinstance(event, Chunk):
            self._text.append(event.text)
            self._ids.extend(event.token_ids)
        elif isinstance(event, StageDone):
            self._stages.append(event)
        elif isinstance(event, Finished):
            self._finished = event

    def build(self) -> Completion:
        if self._finished is None:
            raise TandemError(grpc.StatusCode.INTERNAL,
                              "stream ended without Finished", request_id=self.request_id)
        return Completion(self.request_id, "".join(self._text), tuple(self._ids),
                          tuple(self._stages), self._finished)
