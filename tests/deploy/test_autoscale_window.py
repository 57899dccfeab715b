"""SignalWindow on hand-made ClusterStats sequences and items; run_autoscaler, TappedBackend and
LiveAutoscaler on a fake backend (no Ray)."""

from __future__ import annotations

import asyncio

import pytest

from cluster.api import (Admitted, ClusterStats, ErrorKind, Failed, Finished, GenerateRequest,
                         LaneStats, StageDone, TokenChunk, WorkerHealth)
from deploy.autoscale import AutoscalePolicy
from deploy.autoscale_config import AutoscaleConfig
from deploy.autoscale_loop import LiveAutoscaler, TappedBackend, run_autoscaler
from deploy.autoscale_window import SignalWindow, percentile

PD = (WorkerHealth("p0", "prefill", True, 0), WorkerHealth("d0", "decode", True, 0),
      WorkerHealth("d1", "decode", True, 0))


def stats(*, waiting=0, admitted=0, best_effort=0, rejected=0, kv=None, busy=None, workers=PD):
    kv = kv if kv is not None else {"p0": 0.9, "d0": 0.2, "d1": 0.4}
    busy = busy if busy is not None else {"p0": 0.5, "d0": 0.1, "d1": 0.3}
    lanes = {"interactive": LaneStats(admitted=admitted, best_effort=best_effort, rejected=rejected)}
    return ClusterStats(0, waiting, lanes, workers, kv, busy, "normal", {}, 0, 0, 0.0, 0, {}, 0, 0)


def stage(ttft_s, tpot_s, ttft_slo_s=1.0, tpot_slo_s=0.1, rid="r"):
    return StageDone(rid, 0, 8, 4, ttft_s, tpot_s, ttft_slo_s, tpot_slo_s,
                     ttft_s <= ttft_slo_s and (tpot_s or 0) <= tpot_slo_s, "length")


def admitted(queue_s, rid="r"):
    return Admitted(rid, "admitted", "p0", "d0", None, queue_s)


def test_items_give_queue_p90_and_attainments_and_stats_give_pool_means():
    w = SignalWindow(0.0)
    w.observe_stats(stats(kv={"p0": 0.9, "d0": 0.2, "d1": 0.4}, busy={"p0": 0.4, "d0": 0.0, "d1": 0.2}))
    for q in (0.01 * i for i in range(1, 11)):          # 0.01 .. 0.10
        w.observe_item(admitted(q))
    for item in (stage(0.5, 0.05), stage(2.0, 0.05), stage(0.5, 0.5), stage(0.5, None),
                 TokenChunk("r", 0, (1,), "a"), Failed("x", ErrorKind.REJECTED, "full", 1.0)):
        w.observe_item(item)
    w.observe_stats(stats(kv={"p0": 0.9, "d0": 0.4, "d1": 0.6}, busy={"p0": 0.8, "d0": 0.2, "d1": 0.4}))
    out = w.close(10.0)
    s = out.signals
    assert s.queue_wait_p90_s == pytest.approx(0.09) and out.queue_wait_source == "items"
    assert s.ttft_attainment == pytest.approx(3 / 4)          # one of four stages over its TTFT
    assert s.tpot_attainment == pytest.approx(2 / 3)          # the 1-token stage has no TPOT
    assert s.kv_usage == pytest.approx((0.3 + 0.5) / 2)       # decode workers only, mean of samples
    assert s.prefill_busy == pytest.approx((0.4 + 0.8) / 2)
    assert s.decode_busy == pytest.approx((0.1 + 0.3) / 2)
    assert (s.prefill_replicas, s.decode_replicas) == (1, 2)
    assert (out.stats_samples, out.stages, out.start_s, out.end_s) == (2, 4, 0.0, 10.0)


def test_predicted_attainment_comes_from_the_decision_counters_across_windows():
    w = SignalWindow(0.0)
    w.observe_stats(stats(admitted=10, best_effort=0))
    w.observe_stats(stats(admitted=14, best_effort=1))
    first = w.close(10.0)
    assert first.signals.predicted_ttft_attainment == pytest.approx(4 / 5) and first.decisions == 5
    w.observe_stats(stats(admitted=20, best_effort=2, rejected=1))     # baseline: the last sample
    second = w.close(20.0)
    assert second.signals.predicted_ttft_attainment == pytest.approx(6 / 8) and second.decisions == 8
    w.observe_stats(stats(admitted=20, best_effort=2, rejected=1))
    assert w.close(30.0).signals.predicted_ttft_attainment is None       # nothing decided


def test_without_items_queue_wait_comes_from_waiting_counts():
    w = SignalWindow(0.0)
    w.observe_stats(stats(admitted=0))
    w.observe_stats(stats(waiting=4, admitted=10))
    w.observe_stats(stats(waiting=8, admitted=20))
    out = w.close(10.0)                      # mean waiting 4, 2 decisions/s → 2 s (Little's law)
    assert out.queue_wait_source == "waiting" and out.signals.queue_wait_p90_s == pytest.approx(2.0)
    assert out.signals.ttft_attainment is None and out.signals.tpot_attainment is None
    w.observe_stats(stats(waiting=3, admitted=20))
    assert w.close(25.0).signals.queue_wait_p90_s == pytest.approx(15.0)   # stalled: whole window
    w.observe_stats(stats(waiting=0, admitted=20))
    assert w.close(30.0).signals.queue_wait_p90_s == 0.0


def test_a_window_without_stats_gives_nothing_and_items_do_not_leak_into_the_next():
    w = SignalWindow(0.0)
    w.observe_item(stage(5.0, 1.0))
    assert w.close(10.0) is None
    w.observe_stats(stats())
    assert w.close(20.0).signals.ttft_attainment is None


