"""What callers of the cluster send and get back: plain frozen data, and the typed errors.

The controller (``cluster.controller``) speaks only these types; the HTTP/gRPC fronts translate
them to their wire formats::

    GenerateRequest ──controller.generate──▶ stream of StreamItem:
        Routed            first, only from a multi-model front (deploy.multi_backend): the
                          served model and version that took the request
        Admitted          once, when the scheduler decided (admitted or best effort)
        TokenChunk ...    as tokens are produced (the first one as soon as prefill samples it)
        StageDone         at the end of every stage (per-stage TTFT/TPOT and whether it met its SLO)
        Finished          last item of a successful request
        Failed            last item of a request that did not complete (kind → HTTP/gRPC status)

A stream always ends with exactly one ``Finished`` or ``Failed``. ``ErrorKind`` maps to the
fronts' status codes (``http_status``/``grpc_code`` names); ``ClusterError`` carries the same
kind for in-process callers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Union

from router.request import Lane


class ErrorKind(str, Enum):
    INVALID = "invalid_request"          # 400 / INVALID_ARGUMENT
    UNAUTHENTICATED = "unauthenticated"  # 401 / UNAUTHENTICATED
    FORBIDDEN = "forbidden"              # 403 / PERMISSION_DENIED (a valid key without the right)
    NOT_FOUND = "not_found"              # 404 / NOT_FOUND
    REJECTED = "rejected"                # 429 / RESOURCE_EXHAUSTED (+ retry_after_s)
    UNAVAILABLE = "unavailable"          # 503 / UNAVAILABLE (no healthy worker, shutting down)
    TIMEOUT = "timeout"                  # 504 / DEADLINE_EXCEEDED
    CANCELLED = "cancelled"              # 499 / CANCELLED
    INTERNAL = "internal"                # 500 / INTERNAL (retries exhausted, worker errors)

    @property
    def http_status(self) -> int:
        return _HTTP[self]

    @property
    def grpc_code(self) -> str:
        """Name of the ``grpc.StatusCode`` member."""
        return _GRPC[self]


_HTTP = {ErrorKind.INVALID: 400, ErrorKind.UNAUTHENTICATED: 401, ErrorKind.FORBIDDEN: 403,
         ErrorKind.NOT_FOUND: 404, ErrorKind.REJECTED: 429, ErrorKind.UNAVAILABLE: 503,
         ErrorKind.TIMEOUT: 504, ErrorKind.CANCELLED: 499, ErrorKind.INTERNAL: 500}
_GRPC = {ErrorKind.INVALID: "INVALID_ARGUMENT", ErrorKind.UNAUTHENTICATED: "UNAUTHENTICATED",
         ErrorKind.FORBIDDEN: "PERMISSION_DENIED", ErrorKind.NOT_FOUND: "NOT_FOUND",
         ErrorKind.REJECTED: "RESOURCE_EXHAUSTED", ErrorKind.UNAVAILABLE: "UNAVAILABLE",
         ErrorKind.TIMEOUT: "DEADLINE_EXCEEDED", ErrorKind.CANCELLED: "CANCELLED",
         ErrorKind.INTERNAL: "INTERNAL"}


class ClusterError(Exception):
    """A request that could not be served; ``kind`` says why (and which status a front returns)."""

    def __init__(self, kind: ErrorKind, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.kind, self.message, self.retry_after_s = kind, message, retry_after_s

    def __reduce__(self):
        return (ClusterError, (self.kind, self.message, self.retry_after_s))


@dataclass(frozen=True)
class StageSpec:
    """A later stage of a multi-stage request (tool calling, reasoning).

    ``append_token_ids`` are added after the previous stage's output (a tool result, the next
    turn), ``tool_delay_s`` after that stage ended; the stage then decodes up to ``max_tokens``.
    ``ttft_s``/``tpot_s`` override the request's scenario SLO for this stage.
    """

    append_token_ids: tuple[int, ...]
    max_tokens: int
    tool_delay_s: float = 0.0
    ttft_s: float | None = None
    tpot_s: float | None = None


@dataclass(frozen=True)
class GenerateRequest:
    """One request as the controller receives it (the fronts validate and tokenize first).

    ``params``: sampling parameters as a plain dict (``prefill_worker.messages`` validates it;
    ``max_tokens`` bounds stage 0). SLO: ``ttft_s``/``tpot_s`` absolute, else ``scenario`` (a
    ``router.slo`` preset, TTFT relative to the modelled prefill time), else the cluster's default.
    ``session_id`` asks for the decode worker that served the session before (prefix cache).
    ``model`` and ``needs`` matter only to a multi-model front (``deploy.model_router``): the
    served name asked for, and the capabilities (tags, e.g. "chat") the serving model must have;
    a single cluster ignores both.
    """

    request_id: str
    prompt_token_ids: tuple[int, ...]
    params: dict[str, Any] = field(default_factory=dict)
    lane: Lane = Lane.INTERACTIVE
    tenant: str = "default"
    scenario: str | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    stages: tuple[StageSpec, ...] = ()
    session_id: str | None = None
    tool_risk: float = 0.0
    model: str | None = None        # served model name (multi-model apps route by it; None: default)
    needs: frozenset[str] = frozenset()   # capabilities the serving model must have (its tags)


@dataclass(frozen=True)
class Routed:
    """Which served model and version took the request, and why (``deploy.model_router``'s
    ``RouteReason`` value: requested, lane, capability, fallback). ``model`` may differ from
    ``GenerateRequest.model``; the fronts report it as the model that served the request."""

    request_id: str
    model: str
    version: str
    reason: str


@dataclass(frozen=True)
class Admitted:
    request_id: str
    admission: str                  # "admitted" | "best_effort"
    prefill_worker: str
    decode_worker: str
    max_tokens_cap: int | None      # set when overload capped max_tokens
    queue_s: float                  # arrival → decision


@dataclass(frozen=True)
class TokenChunk:
    request_id: str
    stage: int
    token_ids: tuple[int, ...]
    text: str                       # text released by these tokens (may be "" mid-character)


@dataclass(frozen=True)
class StageDone:
    request_id: str
    stage: int
    prompt_tokens: int              # input tokens of this stage
    completion_tokens: int
    ttft_s: float                   # stage arrival → first token out of the controller
    tpot_s: float | None            # mean time per output token after the first (None: 1 token)
    ttft_slo_s: float
    tpot_slo_s: float
    slo_met: bool
    finish_reason: str              # "stop" | "length"


@dataclass(frozen=True)
class Finished:
    request_id: str
    admission: str
    prompt_tokens: int
    completion_tokens: int          # all stages
    finish_reason: str              # of the last stage
    slo_met: bool                   # every stage met its TTFT and TPOT
    e2e_s: float
    retries: int                    # re-prefills after a worker or transfer failure
    handoff_s: float = 0.0          # KV transfer time (receive + import), all handoffs of the request


@dataclass(frozen=True)
class Failed:
    request_id: str
    kind: ErrorKind
    message: str
    retry_after_s: float | None = None

    def error(self) -> ClusterError:
        return ClusterError(self.kind, self.message, self.retry_after_s)


StreamItem = Union[Routed, Admitted, TokenChunk, StageDone, Finished, Failed]


@dataclass(frozen=True)
class WorkerHealth:
    worker_id: str
    role: str                       # "prefill" | "decode" | "colocated"
    healthy: bool
    restarts: int
    detail: str = ""                # why it is unhealthy, or "draining" (a resize is removing it)


@dataclass(frozen=True)
class ResizeResult:
    """What ``ClusterHandle.resize(role, n)`` did to one pool.

    ``role`` is the pool that was resized ("prefill", "decode" or "colocated"); ``before`` and
    ``after`` its worker counts; ``added`` / ``removed`` the worker ids started / stopped;
    ``moved`` the requests that a removed worker had not finished within the drain deadline and
    that were prefilled again on the workers that stay (their streams go on; not a failure).
    """

    role: str
    before: int
    after: int
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    moved: tuple[str, ...] = ()
    seconds: float = 0.0


@dataclass(frozen=True)
class LaneStats:
    admitted: int = 0
    best_effort: int = 0
    promoted: int = 0               # best effort admitted later (counted in best_effort too)
    rejected: int = 0
    completed: int = 0
    failed: int = 0
    slo_met: int = 0
    queued: int = 0                 # waiting for a decision or for prefill


@dataclass(frozen=True)
class ClusterStats:
    """Live state for metrics and autoscaling (a point-in-time copy)."""

    running: int                    # decoding now
    waiting: int                    # pending decision or waiting for prefill
    lanes: dict[str, LaneStats]
    workers: tuple[WorkerHealth, ...]
    kv_usage: dict[str, float]      # worker id → fraction of KV blocks referenced
    busy_fraction: dict[str, float]  # worker id → fraction of the last window spent in steps
    overload_state: str
    fallback_actions: dict[str, int]  # action → activations so far
    kv_transfer_bytes: int
    kv_transfers: int
    kv_transfer_seconds: float      # sum over transfers (receive + import)
    retries: int
    tenants_running: dict[str, int]
    prompt_tokens: int
    generation_tokens: int
    size_gate_quantile: float = 1.0  # scheduler's size gate: 1 open; below 1 the costliest recent requests skip admission
