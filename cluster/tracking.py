"""One live request as the controller follows it: tokens, stages, timings, the scheduler's view.

No Ray and no asyncio here: the controller calls these methods as things happen and forwards
the stream items they return. Times are the controller's ``time.monotonic()``; the scheduler's
view (``state``) counts from ``clock0`` instead (the controller's origin, what ``Snapshot.now_s``
and ``request.arrival_s`` count from)::

    t = Tracked(req, request, now, clock0)    # router Request built by the controller
    t.admitted(decision, now)  -> Admitted
    t.tokens([ids], text, now) -> TokenChunk  # the first call of a stage sets its TTFT
    t.stage_finished(reason, now) -> StageDone; then t.has_next_stage / t.begin_next_stage(now)
    t.finished(now) -> Finished
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

from cluster.api import Admitted, Finished, GenerateRequest, StageDone, TokenChunk
from router.plan import Decision, DecisionKind
from router.request import Admission, Phase, Request, RequestState

_ADMISSION = {DecisionKind.ADMIT: Admission.ADMITTED, DecisionKind.BEST_EFFORT: Admission.BEST_EFFORT}


class Where(str, Enum):
    PENDING = "pending"        # waiting for the scheduler's decision
    QUEUED = "queued"          # in a prefill worker's queue
    PREFILL = "prefill"        # inside a prefill call
    HANDOFF = "handoff"        # KV moving to the decode worker
    DECODE = "decode"          # running on a decode worker
    TOOL = "tool"              # between stages
    DONE = "done"


@dataclass
class Tracked:
    """Mutable per-request record owned by the controller (one asyncio task touches it at a time)."""

    req: GenerateRequest
    request: Request
    arrival: float
    clock0: float = 0.0                            # monotonic time of the scheduler clock's zero
    state: RequestState = field(init=False)
    tokens: list[int] = field(init=False)          # the whole conversation: prompt, outputs, appends
    where: Where = Where.PENDING
    stage: int = 0
    stage_start: int = 0                           # len(tokens) when the stage's prompt ended
    stage_arrival: float = 0.0
    first_token_at: float | None = None
    last_token_at: float | None = None
    stage_outputs: int = 0
    completion_tokens: int = 0
    stage_results: list[StageDone] = field(default_factory=list)
    admission: str = "pending"
    prefill_worker: str | None = None
    decode_worker: str | None = None
    max_tokens_cap: int | None = None
    retries: int = 0
    handoff_s: float = 0.0
    cancelled: bool = False

    def __post_init__(self) -> None:
        self.state = RequestState(self.request)
        self.tokens = list(self.req.prompt_token_ids)
        self.stage_start = len(self.tokens)
        self.stage_arrival = self.arrival

    @property
    def id(self) -> str:
        return self.req.request_id

    # ---- the scheduler's decision ------------------------------------------------------------
    def admitted(self, d: Decision, now: float) -> Admitted:
        self.admission = "admitted" if d.kind is DecisionKind.ADMIT else "best_effort"
        self.prefill_worker, self.decode_worker = d.prefill_worker, d.decode_worker
        self.max_tokens_cap = d.max_tokens_cap
        self.state = replace(self.state, admission=_ADMISSION[d.kind], prefill_worker=d.prefill_worker,
                             decode_worker=d.decode_worker, max_tokens_cap=d.max_tokens_cap)
        self.where = Where.QUEUED
        return Admitted(self.id, self.admission, d.prefill_worker or "", d.decode_worker or "",
                        d.max_tokens_cap, now - self.arrival)

    def promoted(self) -> None:
        """The scheduler admitted this best-effort request (Plan.promote): its SLO is guaranteed
        from now on; nothing it runs changes."""
        self.admission = "admitted"
        self.state = replace(self.state, admission=Admission.ADMITTED)

    # ---- what a stage runs -------------------------------------------------------------------
    def stage_max_tokens(self) -> int:
        n = self.request.stages[self.stage].max_output_tokens
        return n if self.max_tokens_cap is None else max(1, min(n, self.max_tokens_cap))

    def params(self) -> dict:
        """Sampling params for what is left of the current stage (after ``stage_outputs`` tokens)."""
        p = dict(self.req.params)
        p["max_tokens"] = max(1, self.stage_max_tokens() - self.stage_outputs)
        return p

    def prompt_for_prefill(self) -> list[int]:
        """Tokens a (re-)prefill runs on: the conversation so far (outputs included)."""
        return list(self.tokens)

    # ---- progress ------------------------------------------------------------------------------
    def tokens_out(self, ids: list[int], text: str, now: float) -> TokenChunk:
        first = self.first_token_at is None
        if first:
            self.first_token_at = now
        self.last_token_at = now
        self.tokens.extend(ids)
        self.stage_outputs += len(ids)
        self.completion_tokens += len(ids)
        r = self.state
        if r.phase is not Phase.DECODING:     # the stage's first token, or the first after a re-prefill
            self.state = replace(r, phase=Phase.DECODING, prefilled=r.current.input_tokens,
                                 decoded=self.stage_outputs, context_tokens=len(self.tokens),
                                 first_token_s=self.first_token_at - self.clock0)
        else:
            self.state = replace(r, decoded=r.decoded + len(ids), context_tokens=len(self.tokens))
        return TokenChunk(self.id, self.stage, tuple(ids), text)

    def stage_finished(self, reason: str, now: float) -> StageDone:
        slo = self.request.stages[self.stage].slo
        first = self.first_token_at if self.first_token_at is not None else now
        ttft = first - self.stage_arrival
        n = self.stage_outputs
        tpot = (self.last_token_at - first) / (n - 1) if n > 1 and self.last_token_at is not None else None
        met = ttft <= slo.ttft_s and (tpot is None or tpot <= slo.tpot_s)
        done = StageDone(self.id, self.stage, self.request.stages[self.stage].input_tokens, n, ttft, tpot,
                         slo.ttft_s, slo.tpot_s, met, reason)
        self.stage_results.append(done)
        more = self.has_next_stage
        self.where = Where.TOOL if more else Where.DONE
        self.state = replace(self.state, phase=Phase.TOOL_WAIT if more else Phase.DONE)
        return done

    @property
    def has_next_stage(self) -> bool:
        return self.stage + 1 < len(self.request.stages)

    def begin_next_stage(self, now: float) -> list[int]:
        """Append the next stage's tokens; returns the whole conversation to continue on."""
        self.stage += 1
        self.tokens.extend(self.req.stages[self.stage - 1].append_token_ids)
        self.stage_start = len(self.tokens)
        self.stage_arrival = now
        self.first_token_at = self.last_token_at = None
        self.stage_outputs = 0
        self.state = replace(self.state, stage=self.stage, stage_arrival_s=now - self.clock0, phase=Phase.WAITING,
                             prefilled=0,
                             decoded=0, context_tokens=len(self.tokens), first_token_s=None)
        return list(self.tokens)

    def restart_prefill(self, failure: bool = True) -> None:
        """Prefill again from the conversation so far (tokens already streamed stay streamed).
        ``failure``: the KV was lost (worker death, failed transfer) and this counts as a retry;
        False for a policy move (preemption, a stage whose worker is gone before it started)."""
        self.retries += int(failure)
        self.where = Where.QUEUED
        self.state = replace(self.state, phase=Phase.WAITING, prefilled=0)

    def finished(self, now: float) -> Finished:
        self.where = Where.DONE
        last = self.stage_results[-1] if self.stage_results else None
        return Finished(self.id, self.admission, len(self.req.prompt_token_ids), self.completion_tokens,
                        last.finish_reason if last else "abort", all(s.slo_met for s in self.stage_results),
                        now - self.arrival, self.retries, self.handoff_s)