def test_colocated_workers_count_in_both_pools():
    workers = (WorkerHealth("c0", "colocated", True, 0), WorkerHealth("c1", "colocated", False, 1))
    w = SignalWindow(0.0)
    w.observe_stats(stats(workers=workers, kv={"c0": 0.2, "c1": 0.6}, busy={"c0": 1.0, "c1": 0.0}))
    s = w.close(5.0).signals
    assert (s.prefill_replicas, s.decode_replicas) == (2, 2)
    assert s.kv_usage == pytest.approx(0.4) and s.prefill_busy == s.decode_busy == pytest.approx(0.5)


def test_percentile_is_nearest_rank():
    assert percentile([3.0], 90) == 3.0
    assert percentile([5, 1, 4, 2, 3], 90) == 5 and percentile([5, 1, 4, 2, 3], 50) == 3


# ── the loop on a fake backend ──────────────────────────────────────────────────────────────
class FakeBackend:
    def __init__(self, fail_every: int = 0):
        self.calls, self.fail_every, self.closed = 0, fail_every, []

    async def stats(self):
        self.calls += 1
        if self.fail_every and self.calls % self.fail_every == 0:
            raise RuntimeError("controller busy")
        return stats(waiting=0, admitted=self.calls)

    async def generate(self, request):
        try:
            yield admitted(0.02, request.request_id)
            yield stage(0.1, 0.01, rid=request.request_id)
            yield Finished(request.request_id, "admitted", 3, 4, "length", True, 0.2, 0)
        finally:
            self.closed.append(request.request_id)

    def model_info(self):
        return None


def test_run_autoscaler_decides_every_interval_survives_failed_samples_and_stops_on_cancel():
    decisions = []

    async def main():
        backend = FakeBackend(fail_every=3)
        policy = AutoscalePolicy(AutoscaleConfig(decode_min=2))
        loop = asyncio.get_running_loop()
        start = loop.time()
        task = asyncio.ensure_future(run_autoscaler(backend, policy, 0.2, lambda w, d: decisions.append((w, d)),
                                                    sample_s=0.04))
        while len(decisions) < 3:
            await asyncio.sleep(0.02)
        elapsed = loop.time() - start
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        assert task.cancelled()
        return backend.calls, elapsed

    calls, elapsed = asyncio.run(asyncio.wait_for(main(), 20))
    assert elapsed >= 3 * 0.2 - 0.01 and calls >= 6         # several samples per window, some failed
    window, decision = decisions[-1]
    assert window.stats_samples >= 1 and window.end_s - window.start_s >= 0.19
    assert decision.dry_run and decision.current_decode == 2
    assert (decision.prefill_replicas, decision.decode_replicas) == (1, 2)


def test_tapped_backend_feeds_every_item_and_closes_the_inner_stream_early():
    seen, backend = [], FakeBackend()
    tapped = TappedBackend(backend, seen.append)

    async def main():
        items = [i async for i in tapped.generate(GenerateRequest("a", (1, 2)))]
        stream = tapped.generate(GenerateRequest("b", (1, 2)))
        await anext(stream)
        await stream.aclose()
        return items

    items = asyncio.run(asyncio.wait_for(main(), 10))
    assert [type(i) for i in items] == [Admitted, StageDone, Finished] and seen[:3] == items
    assert backend.closed == ["a", "b"] and len(seen) == 4


def test_live_autoscaler_in_dry_run_records_and_never_resizes():
    resized = []

    async def main():
        auto = LiveAutoscaler(FakeBackend(), AutoscaleConfig(), 0.15, sample_s=0.05,
                              resize=lambda pool, n: resized.append((pool, n)))
        async for _ in auto.backend.generate(GenerateRequest("a", (1, 2))):
            pass
        auto.start()
        for _ in range(500):
            if auto.windows >= 2:
                break
            await asyncio.sleep(0.02)
        await auto.stop()
        return auto.report()

    report = asyncio.run(asyncio.wait_for(main(), 10))
    assert report["dry_run"] is True and report["windows"] >= 2 and not report["running"]
    first = report["decisions"][0]
    assert first["stages"] == 1 and first["signals"]["ttft_attainment"] == 1.0
    assert first["decision"]["dry_run"] is True and first["applied"] is False
    assert resized == []


def test_live_autoscaler_refuses_to_act_without_a_resize_callback():
    with pytest.raises(ValueError, match="dry_run"):
        LiveAutoscaler(FakeBackend(), AutoscaleConfig(dry_run=False), 10.0)


def test_live_autoscaler_awaits_an_async_resize_and_reports_results_and_errors(monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setattr("ray.autoscaler.sdk.request_resources", lambda **kw: None)
    calls = []

    async def resize(pool, n):
        calls.append((pool, n))
        await asyncio.sleep(0.01)
        if pool == "prefill":
            raise RuntimeError("no GPU free")
        return {"role": pool, "after": n}

    async def main():
        config = AutoscaleConfig(prefill_min=2, decode_min=3, upscale_cooldown_s=0, dry_run=False)
        auto = LiveAutoscaler(FakeBackend(), config, 0.1, sample_s=0.05, resize=resize)
        auto.start()
        for _ in range(500):
            if auto.windows >= 1:
                break
            await asyncio.sleep(0.02)
        await auto.stop()
        return auto.report()

    report = asyncio.run(asyncio.wait_for(main(), 10))
    first = report["decisions"][0]
    assert report["dry_run"] is False and first["applied"] is True
    assert calls[:2] == [("prefill", 2), ("decode", 3)]          # decode resized despite prefill's error
    assert first["resized"] == [{"role": "decode", "after": 3}]
    assert len(first["errors"]) == 1 and "no GPU free" in first["errors"][0]
