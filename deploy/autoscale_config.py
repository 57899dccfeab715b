"""What the autoscaler reads (one window of signals), is configured with, and decides.

``ScaleSignals`` and ``ScaleDecision`` are plain frozen data; ``AutoscaleConfig`` is the pydantic
edge (config files, CLI) with its cross-field checks in one validator.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator


@dataclass(frozen=True)
class ScaleSignals:
    """One measurement window. Attainments are fractions in [0, 1] of the window's stages that met
    the objective; None means the window had no samples (no evidence either way). ``kv_usage`` and
    the busy fractions are pool means in [0, 1]; the replica counts are what runs now."""

    queue_wait_p90_s: float
    ttft_attainment: float | None
    predicted_ttft_attainment: float | None
    tpot_attainment: float | None
    kv_usage: float
    prefill_busy: float
    decode_busy: float
    prefill_replicas: int
    decode_replicas: int


@dataclass(frozen=True)
class ScaleDecision:
    """Target replica counts and why. ``dry_run``: the caller must only log it."""

    prefill_replicas: int
    decode_replicas: int
    current_prefill: int
    current_decode: int
    reasons: tuple[str, ...]
    dry_run: bool

    @property
    def changed(self) -> bool:
        return (self.prefill_replicas, self.decode_replicas) != (self.current_prefill,
                                                                  self.current_decode)


class AutoscaleConfig(BaseModel):
    """Pool bounds, SLO targets and the damping that keeps the pools from flapping.

    Scale-up waits ``upscale_cooldown_s`` since the pool last changed; scale-down needs the pool
    to have been calm (all its signals in the low band) *and* unchanged for
    ``downscale_cooldown_s``, which must be the longer of the two. ``max_step`` bounds one
    scale-up; scale-down always removes one replica. The P:D guard keeps
    ``pd_ratio_min <= prefill/decode <= pd_ratio_max``.

    ``dry_run`` (the default) only logs and reports decisions; False carries them out through
    the cluster's pool resize (``ClusterHandle.resize``: workers started for a scale-up; for a
    scale-down the least-loaded ones drain within the cluster's ``drain_timeout_s``, after which
    their remaining requests are prefilled again elsewhere). Bounds below 1 are impossible: a
    pool never shrinks to zero.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefill_min: int = Field(1, ge=1)
    prefill_max: int = Field(8, ge=1)
    decode_min: int = Field(1, ge=1)
    decode_max: int = Field(8, ge=1)
    target_attainment: float = Field(0.95, gt=0.0, lt=1.0)
    queue_wait_target_s: float = Field(0.5, gt=0.0)
    kv_high: float = Field(0.85, gt=0.0, le=1.0)     # decode scales up at or above this
    kv_low: float = Field(0.5, ge=0.0, le=1.0)       # decode may scale down below this
    busy_low: float = Field(0.3, ge=0.0, le=1.0)     # a pool may scale down below this
    upscale_cooldown_s: float = Field(30.0, ge=0.0)
    downscale_cooldown_s: float = Field(300.0, ge=0.0)
    max_step: int = Field(2, ge=1)
    pd_ratio_min: float = Field(0.25, gt=0.0)
    pd_ratio_max: float = Field(4.0, gt=0.0)
    dry_run: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> "AutoscaleConfig":
        if self.prefill_min > self.prefill_max or self.decode_min > self.decode_max:
            raise ValueError("each pool needs min <= max replicas")
        if self.kv_low >= self.kv_high:
            raise ValueError(f"kv_low {self.kv_low} must be below kv_high {self.kv_high}")
        if self.downscale_cooldown_s < self.upscale_cooldown_s:
            raise ValueError("downscale_cooldown_s must be at least upscale_cooldown_s")
        if self.pd_ratio_min > self.pd_ratio_max:
            raise ValueError("pd_ratio_min must be <= pd_ratio_max")
        feasible = any(self.pd_ratio_min * d - 1e-9 <= p <= self.pd_ratio_max * d + 1e-9
                       for d in range(self.decode_min, self.decode_max + 1)
                       for p in range(self.prefill_min, self.prefill_max + 1))
        if not feasible:
            raise ValueError("no replica counts within the pool bounds satisfy the P:D ratio guard")
        return self
