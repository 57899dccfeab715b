"""AutoscalePolicy on replayed load sequences, the P:D guard, bounds, and the Ray adapter."""

from __future__ import annotations

import asyncio
import logging

import pytest
from pydantic import ValidationError

from deploy.autoscale import AutoscaleConfig, AutoscalePolicy, ScaleSignals, ratio_guard
from deploy.autoscale_ray import apply

WINDOW_S = 10.0


def config(**kw) -> AutoscaleConfig:
    base = dict(prefill_min=1, prefill_max=8, decode_min=1, decode_max=8, target_attainment=0.95,
                queue_wait_target_s=0.5, upscale_cooldown_s=30, downscale_cooldown_s=300,
                max_step=2, pd_ratio_min=0.25, pd_ratio_max=4.0, dry_run=False)
    return AutoscaleConfig(**{**base, **kw})


def signals(p: int, d: int, **kw) -> ScaleSignals:
    """A healthy window that is not idle enough to shrink anything."""
    base = dict(queue_wait_p90_s=0.1, ttft_attainment=0.99, predicted_ttft_attainment=0.99,
                tpot_attainment=0.99, kv_usage=0.6, prefill_busy=0.5, decode_busy=0.5,
                prefill_replicas=p, decode_replicas=d)
    return ScaleSignals(**{**base, **kw})


def prefill_load(load: float, p: int, d: int) -> ScaleSignals:
    """Prefill demand of ``load`` replicas: queue wait, busy and missed TTFTs grow with
    load / replicas (attainment 0.95, the target, at load = replicas)."""
    ratio = load / p
    calm = ratio < 0.3
    return signals(p, d, queue_wait_p90_s=0.5 * ratio, prefill_busy=min(ratio, 1.0),
                   ttft_attainment=0.99 if ratio <= 1 else max(0.0, 1 - 0.05 * ratio),
                   decode_busy=0.1 if calm else 0.5, kv_usage=0.2 if calm else 0.6)


def replay(policy, load_at, p=2, d=2, until_s=1200.0):
    """Run one decision per window, applying each; returns [(t, p, d, decision)]."""
    out, t = [], 0.0
    while t <= until_s:
        decision = policy.decide(load_at(t, p, d), t)
        p, d = decision.prefill_replicas, decision.decode_replicas
        out.append((t, p, d, decision))
        t += WINDOW_S
    return out


def changes(history, pool=1):
    return [(t, row[pool] - prev[pool]) for prev, row in zip(history, history[1:])
            if row[pool] != prev[pool] for t in [row[0]]]


def test_burst_scales_prefill_up_fast_and_down_only_after_the_long_cooldown():
    def burst(t, p, d):   # 60 s burst of 8 replicas' worth, then idle
        return prefill_load(8.0 if 10 <= t < 70 else 0.2, p, d)

    history = replay(AutoscalePolicy(config()), burst, until_s=1400)
    ups = [(t, n) for t, n in changes(history) if n > 0]
    downs = [(t, n) for t, n in changes(history) if n < 0]
    assert ups[0] == (10.0, 2)                         # first burst window, a full max_step
    assert all(b - a >= 30 for (a, _), (b, _) in zip(ups, ups[1:]))
    assert max(row[1] for row in history) == 6          # 10 s, 40 s: +2 +2 before it ended
    assert downs and downs[0][0] >= 70 + 300            # calm since 70 s, held for 300 s
    assert all(n == -1 for _, n in downs)
    assert all(b - a >= 300 for (a, _), (b, _) in zip(downs, downs[1:]))
    assert all(n <= 0 for _, n in changes(history, pool=2))   # decode never grew


def test_slow_ramp_grows_prefill_one_replica_at_a_time():
    def ramp(t, p, d):    # 1 → 4 replicas' worth over 900 s
        return prefill_load(1.0 + 3.0 * min(t, 900) / 900, p, d)

    history = replay(AutoscalePolicy(config()), ramp, until_s=1000)
    steps = changes(history)
    assert [n for _, n in steps] == [1, 1]              # 2 → 3 → 4
    assert history[-1][1] == 4


