"""Promotion: best effort that can still meet its SLO is admitted when the DP has room for it."""

from __future__ import annotations

from dataclasses import replace

from router.plan import WorkerState
from router.request import SLO, Admission, Lane, Phase, Request, RequestState, Stage
from router.scheduler import SloScheduler, promotable
from tests.router.helpers import decoding, pending, req, snap, worker


def _be_decoding(r: Request, first: float, decoded: int) -> RequestState:
    return replace(decoding(r, lane_admission=Admission.BEST_EFFORT), first_token_s=first, decoded=decoded)


def test_promotable_needs_the_first_stage_on_time_and_on_pace():
    r = req("a", prompt=100, out=50, ttft=0.5, tpot=0.1, arrival=0.0)
    assert promotable(_be_decoding(r, first=0.4, decoded=3), start_s=0.6)       # 0.2 s for 2 gaps
    assert not promotable(_be_decoding(r, first=0.4, decoded=3), start_s=0.61)  # behind the pace
    assert not promotable(_be_decoding(r, first=0.6, decoded=3), start_s=0.7)   # first token late
    done = replace(_be_decoding(r, first=0.4, decoded=50), phase=Phase.DECODING)
    assert not promotable(done, start_s=0.4)                                   # nothing left to decode
    assert not promotable(replace(_be_decoding(r, 0.4, 3), admission=Admission.ADMITTED), 0.5)
    waiting = replace(RequestState(r), admission=Admission.BEST_EFFORT, prefill_worker="w0", decode_worker="w0")
    assert promotable(waiting, start_s=0.3) and not promotable(waiting, start_s=0.5)


def test_promotable_skips_requests_with_a_later_prompt_and_later_stages():
    slo = SLO(0.5, 0.1)
    tool = Request("t", "t", Lane.INTERACTIVE, 0.0, (Stage(100, 10, slo), Stage(200, 10, slo, tool_delay_s=0.5)))
    assert not promotable(_be_decoding(tool, first=0.1, decoded=1), start_s=0.1)
    think = Request("k", "t", Lane.INTERACTIVE, 0.0, (Stage(100, 10, slo), Stage(0, 10, slo)))
    assert promotable(_be_decoding(think, first=0.1, decoded=1), start_s=0.1)
    assert not promotable(replace(_be_decoding(think, first=0.1, decoded=1), stage=1), start_s=0.1)


def test_the_scheduler_promotes_on_pace_best_effort_when_the_dp_has_room(exact_model, calm_config):
    r = req("be", prompt=500, out=100, ttft=0.5, tpot=0.1, arrival=0.0)
    s = _be_decoding(r, first=0.3, decoded=2)
    plan = SloScheduler(exact_model, calm_config).schedule(snap(0.35, [s]))
    assert plan.promote == ("be",) and plan.preempt == ()
    off = calm_config.model_copy(update={"promote_best_effort": False})
    assert SloScheduler(exact_model, off).schedule(snap(0.35, [s])).promote == ()
    late = _be_decoding(r, first=0.3, decoded=1)                         # 0.05 s behind the pace
    assert SloScheduler(exact_model, calm_config).schedule(snap(0.35, [late])).promote == ()


def test_a_busy_worker_counts_the_batch_in_progress(exact_model, calm_config):
    """The batch running now may leave the request out: the pace is checked at its end."""
    s = _be_decoding(req("be", prompt=500, out=100, ttft=0.5, tpot=0.1), first=0.3, decoded=2)
    busy = WorkerState("w0", worker().role, worker().kv_capacity_tokens, busy_until_s=0.45)
    assert SloScheduler(exact_model, calm_config).schedule(snap(0.35, [s], [busy])).promote == ()


def test_no_promotion_without_kv_for_its_reservation(exact_model, calm_config):
    """The DP takes the promoted request's whole reservation; a worker without it keeps it best effort."""
    adm = decoding(req("adm", prompt=3000, out=400, ttft=5.0, tpot=0.1), worker="w0")
    be = _be_decoding(req("be", prompt=500, out=100, ttft=0.5, tpot=0.1), first=0.3, decoded=2)
    small = worker(kv=3500)
    plan = SloScheduler(exact_model, calm_config).schedule(snap(0.35, [adm, be], [small]))
    assert plan.promote == ()
    plan = SloScheduler(exact_model, calm_config).schedule(snap(0.35, [adm, be], [worker(kv=10_000)]))
    assert plan.promote == ("be",)


def test_a_promoted_request_is_never_preempted_in_the_same_plan(exact_model, calm_config):
    be = _be_decoding(req("be", prompt=500, out=100, ttft=0.5, tpot=0.1), first=0.3, decoded=2)
    new = pending(req("new", prompt=2000, out=50, ttft=1.0, arrival=0.35))
    plan = SloScheduler(exact_model, calm_config).schedule(snap(0.35, [be, *new], [worker(kv=3000)]))
    assert plan.promote == ("be",) and plan.decision("new").kind.value == "admit"
    assert plan.preempt == ()          # counted once, as admitted: 2,050 + 600 tokens fit in 3,000
