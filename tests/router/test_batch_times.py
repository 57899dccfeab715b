"""Colocated batch times: fractions of the TPOT tiers as candidate τ, and holding the current τ."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from router.config import SchedulerConfig
from router.dp import plan_worker
from router.items import Row, to_items
from router.perf_model import AffinePiece, PerfModel
from router.plan import DecisionKind
from router.scheduler import SloScheduler
from tests.router.helpers import pending, req, snap

LIN = PerfModel((AffinePiece(0.001, (1e-6, 1e-5, 0.0, 0.0, 0.0)),))


def row(rid, prefill, deadline, tpot=0.1, forced=False):
    return Row(rid, prefill, 0, deadline, True, 0, (), 0, math.inf, 1.0, tpot, forced)


def test_a_half_tier_batch_admits_a_deadline_inside_the_first_batch(exact_model, calm_config):
    # TTFT 90 ms, TPOT 100 ms: no 100 ms batch ends before the deadline, a 50 ms one does
    r = req("r", prompt=500, out=20, ttft=0.09, tpot=0.1)
    plan = SloScheduler(exact_model, calm_config).schedule(snap(0.0, pending(r)))
    assert plan.decision("r").kind is DecisionKind.ADMIT
    assert plan.directive(plan.decision("r").prefill_worker).batch_time_s == pytest.approx(0.05)
    tiers_only = calm_config.model_copy(update={"batch_time_fractions": ()})
    plan = SloScheduler(exact_model, tiers_only).schedule(snap(0.0, pending(r)))
    assert plan.decision("r").kind is DecisionKind.BEST_EFFORT


def test_batch_times_never_go_below_the_floor(exact_model, calm_config):
    r = req("r", prompt=100, out=20, ttft=0.03, tpot=0.1)        # would need a 25 ms batch
    floor = calm_config.model_copy(update={"min_batch_time_s": 0.03})
    plan = SloScheduler(exact_model, floor).schedule(snap(0.0, pending(r)))
    assert plan.decision("r").kind is DecisionKind.BEST_EFFORT
    assert all(d.batch_time_s >= 0.03 for d in plan.directives)
    plan = SloScheduler(exact_model, calm_config).schedule(snap(0.0, pending(r)))
    assert plan.decision("r").kind is DecisionKind.ADMIT


def test_fractions_must_lie_between_zero_and_one():
    with pytest.raises(ValidationError, match="batch_time_fractions"):
        SchedulerConfig(batch_time_fractions=(0.5, 1.0))
    with pytest.raises(ValidationError, match="batch_time_fractions"):
        SchedulerConfig(batch_time_fractions=(0.0,))


def test_an_admitted_set_off_track_everywhere_keeps_the_current_batch_time():
    # "old" (admitted) needs 150k tokens by 0.1 s: B = 99k at τ = 0.1 (one batch), 49k at τ = 0.05
    # (two batches): off track at both. Switching τ on value would be a guess; the worker keeps
    # the τ it runs now, the one the admitted set was shown to fit at.
    rows = [row("old", 150_000, 0.1, forced=True), row("new", 10, 5.0)]
    for hold in (0.05, 0.1):
        res = plan_worker(to_items(rows), LIN, 0.0, 0, [0.05, 0.1], hold_tau=hold)
        assert res.tau_s == hold and res.at_risk == ("old",) and res.admitted == ()
    # on track somewhere: value decides, whatever runs now
    rows = [row("old", 50_000, 0.1, forced=True), row("tight", 10, 1.0, tpot=0.05)]
    res = plan_worker(to_items(rows), LIN, 0.0, 0, [0.05, 0.1], hold_tau=0.1)
    assert res.tau_s == 0.05 and res.admitted == ("tight",)
