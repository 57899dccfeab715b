"""Scheduler configuration: pydantic at the edge, with the cross-field checks in model_validators."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from router.request import Lane


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LaneConfig(_Strict):
    """`value`: what admitting one request of the lane is worth to the DP."""

    value: float = Field(1.0, gt=0)
    best_effort: bool = True


class TenantLimit(_Strict):
    """Token buckets on requests and prompt tokens, a concurrency cap, and a fairness weight."""

    requests_per_s: float | None = Field(None, gt=0)
    request_burst: float = Field(10.0, ge=1)
    tokens_per_s: float | None = Field(None, gt=0)
    token_burst: float = Field(1e6, ge=1)
    max_concurrent: int | None = Field(None, ge=1)
    weight: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _burst_covers_a_prompt(self) -> "TenantLimit":
        if self.tokens_per_s is not None and self.token_burst < 1:
            raise ValueError("token_burst must allow at least one token")
        return self


class CostConfig(_Strict):
    """Lane cost score = prompt/1k·prompt_weight + max_tokens/1k·output_weight + tool_risk·tool_weight.

    A request whose score exceeds `heavy_above` leaves the interactive lane for `heavy`; above
    `background_above` it goes to `background`; above `reject_above` it is rejected.
    """

    prompt_weight: float = Field(1.0, ge=0)
    output_weight: float = Field(2.0, ge=0)
    tool_weight: float = Field(2.0, ge=0)
    heavy_above: float = Field(16.0, gt=0)
    background_above: float = Field(64.0, gt=0)
    reject_above: float = Field(1e9, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "CostConfig":
        if not self.heavy_above <= self.background_above <= self.reject_above:
            raise ValueError(
                f"cost thresholds must satisfy heavy_above <= background_above <= reject_above, got "
                f"{self.heavy_above}, {self.background_above}, {self.reject_above}")
        return self


class Thresholds(_Strict):
    """Signal levels at which a state is entered: queue wait (s), predicted TTFT / SLO, KV use."""

    queue_wait_s: float = Field(gt=0)
    ttft_ratio: float = Field(gt=0)
    kv_usage: float = Field(gt=0, le=1.0)


class OverloadConfig(_Strict):
    """Escalation thresholds (each state's must be >= the previous one's), recovery and actions."""

    degraded: Thresholds = Thresholds(queue_wait_s=2.0, ttft_ratio=1.0, kv_usage=0.85)
    batch_paused: Thresholds = Thresholds(queue_wait_s=5.0, ttft_ratio=2.0, kv_usage=0.92)
    interactive_only: Thresholds = Thresholds(queue_wait_s=10.0, ttft_ratio=4.0, kv_usage=0.97)
    recover_fraction: float = Field(0.8, gt=0, lt=1)
    recover_hold_s: float = Field(5.0, ge=0)
    degraded_max_tokens: int = Field(512, ge=1)
    retry_after_s: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _escalating(self) -> "OverloadConfig":
        levels = [("degraded", self.degraded), ("batch_paused", self.batch_paused),
                  ("interactive_only", self.interactive_only)]
        for (na, a), (nb, b) in zip(levels, levels[1:]):
            for f in ("queue_wait_s", "ttft_ratio", "kv_usage"):
                if getattr(b, f) < getattr(a, f):
                    raise ValueError(f"overload.{nb}.{f} ({getattr(b, f)}) must be >= "
                                     f"overload.{na}.{f} ({getattr(a, f)})")
        return self


class SizeGateConfig(_Strict):
    """Under overload, admit the cheapest requests first (router.policies.size_gate).

    `window`: recent requests the cost quantile is taken over; `min_quantile`: the lowest q;
    `step_down`: q lost per request the DP turns away; `recover_per_s`: q regained per second
    while it turns none away."""

    enabled: bool = True
    window: int = Field(512, ge=8)
    min_quantile: float = Field(0.5, gt=0, le=1)
    step_down: float = Field(0.01, gt=0, le=1)
    recover_per_s: float = Field(0.1, gt=0)


class SchedulerConfig(_Strict):
    """Everything the SLO scheduler needs besides the performance model."""

    lanes: dict[Lane, LaneConfig] = {Lane.INTERACTIVE: LaneConfig(value=3.0),
                                     Lane.HEAVY: LaneConfig(value=2.0),
                                     Lane.BACKGROUND: LaneConfig(value=1.0)}
    tenants: dict[str, TenantLimit] = {}
    default_tenant: TenantLimit = TenantLimit()
    cost: CostConfig = CostConfig()
    overload: OverloadConfig = OverloadConfig()
    size_gate: SizeGateConfig = SizeGateConfig()
    interactive_kv_reserve: float = Field(0.1, ge=0, lt=1)
    max_prompt_tokens: int = Field(32768, ge=1)
    dp_window: int = Field(24, ge=1, le=256)
    dp_labels: int = Field(8, ge=1, le=64)
    greedy_rounds: int = Field(64, ge=1)
    horizon_s: float = Field(30.0, gt=0)     # DP window: deadlines within now + horizon_s
    idle_batch_time_s: float = Field(0.2, gt=0)
    prefill_batch_time_s: float = Field(0.25, gt=0)   # longest prefill-only batch (disagg.prefill_taus)
    min_prefill_batch_time_s: float = Field(0.025, gt=0)
    safety_margin: float | None = Field(None, ge=0, lt=1)
    fairness: bool = True
    urgency_order: bool = False   # least-slack prefill order instead of EDF (weakens the guarantee)
    promote_best_effort: bool = True   # best effort still on its SLO re-enters the DP (colocated)
    # share of a later stage's worst-case prefill rate reserved from admission on (router.dp): 1
    # guarantees every stage even if all later stages arrive at once; less admits more multi-stage
    # requests, whose later stages then go first (EDF, admitted) but without that guarantee
    later_stage_reserve: float = Field(1.0, ge=0, le=1)
    # colocated batch times: besides each TPOT tier τ, the DP also tries τ·f for these fractions
    # (not below min_batch_time_s); shorter batches cost more per token but give a request more
    # whole batches before its TTFT deadline, and the DP keeps the τ that admits the most value
    batch_time_fractions: tuple[float, ...] = (0.5, 0.25)
    min_batch_time_s: float = Field(0.02, gt=0)

    @field_validator("batch_time_fractions")
    @classmethod
    def _fractions(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < f < 1 for f in v):
            raise ValueError(f"batch_time_fractions must lie in (0, 1), got {list(v)}")
        return v

    @model_validator(mode="after")
    def _lanes_complete(self) -> "SchedulerConfig":
        missing = [lane.value for lane in Lane if lane not in self.lanes]
        if missing:
            raise ValueError(f"lanes is missing {missing}; every lane needs a LaneConfig")
        if self.prefill_batch_time_s > self.horizon_s or self.idle_batch_time_s > self.horizon_s:
            raise ValueError(f"batch times must not exceed horizon_s ({self.horizon_s})")
        if self.min_prefill_batch_time_s > self.prefill_batch_time_s:
            raise ValueError(f"min_prefill_batch_time_s ({self.min_prefill_batch_time_s}) must not exceed "
                             f"prefill_batch_time_s ({self.prefill_batch_time_s})")
        return self

    def tenant(self, name: str) -> TenantLimit:
        return self.tenants.get(name, self.default_tenant)
