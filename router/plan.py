"""What goes into a scheduling step (`Snapshot`) and what comes out (`Plan`): frozen data only.

    caller (simulator / Ray controller)            scheduler (pure Python)
    ─────────────────────────────────────           ───────────────────────
    snapshot = Snapshot(now, requests, workers) ──▶ plan = scheduler.schedule(snapshot)
    apply plan.decisions, plan.preempt         ◀── Plan(decisions, directives, preempt, overload)
    each worker, every iteration:
        batch = pool_order.form_batch(worker view, directive, perf model)
        run it, then progress.apply_batch(...) and report back through the next Snapshot
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from router.request import Lane, RequestState


class WorkerRole(str, Enum):
    COLOCATED = "colocated"
    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(frozen=True)
class WorkerState:
    """A worker as the caller sees it. `busy_until_s`: when its in-flight batch ends (<= now: idle);
    read for workers that run prefill (colocated and prefill workers) only, so a caller need not
    keep it current for decode workers."""

    id: str
    role: WorkerRole
    kv_capacity_tokens: int
    busy_until_s: float = 0.0
    healthy: bool = True

    def __post_init__(self) -> None:
        if self.kv_capacity_tokens < 1:
            raise ValueError(f"worker {self.id} needs a positive KV capacity")


@dataclass(frozen=True)
class Snapshot:
    """Everything the scheduler may look at. Requests in Phase.DONE may be omitted by the caller.

    `in_flight`: prefill tokens per request in the batches running now. They are done by their
    worker's `busy_until_s`, where its plan starts, so the plan counts them as done; a caller that
    leaves `busy_until_s` at 0 leaves this empty too (its plans start now, that work still pending).
    Read only during `schedule`; the scheduler keeps no reference to it.
    """

    now_s: float
    requests: tuple[RequestState, ...]
    workers: tuple[WorkerState, ...]
    in_flight: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.workers:
            raise ValueError("a snapshot needs at least one worker")
        ids = [w.id for w in self.workers]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate worker ids: {ids}")


class DecisionKind(str, Enum):
    ADMIT = "admit"              # guaranteed under the model; never dropped afterwards
    BEST_EFFORT = "best_effort"  # leftover tokens and memory; may be preempted
    REJECT = "reject"            # with retry_after_s when the cause is transient
    DEFER = "defer"              # stays pending; decided at a later step


@dataclass(frozen=True, slots=True)
class Decision:
    """A change of standing for one request (only changed requests appear in a plan)."""

    request_id: str
    kind: DecisionKind
    lane: Lane
    prefill_worker: str | None = None
    decode_worker: str | None = None
    max_tokens_cap: int | None = None
    retry_after_s: float | None = None
    reason: str = ""


class BatchMode(str, Enum):
    """How a worker forms its batches (see pool_order.form_batch)."""

    SLO = "slo"                    # admitted decode + prefill to a time budget, then best effort
    CHUNKED = "chunked"            # decode + prefill chunks up to a token budget (Sarathi)
    PREFILL_FIRST = "prefill_first"  # whole prompts first, decode when none fit (vLLM v0)
    PREFILL_ONLY = "prefill_only"  # disaggregated prefill worker
    DECODE_ONLY = "decode_only"    # disaggregated decode worker


@dataclass(frozen=True)
class Directive:
    """How one worker forms batches until the next plan.

    `batch_time_s`: the time limit of every batch (the tightest admitted TPOT, or a prefill batch
    time); `token_budget`: prefill tokens per batch for the token-budget modes; `order`: priority
    of queued prefill work (earliest first) for the non-SLO modes; `urgency`: admitted prefill
    by least slack instead of by deadline (see pool_order.urgency_order).
    """

    worker_id: str
    mode: BatchMode
    batch_time_s: float
    token_budget: int
    order: tuple[str, ...] = ()
    urgency: bool = False


class OverloadState(str, Enum):
    NORMAL = "normal"
    DEGRADED = "degraded"
    BATCH_PAUSED = "batch_paused"
    INTERACTIVE_ONLY = "interactive_only"


class FallbackAction(str, Enum):
    CAP_MAX_TOKENS = "cap_max_tokens"
    PAUSE_BACKGROUND = "pause_background"
    REJECT_RETRY_AFTER = "reject_retry_after"


@dataclass(frozen=True)
class Plan:
    """One scheduling step's output. The caller applies decisions and preemptions, then hands each
    worker its directive. `at_risk` lists admitted requests the model can no longer fit (a model
    error or a late stage); they are kept, never dropped. `promote` lists best-effort requests that
    are admitted from now on, on the workers they already use (their standing becomes ADMITTED;
    nothing moves)."""

    now_s: float
    decisions: tuple[Decision, ...]
    directives: tuple[Directive, ...]
    preempt: tuple[str, ...] = ()
    overload: OverloadState = OverloadState.NORMAL
    actions: tuple[FallbackAction, ...] = ()
    at_risk: tuple[str, ...] = ()
    stats: dict = field(default_factory=dict, compare=False)
    promote: tuple[str, ...] = ()

    def decision(self, request_id: str) -> Decision | None:
        for d in self.decisions:
            if d.request_id == request_id:
                return d
        return None

    def directive(self, worker_id: str) -> Directive:
        for d in self.directives:
            if d.worker_id == worker_id:
                return d
        raise KeyError(f"no directive for worker {worker_id}")
