"""Configuration errors, KV sizing and transfer, SLO presets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from router.config import CostConfig, OverloadConfig, SchedulerConfig, Thresholds
from router.kv_model import LLAMA2_7B, LLAMA3_8B, Link, kv_capacity_tokens
from router.request import SLO, Lane, Request, Stage
from router.slo import SloSpec, stage_slos


def test_overload_thresholds_must_escalate():
    with pytest.raises(ValidationError, match=r"overload.batch_paused.kv_usage .* must be >= overload.degraded.kv_usage"):
        OverloadConfig(degraded=Thresholds(queue_wait_s=1, ttft_ratio=1, kv_usage=0.9),
                       batch_paused=Thresholds(queue_wait_s=2, ttft_ratio=2, kv_usage=0.8))


def test_cost_thresholds_must_be_ordered():
    with pytest.raises(ValidationError, match="heavy_above <= background_above"):
        CostConfig(heavy_above=50, background_above=10)


def test_every_lane_needs_a_config_and_unknown_fields_are_refused():
    with pytest.raises(ValidationError, match="lanes is missing"):
        SchedulerConfig(lanes={Lane.INTERACTIVE: {"value": 1.0}})
    with pytest.raises(ValidationError, match="extra"):
        SchedulerConfig(dp_windw=3)
    with pytest.raises(ValidationError, match="must not exceed horizon_s"):
        SchedulerConfig(horizon_s=0.1, prefill_batch_time_s=0.5)


def test_kv_bytes_per_token_from_model_numbers():
    assert LLAMA3_8B.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 131072
    assert LLAMA2_7B.kv_bytes_per_token == 4 * LLAMA3_8B.kv_bytes_per_token
    assert 400_000 < kv_capacity_tokens(LLAMA3_8B, 80 * 2**30) < 500_000
    with pytest.raises(ValueError, match="does not fit"):
        kv_capacity_tokens(LLAMA3_8B, 8 * 2**30)


def test_transfer_time_from_bytes_and_bandwidth():
    link = Link(bandwidth_bytes_s=25e9, latency_s=0.001)
    assert abs(link.transfer_s(LLAMA3_8B, 1000) - (0.001 + 131072e3 / 25e9)) < 1e-12
    with pytest.raises(ValueError):
        Link(0.0)


def test_relative_and_absolute_slos():
    prefill = lambda n: n * 1e-4  # noqa: E731
    assert SloSpec(0.05, ttft_slowdown=5).resolve(1000, prefill) == SLO(0.5, 0.05)
    assert SloSpec(0.05, ttft_s=2.0).resolve(1000, prefill) == SLO(2.0, 0.05)
    with pytest.raises(ValueError, match="exactly one"):
        SloSpec(0.05, ttft_slowdown=5, ttft_s=1.0)


def test_scenario_presets_match_slos_serve():
    prefill = lambda n: 0.1  # noqa: E731
    assert stage_slos("chatbot", [100], prefill) == [SLO(0.5, 0.1)]
    assert stage_slos("coding", [100], prefill) == [SLO(0.5, 0.05)]
    assert stage_slos("summarization", [100], prefill)[0].ttft_s == pytest.approx(0.3)
    assert [s.tpot_s for s in stage_slos("reasoning", [100, 0], prefill)] == [0.05, 0.1]
    assert [s.tpot_s for s in stage_slos("tool_calling", [100, 50, 50], prefill)] == [0.05, 0.05, 0.1]
    assert stage_slos("mixed", [100], prefill, kind="coding") == [SLO(0.5, 0.05)]
    with pytest.raises(ValueError, match="per-request kind"):
        stage_slos("mixed", [100], prefill)


def test_request_validation():
    with pytest.raises(ValueError, match="no stages"):
        Request("x", "t", Lane.INTERACTIVE, 0.0, ())
    with pytest.raises(ValueError):
        Stage(10, 0, SLO(1, 1))
    with pytest.raises(ValueError):
        SLO(0, 1)
