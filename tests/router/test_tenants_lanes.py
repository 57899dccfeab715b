"""Acceptance 2: tenant rate limits and concurrency caps, the lane cost score, the interactive
KV reserve, the prompt ceiling and weighted fairness."""

from __future__ import annotations

from router.config import CostConfig, SchedulerConfig, TenantLimit
from router.plan import DecisionKind
from router.policies.lanes import choose_lane, choose_lanes, memory_limit
from router.policies.tenants import TenantLimiter, TenantVerdict, fairness_factors
from router.request import Admission, Lane, Phase, RequestState
from router.scheduler import SloScheduler
from tests.router.helpers import req, snap, worker


def test_rate_limit_rejects_with_retry_after_and_refills(calm_config):
    cfg = calm_config.model_copy(update={"tenants": {"acme": TenantLimit(requests_per_s=2.0, request_burst=1.0)}})
    lim = TenantLimiter(cfg)
    assert lim.check("acme", 10, 0, 0.0).verdict is TenantVerdict.OK
    second = lim.check("acme", 10, 0, 0.1)
    assert second.verdict is TenantVerdict.RATE_LIMITED
    assert abs(second.retry_after_s - 0.4) < 1e-9     # 0.2 tokens refilled, 0.8 missing at 2/s
    assert lim.check("acme", 10, 0, 0.6).verdict is TenantVerdict.OK


def test_token_rate_limit_counts_prompt_tokens(calm_config):
    cfg = calm_config.model_copy(update={"tenants": {"acme": TenantLimit(tokens_per_s=100.0, token_burst=150.0)}})
    lim = TenantLimiter(cfg)
    assert lim.check("acme", 100, 0, 0.0).verdict is TenantVerdict.OK
    assert lim.check("acme", 100, 0, 0.0).verdict is TenantVerdict.RATE_LIMITED
    assert lim.check("acme", 100, 0, 0.5).verdict is TenantVerdict.OK


def test_scheduler_rejects_rate_limited_tenant_but_not_others(exact_model, calm_config):
    cfg = calm_config.model_copy(update={"tenants": {"acme": TenantLimit(requests_per_s=1.0, request_burst=1.0)}})
    s = SloScheduler(exact_model, cfg)
    plan = s.schedule(snap(0.0, [RequestState(req("a1", tenant="acme")), RequestState(req("a2", tenant="acme")),
                                 RequestState(req("b1", tenant="other"))]))
    kinds = {d.request_id: d.kind for d in plan.decisions}
    assert kinds["a1"] is DecisionKind.ADMIT and kinds["b1"] is DecisionKind.ADMIT
    assert kinds["a2"] is DecisionKind.REJECT and plan.decision("a2").retry_after_s > 0


def test_concurrency_cap_defers_until_a_slot_frees(exact_model, calm_config):
    cfg = calm_config.model_copy(update={"tenants": {"acme": TenantLimit(max_concurrent=1)}})
    s = SloScheduler(exact_model, cfg)
    running = RequestState(req("r", tenant="acme"), phase=Phase.DECODING, prefilled=100, decoded=1,
                           context_tokens=100, admission=Admission.ADMITTED, prefill_worker="w0", decode_worker="w0")
    plan = s.schedule(snap(0.0, [running, RequestState(req("n", tenant="acme"))]))
    assert plan.decision("n").kind is DecisionKind.DEFER and plan.decision("n").reason == "tenant_concurrency"
    plan = s.schedule(snap(0.1, [RequestState(req("n", tenant="acme"))]))
    assert plan.decision("n").kind is DecisionKind.ADMIT


def test_cost_score_demotes_but_never_promotes():
    cost = CostConfig(heavy_above=5.0, background_above=20.0, reject_above=100.0)
    assert choose_lane(req("a", prompt=1000, out=100), cost).lane is Lane.INTERACTIVE
    assert choose_lane(req("b", prompt=6000, out=100), cost).lane is Lane.HEAVY
    assert choose_lane(req("c", prompt=30000, out=100), cost).lane is Lane.BACKGROUND
    assert choose_lane(req("d", prompt=10, lane=Lane.BACKGROUND), cost).lane is Lane.BACKGROUND
    assert choose_lane(req("e", prompt=200_000), cost).rejected
    many = [req("a", prompt=1000, out=100), req("b", prompt=6000, out=100), req("e", prompt=200_000)]
    lanes, rejected = choose_lanes(many, cost)
    assert lanes[:2] == [Lane.INTERACTIVE, Lane.HEAVY] and rejected.tolist() == [False, False, True]


def test_prompt_ceiling_rejects(exact_model, calm_config):
    s = SloScheduler(exact_model, calm_config.model_copy(update={"max_prompt_tokens": 50}))
    plan = s.schedule(snap(0.0, [RequestState(req("long", prompt=51))]))
    assert plan.decision("long").kind is DecisionKind.REJECT and plan.decision("long").reason == "prompt_too_long"


def test_kv_reserve_is_only_for_the_interactive_lane(exact_model, calm_config):
    assert memory_limit(Lane.INTERACTIVE, 1000, 0.2) == 1000
    assert memory_limit(Lane.HEAVY, 1000, 0.2) == 800
    s = SloScheduler(exact_model, calm_config.model_copy(update={"interactive_kv_reserve": 0.2}))
    w = worker(kv=1000)
    # 850 tokens each: fits the whole memory but not the non-reserved 800
    heavy = RequestState(req("h", prompt=50, out=800, ttft=5.0, lane=Lane.HEAVY))
    inter = RequestState(req("i", prompt=50, out=800, ttft=5.0, lane=Lane.INTERACTIVE))
    assert s.schedule(snap(0.0, [heavy], [w])).decision("h").kind is DecisionKind.BEST_EFFORT
    assert SloScheduler(exact_model, s.config).schedule(snap(0.0, [inter], [w])).decision("i").kind is DecisionKind.ADMIT


def test_fairness_lowers_the_value_of_a_tenant_above_its_weighted_share():
    cfg = SchedulerConfig(tenants={"big": TenantLimit(weight=1.0), "small": TenantLimit(weight=1.0)})
    f = fairness_factors({"big": 900.0, "small": 100.0}, {"big", "small"}, cfg)
    assert f["small"] == 1.0 and abs(f["big"] - 0.5 / 0.9) < 1e-9
    heavy_weight = SchedulerConfig(tenants={"big": TenantLimit(weight=9.0), "small": TenantLimit(weight=1.0)})
    assert fairness_factors({"big": 900.0, "small": 100.0}, {"big", "small"}, heavy_weight)["big"] == 1.0


def test_fairness_decides_who_gets_the_last_slot(exact_model, calm_config):
    cfg = calm_config.model_copy(update={"tenants": {"hog": TenantLimit(), "fair": TenantLimit()}})
    s = SloScheduler(exact_model, cfg)
    w = worker(kv=2000)
    hog_running = RequestState(req("run", prompt=100, out=900, tenant="hog"), phase=Phase.DECODING,
                               prefilled=100, decoded=1, context_tokens=100, admission=Admission.ADMITTED,
                               prefill_worker="w0", decode_worker="w0")
    a = RequestState(req("hog2", prompt=100, out=800, ttft=5.0, tenant="hog"))
    b = RequestState(req("fair1", prompt=100, out=800, ttft=5.0, tenant="fair"))
    plan = s.schedule(snap(0.0, [hog_running, a, b], [w]))
    assert plan.decision("fair1").kind is DecisionKind.ADMIT
    assert plan.decision("hog2").kind is DecisionKind.BEST_EFFORT
