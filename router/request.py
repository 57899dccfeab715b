"""Requests, stages, lanes and SLOs: the plain data the scheduler reasons about.

A request is a chain of stages. Stage 0 carries the prompt; a later stage carries the tokens
appended to the conversation (a tool result, the next user turn) and arrives `tool_delay_s` after
the previous stage's last token. Every stage has its own TTFT and TPOT SLO:

    arrival ──prefill──▶ first token ──decode (≤ tpot per token)──▶ last token
    │◀──── ttft_s ────▶│                                             │◀ tool_delay ▶ next stage ...

All times are seconds on the caller's clock (a simulator's fake clock or the controller's
monotonic clock); the scheduler never reads a wall clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from functools import cached_property


class Lane(str, Enum):
    """Traffic lanes. `interactive` owns the KV reserve; `background` is paused first."""

    INTERACTIVE = "interactive"
    HEAVY = "heavy"
    BACKGROUND = "background"


@dataclass(frozen=True)
class SLO:
    """Absolute per-stage objectives in seconds: time to first token and time per output token."""

    ttft_s: float
    tpot_s: float

    def __post_init__(self) -> None:
        if not (self.ttft_s > 0 and self.tpot_s > 0):
            raise ValueError(f"SLO needs positive ttft_s and tpot_s, got {self.ttft_s}, {self.tpot_s}")


@dataclass(frozen=True)
class Stage:
    """One prefill-then-decode step of a request.

    `input_tokens` is the prompt (stage 0) or the appended tokens (later stages).
    `max_output_tokens` bounds decoding and is what memory and time are reserved for;
    `expected_output_tokens` (optional) is only a hint for best-effort ordering.
    """

    input_tokens: int
    max_output_tokens: int
    slo: SLO
    tool_delay_s: float = 0.0
    expected_output_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.input_tokens < 0 or self.max_output_tokens < 1:
            raise ValueError(
                f"stage needs input_tokens >= 0 and max_output_tokens >= 1, "
                f"got {self.input_tokens}, {self.max_output_tokens}")
        if self.tool_delay_s < 0:
            raise ValueError(f"tool_delay_s must be >= 0, got {self.tool_delay_s}")


@dataclass(frozen=True)
class Request:
    """An immutable client request. `tool_risk` in [0, 1] feeds the lane cost score."""

    id: str
    tenant: str
    lane: Lane
    arrival_s: float
    stages: tuple[Stage, ...]
    tool_risk: float = 0.0

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError(f"request {self.id} has no stages")
        if self.stages[0].input_tokens < 1:
            raise ValueError(f"request {self.id}: the first stage needs a prompt of >= 1 token")

    @property
    def prompt_tokens(self) -> int:
        return self.stages[0].input_tokens

    @property
    def total_tokens(self) -> int:
        """Every token the request's KV cache can hold at the end: what admission reserves."""
        return sum(s.input_tokens + s.max_output_tokens for s in self.stages)

    @property
    def tightest_tpot_s(self) -> float:
        return min(s.slo.tpot_s for s in self.stages)


class Phase(str, Enum):
    """Where a request is in its current stage."""

    WAITING = "waiting"        # stage arrived, prefill not finished
    DECODING = "decoding"      # first token of the stage emitted
    TOOL_WAIT = "tool_wait"    # stage finished, the next stage has not arrived yet
    DONE = "done"


class Admission(str, Enum):
    """The scheduler's standing decision for a request."""

    PENDING = "pending"          # not decided yet
    ADMITTED = "admitted"        # SLOs guaranteed under the model; never dropped
    BEST_EFFORT = "best_effort"  # runs on leftovers, may be preempted, reported to the client
    REJECTED = "rejected"


@dataclass(frozen=True)
class RequestState:
    """A request as the caller (simulator or controller) sees it now.

    `prefilled` counts input tokens of the current stage already in the KV cache; `decoded` counts
    tokens emitted in the current stage (the first token is emitted by the last prefill chunk).
    `context_tokens` is everything in the KV cache. `max_tokens_cap` is a fallback-action cap on
    every stage's output (None: uncapped). `first_token_s`: when the current stage emitted its first
    token (None before it and at the next stage; kept across a preemption, since the tokens
    already streamed stay streamed and the stage's TPOT counts from it).
    """

    request: Request
    stage: int = 0
    stage_arrival_s: float | None = None
    phase: Phase = Phase.WAITING
    prefilled: int = 0
    decoded: int = 0
    context_tokens: int = 0
    admission: Admission = Admission.PENDING
    prefill_worker: str | None = None
    decode_worker: str | None = None
    max_tokens_cap: int | None = None
    first_token_s: float | None = None

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def current(self) -> Stage:
        return self.request.stages[self.stage]

    @property
    def arrived_s(self) -> float:
        """When the current stage arrived (stage 0: the request's arrival)."""
        return self.request.arrival_s if self.stage_arrival_s is None else self.stage_arrival_s

    @property
    def ttft_deadline_s(self) -> float:
        return self.arrived_s + self.current.slo.ttft_s

    def max_output(self, stage: int) -> int:
        cap = self.max_tokens_cap
        n = self.request.stages[stage].max_output_tokens
        return n if cap is None else max(1, min(n, cap))

    @property
    def remaining_prefill(self) -> int:
        if self.phase is not Phase.WAITING:
            return 0
        return max(0, self.current.input_tokens - self.prefilled)

    @property
    def remaining_decode(self) -> int:
        """Tokens still to emit in the current stage (after the first one, which prefill emits)."""
        if self.phase is Phase.DECODING:
            return max(0, self.max_output(self.stage) - self.decoded)
        if self.phase is Phase.WAITING:
            return self.max_output(self.stage)
        return 0

    @cached_property
    def reserved_tokens(self) -> int:
        """KV tokens this request may hold by its end (what admission reserves; cached: a state is
        immutable and `replace` builds a new one)."""
        return sum(s.input_tokens + self.max_output(i) for i, s in enumerate(self.request.stages))

    @cached_property
    def tightest_remaining_tpot_s(self) -> float:
        first = self.stage if self.phase is not Phase.TOOL_WAIT else self.stage + 1
        stages = self.request.stages[first:] or self.request.stages[-1:]
        return min(s.slo.tpot_s for s in stages)

    @property
    def future_stages(self) -> tuple[Stage, ...]:
        return self.request.stages[self.stage + 1:]