def test_oscillating_load_does_not_flap():
    def oscillate(t, p, d):   # 60 s high, 60 s idle, repeatedly
        return prefill_load(3.0 if (t // 60) % 2 == 0 else 0.3, p, d)

    history = replay(AutoscalePolicy(config()), oscillate, p=1, d=1, until_s=1800)
    steps = changes(history)
    assert all(n > 0 for _, n in steps)                 # only grew: never shrank between peaks
    assert history[-1][1] == 3 and len(steps) <= 2


def test_kv_and_tpot_trouble_scale_decode_not_prefill():
    policy = AutoscalePolicy(config())
    decision = policy.decide(signals(2, 2, kv_usage=0.95, tpot_attainment=0.7), 0.0)
    assert (decision.prefill_replicas, decision.decode_replicas) == (2, 4)
    assert any(r.startswith("decode +2") for r in decision.reasons)


def test_ratio_guard_caps_an_upscale_and_cancels_a_downscale():
    policy = AutoscalePolicy(config(pd_ratio_min=0.5, pd_ratio_max=2.0))
    up = policy.decide(signals(4, 2, queue_wait_p90_s=5.0), 0.0)
    assert (up.prefill_replicas, up.decode_replicas) == (4, 2)
    assert any("P:D guard" in r for r in up.reasons)

    policy = AutoscalePolicy(config(pd_ratio_min=0.5, pd_ratio_max=2.0, downscale_cooldown_s=30))
    idle_decode = dict(decode_busy=0.1, kv_usage=0.1)
    for t in (0.0, 30.0):
        down = policy.decide(signals(4, 2, **idle_decode), t)
    assert (down.prefill_replicas, down.decode_replicas) == (4, 2)


def test_ratio_guard_repairs_counts_already_outside_it():
    cfg = config(pd_ratio_min=0.5, pd_ratio_max=2.0)
    assert ratio_guard(cfg, 8, 1, 8, 1) == (8, 4)       # decode grows to meet prefill
    assert ratio_guard(cfg, 1, 8, 1, 8) == (4, 8)
    assert ratio_guard(cfg, 2, 2, 3, 2) == (3, 2)       # within the guard: untouched


def test_pools_stay_within_bounds():
    policy = AutoscalePolicy(config(prefill_max=3, decode_min=2))
    hot = policy.decide(signals(3, 2, queue_wait_p90_s=10.0), 0.0)
    assert hot.prefill_replicas == 3 and any("at max 3" in r for r in hot.reasons)
    low = policy.decide(signals(3, 1), 10.0)
    assert low.decode_replicas == 2                     # raised to the minimum at once
    idle = dict(prefill_busy=0.0, decode_busy=0.0, kv_usage=0.0, queue_wait_p90_s=0.0)
    p, d = 3, 2
    for t in range(20, 5000, 10):
        decision = policy.decide(signals(p, d, **idle), float(t))
        p, d = decision.prefill_replicas, decision.decode_replicas
    assert (p, d) == (1, 2)


def test_config_rejects_inconsistent_settings():
    with pytest.raises(ValidationError):
        config(upscale_cooldown_s=600, downscale_cooldown_s=60)
    with pytest.raises(ValidationError):
        config(prefill_min=5, prefill_max=4)
    with pytest.raises(ValidationError):
        config(prefill_max=1, decode_min=8, pd_ratio_min=0.5)


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))


def test_dry_run_decides_and_logs_but_calls_nothing(monkeypatch, caplog):
    pytest.importorskip("ray")
    request_resources, resize = Recorder(), Recorder()
    monkeypatch.setattr("ray.autoscaler.sdk.request_resources", request_resources)
    policy = AutoscalePolicy(config(dry_run=True))
    decision = policy.decide(signals(2, 2, queue_wait_p90_s=5.0), 0.0)
    assert decision.dry_run and decision.changed and decision.prefill_replicas == 4
    with caplog.at_level(logging.INFO, logger="deploy.autoscale_ray"):
        assert asyncio.run(apply(decision, resize, {"GPU": 1}, {"GPU": 1})).applied is False
    assert resize.calls == [] and request_resources.calls == []
    assert "dry run" in caplog.text and "prefill 2->4" in caplog.text


def test_apply_requests_resources_for_the_whole_target_and_resizes_changed_pools(monkeypatch):
    pytest.importorskip("ray")
    request_resources, resize = Recorder(), Recorder()
    monkeypatch.setattr("ray.autoscaler.sdk.request_resources", request_resources)
    decision = AutoscalePolicy(config()).decide(signals(2, 2, queue_wait_p90_s=5.0), 0.0)
    outcome = asyncio.run(apply(decision, resize, {"GPU": 1, "CPU": 2}, {"GPU": 1}))
    assert outcome.applied is True and outcome.errors == () and outcome.results == (None,)
    (_, kwargs), = request_resources.calls
    assert kwargs["bundles"] == [{"GPU": 1, "CPU": 2}] * 4 + [{"GPU": 1}] * 2
    assert resize.calls == [(("prefill", 4), {})]
