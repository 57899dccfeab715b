"""Acceptance 2: each overload state, its fallback actions, and the activation counters."""

from __future__ import annotations

import pytest

from router.config import OverloadConfig, SchedulerConfig, Thresholds
from router.plan import DecisionKind, FallbackAction, OverloadState
from router.policies.overload import OverloadMachine, Signals
from router.request import SLO, Admission, Lane, Phase, RequestState, Stage
from router.scheduler import SloScheduler
from tests.router.helpers import req, snap

CFG = OverloadConfig(degraded=Thresholds(queue_wait_s=1.0, ttft_ratio=1.0, kv_usage=0.5),
                     batch_paused=Thresholds(queue_wait_s=2.0, ttft_ratio=2.0, kv_usage=0.7),
                     interactive_only=Thresholds(queue_wait_s=3.0, ttft_ratio=3.0, kv_usage=0.9),
                     recover_hold_s=1.0, degraded_max_tokens=64, retry_after_s=7.0)


@pytest.mark.parametrize("signals,state", [
    (Signals(0.5, 0.5, 0.1), OverloadState.NORMAL),
    (Signals(1.5, 0.0, 0.0), OverloadState.DEGRADED),
    (Signals(0.0, 2.5, 0.0), OverloadState.BATCH_PAUSED),
    (Signals(0.0, 0.0, 0.95), OverloadState.INTERACTIVE_ONLY),
])
def test_each_signal_level_enters_its_state(signals, state):
    m = OverloadMachine(CFG)
    assert m.step(signals, 0.0) is state
    assert m.counters.entered[state] == (0 if state is OverloadState.NORMAL else 1)


def test_escalation_is_immediate_and_recovery_steps_down_one_level_after_the_hold():
    m = OverloadMachine(CFG)
    assert m.step(Signals(3.5, 0, 0), 0.0) is OverloadState.INTERACTIVE_ONLY
    assert m.step(Signals(0, 0, 0), 1.0) is OverloadState.INTERACTIVE_ONLY   # calm starts
    assert m.step(Signals(0, 0, 0), 1.5) is OverloadState.INTERACTIVE_ONLY   # hold not over
    assert m.step(Signals(0, 0, 0), 2.0) is OverloadState.BATCH_PAUSED
    assert m.step(Signals(0, 0, 0), 3.0) is OverloadState.DEGRADED
    assert m.step(Signals(0, 0, 0), 4.0) is OverloadState.NORMAL
    assert m.counters.entered[OverloadState.BATCH_PAUSED] == 1


def test_signals_between_recovery_and_entry_levels_hold_the_state():
    m = OverloadMachine(CFG)
    m.step(Signals(1.5, 0, 0), 0.0)
    for t in range(1, 10):     # 0.9 s wait: above 0.8 × 1.0, below the 1.0 entry level
        assert m.step(Signals(0.9, 0, 0), float(t)) is OverloadState.DEGRADED


def _scheduler(model):
    return SloScheduler(model, SchedulerConfig(overload=CFG))


def _waiting_for(seconds: float, rid: str = "old") -> RequestState:
    # a best-effort request stuck in the queue drives the queue-wait signal
    return RequestState(req(rid, arrival=0.0), admission=Admission.BEST_EFFORT, prefill_worker="w0",
                        decode_worker="w0")


def test_degraded_caps_max_tokens_of_non_interactive_requests(exact_model):
    s = _scheduler(exact_model)
    heavy = req("h", out=1000, lane=Lane.HEAVY, arrival=1.4, ttft=5.0)
    inter = req("i", out=1000, lane=Lane.INTERACTIVE, arrival=1.4, ttft=5.0)
    plan = s.schedule(snap(1.5, [_waiting_for(1.5), RequestState(heavy), RequestState(inter)]))
    assert plan.overload is OverloadState.DEGRADED
    assert FallbackAction.CAP_MAX_TOKENS in plan.actions
    assert plan.decision("h").max_tokens_cap == 64
    assert plan.decision("i").max_tokens_cap is None
    assert s.overload.counters.applied[FallbackAction.CAP_MAX_TOKENS] == 1


def test_batch_paused_defers_new_background_and_preempts_running_background(exact_model):
    s = _scheduler(exact_model)
    bg_running = RequestState(req("bgr", lane=Lane.BACKGROUND), phase=Phase.DECODING, prefilled=100,
                              decoded=2, context_tokens=102, admission=Admission.BEST_EFFORT,
                              prefill_worker="w0", decode_worker="w0")
    plan = s.schedule(snap(2.5, [_waiting_for(2.5), bg_running,
                                 RequestState(req("bg", lane=Lane.BACKGROUND, arrival=2.4, ttft=5.0))]))
    assert plan.overload is OverloadState.BATCH_PAUSED
    assert plan.decision("bg").kind is DecisionKind.DEFER
    assert "bgr" in plan.preempt
    assert s.overload.counters.applied[FallbackAction.PAUSE_BACKGROUND] == 1


def test_interactive_only_rejects_others_with_retry_after_and_still_admits_interactive(exact_model):
    s = _scheduler(exact_model)
    plan = s.schedule(snap(3.5, [_waiting_for(3.5),
                                 RequestState(req("h", lane=Lane.HEAVY, arrival=3.4, ttft=5.0)),
                                 RequestState(req("i", lane=Lane.INTERACTIVE, arrival=3.4, ttft=5.0))]))
    assert plan.overload is OverloadState.INTERACTIVE_ONLY
    d = plan.decision("h")
    assert d.kind is DecisionKind.REJECT and d.retry_after_s == 7.0 and d.reason == "interactive_only"
    assert plan.decision("i").kind is DecisionKind.ADMIT
    assert s.overload.counters.applied[FallbackAction.REJECT_RETRY_AFTER] == 1


def test_kv_usage_of_admitted_work_drives_the_state(exact_model):
    s = _scheduler(exact_model)
    big = RequestState(req("big", prompt=100, out=300_000, tpot=1.0), phase=Phase.DECODING, prefilled=100,
                       decoded=1, context_tokens=100, admission=Admission.ADMITTED,
                       prefill_worker="w0", decode_worker="w0")
    plan = s.schedule(snap(0.0, [big]))
    assert plan.overload is OverloadState.BATCH_PAUSED     # 300k / 400k = 0.75


def test_predicted_ttft_over_slo_drives_the_state(exact_model):
    s = _scheduler(exact_model)
    flood = [RequestState(req(f"r{i}", prompt=4000, ttft=0.05, arrival=0.0)) for i in range(20)]
    plan = s.schedule(snap(0.0, flood))
    assert plan.overload is OverloadState.INTERACTIVE_ONLY


def test_multi_stage_slo_helpers():
    st = Stage(10, 5, SLO(1.0, 0.1))
    assert st.slo.tpot_s == 0.1
