"""The size gate: under overload, admission goes to the cheapest requests first."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from router.config import SchedulerConfig, SizeGateConfig
from router.plan import DecisionKind
from router.policies.size_gate import SizeGate, service_costs
from router.request import SLO, Lane, Request, Stage
from router.scheduler import SloScheduler
from tests.router.helpers import pending, req, snap


def test_service_cost_is_prefill_time_plus_decode_at_the_mean_context(exact_model):
    one = req("a", prompt=1000, out=200)
    coef = np.array([p.coef for p in exact_model.pieces])
    want = exact_model.prefill_time(1000) + 200 * float((coef[:, 1] + coef[:, 2] * 1100 + coef[:, 4]).max())
    two = Request("b", "t", Lane.INTERACTIVE, 0.0, (Stage(500, 20, SLO(1, 0.1)),
                                                     Stage(300, 100, SLO(1, 0.1), tool_delay_s=0.5)))
    want2 = (exact_model.prefill_time(500) + 20 * float((coef[:, 1] + coef[:, 2] * 510 + coef[:, 4]).max())
             + exact_model.prefill_time(300) + 100 * float((coef[:, 1] + coef[:, 2] * 870 + coef[:, 4]).max()))
    got = service_costs([one, two], exact_model)
    assert got == pytest.approx([want, want2], rel=1e-12)
    sizes = service_costs([req(str(n), prompt=n, out=50) for n in (100, 1000, 4000)], exact_model)
    assert np.all(np.diff(sizes) > 0)


def test_the_gate_closes_while_requests_are_turned_away_and_reopens_when_they_are_not(exact_model):
    g = SizeGate(SizeGateConfig(window=8, min_quantile=0.5, step_down=0.1, recover_per_s=0.2), exact_model)
    reqs = [req(f"r{i}", prompt=100 * i, out=10) for i in range(1, 11)]
    g.observe(reqs)                                 # the window keeps the last 8
    assert g.open and g.threshold() == float("inf")
    g.update(0.0, turned_away=3)
    assert g.q == pytest.approx(0.7) and not g.open
    assert g.threshold() == pytest.approx(np.quantile(service_costs(reqs[2:], exact_model), 0.7))
    g.update(1.0, turned_away=10)
    assert g.q == 0.5                               # floored at min_quantile
    g.update(2.0, turned_away=0)
    assert g.q == pytest.approx(0.7)                # +0.2 per second while none is turned away
    g.update(10.0, turned_away=0)
    assert g.open and g.threshold() == float("inf")


def test_a_disabled_gate_never_closes(exact_model):
    g = SizeGate(SizeGateConfig(enabled=False), exact_model)
    g.observe([req("a")])
    g.update(0.0, turned_away=100)
    assert g.open and g.threshold() == float("inf")


def test_config_rejects_bad_values():
    for bad in ({"window": 2}, {"min_quantile": 0.0}, {"min_quantile": 1.5}, {"step_down": 0.0},
                {"recover_per_s": -1.0}):
        with pytest.raises(ValidationError):
            SizeGateConfig(**bad)


def test_under_overload_the_scheduler_holds_the_costliest_out_and_admits_the_cheap(exact_model, calm_config):
    """A burst the worker cannot take whole: the DP turns some away, the gate closes, and in the
    next burst the long prompts go best effort ("size_gate") while the short ones are admitted."""
    cfg = calm_config.model_copy(update={"size_gate": SizeGateConfig(step_down=0.05)})
    sched = SloScheduler(exact_model, cfg)
    first = [req(f"a{i}", prompt=6000 if i % 2 else 200, out=20, ttft=0.3) for i in range(40)]
    plan = sched.schedule(snap(0.0, pending(*first)))
    turned = [d for d in plan.decisions if d.kind is DecisionKind.BEST_EFFORT]
    assert turned and sched.size_gate.q < 1.0
    second = [req(f"b{i}", prompt=6000 if i % 2 else 200, out=20, ttft=0.3, arrival=0.01) for i in range(6)]
    plan = sched.schedule(snap(0.01, pending(*second)))
    by_id = {d.request_id: d for d in plan.decisions}
    long_ids = [f"b{i}" for i in range(1, 6, 2)]
    assert all(by_id[i].kind is DecisionKind.BEST_EFFORT and by_id[i].reason == "size_gate" for i in long_ids)
    assert all(by_id[f"b{i}"].kind is DecisionKind.ADMIT for i in range(0, 6, 2))
    assert plan.stats["size_gate_quantile"] == sched.size_gate.q


def test_with_room_for_everyone_the_gate_stays_open(exact_model, calm_config):
    sched = SloScheduler(exact_model, calm_config)
    reqs = [req(f"r{i}", prompt=100 * (i + 1), out=10, ttft=5.0, arrival=0.0) for i in range(8)]
    plan = sched.schedule(snap(0.0, pending(*reqs)))
    assert all(d.kind is DecisionKind.ADMIT for d in plan.decisions)
    assert sched.size_gate.open


def test_scheduler_config_carries_the_gate():
    assert SchedulerConfig().size_gate.enabled
    assert not SchedulerConfig(size_gate={"enabled": False}).size_gate.enabled
