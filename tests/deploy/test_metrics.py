"""ServingMetrics: real stream items and ClusterStats in, parsed Prometheus exposition out."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from cluster.api import (Admitted, ClusterStats, ErrorKind, Failed, Finished, LaneStats, StageDone,
                         TokenChunk, WorkerHealth)
from deploy.metrics import ServingMetrics
from router.request import Lane

MODEL = "tiny"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def scrape(metrics: ServingMetrics) -> dict[tuple[str, frozenset], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def value(samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def stats(**overrides) -> ClusterStats:
    base = dict(
        running=3, waiting=2,
        lanes={"interactive": LaneStats(admitted=5, best_effort=1, rejected=2, queued=1),
               "background": LaneStats(admitted=1, rejected=4)},
        workers=(WorkerHealth("p0", "prefill", True, 0), WorkerHealth("d0", "decode", False, 2)),
        kv_usage={"p0": 0.2, "d0": 0.6}, busy_fraction={"p0": 0.9, "d0": 0.4},
        overload_state="degraded", fallback_actions={"cap_max_tokens": 3},
        kv_transfer_bytes=4096, kv_transfers=2, kv_transfer_seconds=0.5, retries=1,
        tenants_running={"acme": 2, "beta": 1}, prompt_tokens=120, generation_tokens=340)
    base.update(overrides)
    return ClusterStats(**base)


def stream(m: ServingMetrics, clock: FakeClock, rid="r1", lane=Lane.INTERACTIVE, tenant="acme"):
    """queue 0.2s, admitted at t=100, tokens at +0.3 (1), +0.4 (2 tokens), then stage 1 after a
    tool delay: first token at +5.0, next at +5.1."""
    def feed(item):
        m.observe_item(item, MODEL, lane, tenant)

    feed(Admitted(rid, "admitted", "p0", "d0", None, queue_s=0.2))
    clock.now += 0.3
    feed(TokenChunk(rid, 0, (1,), "a"))
    clock.now += 0.1
    feed(TokenChunk(rid, 0, (2, 3), "bc"))
    feed(StageDone(rid, 0, 8, 3, ttft_s=0.5, tpot_s=0.05, ttft_slo_s=1.0, tpot_slo_s=0.1,
                   slo_met=True, finish_reason="stop"))
    clock.now += 4.6
    feed(TokenChunk(rid, 1, (4,), "d"))
    clock.now += 0.1
    feed(TokenChunk(rid, 1, (5,), "e"))
    feed(StageDone(rid, 1, 4, 2, ttft_s=2.0, tpot_s=0.1, ttft_slo_s=1.0, tpot_slo_s=0.2,
                   slo_met=False, finish_reason="stop"))
    feed(Finished(rid, "admitted", 12, 5, "stop", slo_met=False, e2e_s=5.3, retries=0))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics(clock) -> ServingMetrics:
    return ServingMetrics(MODEL, clock=clock)


def test_front_latencies_use_vllm_names_and_the_front_clock(metrics, clock):
    stream(metrics, clock)
    s = scrape(metrics)
    m = {"model_name": MODEL}
    assert value(s, "vllm:time_to_first_token_seconds_sum", **m) == pytest.approx(0.5)  # 0.2 + 0.3
    assert value(s, "vllm:time_to_first_token_seconds_count", **m) == 1
    # gaps: 2 tokens 0.1s after the first (0.05 each) and stage 1's second token (0.1);
    # stage 1's first token follows a tool delay and is no gap
    assert value(s, "vllm:inter_token_latency_seconds_count", **m) == 3
    assert value(s, "vllm:inter_token_latency_seconds_sum", **m) == pytest.approx(0.2)
    assert value(s, "vllm:request_time_per_output_token_seconds_sum", **m) == pytest.approx(0.2 / 3)
    assert value(s, "vllm:e2e_request_latency_seconds_sum", **m) == pytest.approx(5.3)
    assert value(s, "vllm:e2e_request_latency_seconds_bucket", le="10.0", **m) == 1
    assert value(s, "vllm:request_success_total", finished_reason="stop", **m) == 1
    assert len(metrics._timer) == 0


def test_lane_series_count_queue_wait_stages_and_slo_checks(metrics, clock):
    stream(metrics, clock)
    s = scrape(metrics)
    lane = {"lane": "interactive"}
    assert value(s, "tandem_queue_wait_seconds_sum", **lane) == pytest.approx(0.2)
    assert value(s, "tandem_stage_ttft_seconds_count", **lane) == 2
    assert value(s, "tandem_stage_tpot_seconds_sum", **lane) == pytest.approx(0.15)
    assert value(s, "tandem_slo_stages_total", stage="0", outcome="met", **lane) == 1
    assert value(s, "tandem_slo_stages_total", stage="1", outcome="missed", **lane) == 1
    assert value(s, "tandem_slo_checks_total", slo="ttft", outcome="missed", **lane) == 1
    assert value(s, "tandem_slo_checks_total", slo="tpot", outcome="met", **lane) == 2
    assert value(s, "tandem_slo_attainment_ratio", stage="0", **lane) == 1.0
    assert value(s, "tandem_tenant_requests_total", tenant="acme", outcome="finished") == 1


def test_attainment_ratio_tracks_met_over_finished_stages(metrics, clock):
    for i, met in enumerate([True, True, False, True]):
        metrics.observe_item(StageDone(f"r{i}", 0, 1, 1, 0.1, None, 1.0, 0.1, met, "stop"),
                             MODEL, "heavy", "t")
    s = scrape(metrics)
    assert value(s, "tandem_slo_attainment_ratio", lane="heavy", stage="0") == 0.75


def test_stage_labels_are_capped(metrics):
    item = StageDone("r", 9, 1, 1, 0.1, None, 1.0, 0.1, True, "stop")
    metrics.observe_item(item, MODEL, "heavy", "t")
    s = scrape(metrics)
    assert value(s, "tandem_slo_stages_total", lane="heavy", stage="4+", outcome="met") == 1


def test_failed_and_discarded_requests_release_their_state(metrics, clock):
    metrics.observe_item(Admitted("a", "admitted", "p0", "d0", None, 0.0), MODEL, "heavy", "t")
    metrics.observe_item(Failed("a", ErrorKind.TIMEOUT, "late"), MODEL, "heavy", "t")
    metrics.observe_item(Failed("b", ErrorKind.REJECTED, "busy", 1.0), MODEL, "heavy", "t")
    metrics.observe_item(Admitted("c", "admitted", "p0", "d0", None, 0.0), MODEL, "heavy", "t")
    metrics.discard("c")
    assert len(metrics._timer) == 0
    s = scrape(metrics)
    assert value(s, "tandem_tenant_requests_total", tenant="t", outcome="timeout") == 1
    assert value(s, "tandem_tenant_requests_total", tenant="t", outcome="rejected") == 1
    assert value(s, "vllm:e2e_request_latency_seconds_count", model_name=MODEL) is None


def test_cluster_stats_fill_gauges_and_counters(metrics):
    metrics.update_from_stats(stats())
    s = scrape(metrics)
    m = {"model_name": MODEL}
    assert value(s, "vllm:num_requests_running", **m) == 3
    assert value(s, "vllm:num_requests_waiting", **m) == 2
    assert value(s, "vllm:kv_cache_usage_perc", **m) == pytest.approx(0.4)
    assert value(s, "vllm:prompt_tokens_total", **m) == 120
    assert value(s, "vllm:generation_tokens_total", **m) == 340
    decisions = "tandem_admission_decisions_total"
    assert value(s, decisions, lane="interactive", decision="best_effort") == 1
    assert value(s, decisions, lane="background", decision="rejected") == 4
    assert value(s, "tandem_lane_queued", lane="interactive") == 1
    assert value(s, "tandem_fallback_activations_total", action="cap_max_tokens") == 3
    assert value(s, "tandem_kv_handoff_bytes_total") == 4096
    assert value(s, "tandem_kv_handoffs_total") == 2
    assert value(s, "tandem_kv_handoff_seconds_total") == 0.5
    assert value(s, "tandem_request_retries_total") == 1
    assert value(s, "tandem_worker_busy_fraction", worker="p0", role="prefill") == 0.9
    assert value(s, "tandem_worker_busy_fraction", worker="d0", role="decode") == 0.4
    assert value(s, "tandem_worker_kv_usage_ratio", worker="d0", role="decode") == 0.6
    assert value(s, "tandem_worker_healthy", worker="d0", role="decode") == 0
    assert value(s, "tandem_worker_restarts_total", worker="d0", role="decode") == 2
    assert value(s, "tandem_tenant_running", tenant="acme") == 2


def test_overload_state_gauge_marks_only_the_current_state(metrics):
    metrics.update_from_stats(stats(overload_state="degraded"))
    metrics.update_from_stats(stats(overload_state="batch_paused", size_gate_quantile=0.75))
    s = scrape(metrics)
    assert value(s, "tandem_overload_state", state="batch_paused") == 1
    assert value(s, "tandem_size_gate_quantile") == 0.75
    assert value(s, "tandem_overload_state", state="degraded") == 0
    assert value(s, "tandem_overload_state", state="normal") == 0


def test_cumulative_counters_only_move_forward_across_a_reset(metrics):
    metrics.update_from_stats(stats(kv_transfer_bytes=1000, generation_tokens=500))
    metrics.update_from_stats(stats(kv_transfer_bytes=10, generation_tokens=20))  # restart
    s = scrape(metrics)
    assert value(s, "tandem_kv_handoff_bytes_total") == 1000
    assert value(s, "vllm:generation_tokens_total", model_name=MODEL) == 500
    metrics.update_from_stats(stats(kv_transfer_bytes=1500, generation_tokens=800))
    s = scrape(metrics)
    assert value(s, "tandem_kv_handoff_bytes_total") == 1500
    assert value(s, "vllm:generation_tokens_total", model_name=MODEL) == 800


def test_gone_tenants_and_workers_stop_being_exported(metrics):
    metrics.update_from_stats(stats())
    metrics.update_from_stats(stats(tenants_running={"acme": 1}, busy_fraction={"p0": 0.5},
                                    kv_usage={"p0": 0.1},
                                    workers=(WorkerHealth("p0", "prefill", True, 0),)))
    s = scrape(metrics)
    assert value(s, "tandem_tenant_running", tenant="beta") is None
    assert value(s, "tandem_tenant_running", tenant="acme") == 1
    assert value(s, "tandem_worker_busy_fraction", worker="d0", role="decode") is None
    assert value(s, "tandem_worker_healthy", worker="d0", role="decode") is None


def test_each_instance_owns_its_registry(clock):
    a, b = ServingMetrics("a", clock=clock), ServingMetrics("b", clock=clock)
    a.update_from_stats(stats())
    assert value(scrape(b), "vllm:num_requests_running", model_name="b") is None
    assert REGISTRY.get_sample_value("vllm:num_requests_running", {"model_name": "a"}) is None
