"""``deploy.model_router``: version weights, rollback, lane and capability routing, the fallback
ladder, and the config's checks. Pure policy: no Ray, no model."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from cluster.api import ErrorKind
from deploy.model_router import ModelRouter, ModelRoutes, RouteChoice, RouteError, RouteReason
from router.request import Lane

ROUTES = {"models": {
    "main": {"versions": {"v1": 90, "v2-canary": 10}, "fallback": "small", "tags": ["chat"]},
    "small": {"versions": {"v1": 100}, "fallback": "tiny", "max_context": 256, "tags": ["chat"]},
    "tiny": {"versions": {"v1": 1}, "max_context": 128},
    "long": {"versions": {"v1": 1}, "max_context": 32768, "lanes": {"background": "small"}},
}}
WINDOWS = {"main": 4096, "small": 2048, "tiny": 2048, "long": 65536}


def normal(_model: str) -> str:
    return "normal"


def router(**overrides) -> ModelRouter:
    return ModelRouter(ModelRoutes.model_validate(overrides or ROUTES), WINDOWS)


def versions(r: ModelRouter, model: str = "main", n: int = 2000) -> Counter:
    return Counter(r.route(model, Lane.INTERACTIVE, 10, normal, key=f"req-{i}").version for i in range(n))


def test_no_model_named_means_the_first_configured():
    choice = router().route(None, Lane.INTERACTIVE, 10, normal, key="a")
    assert choice.model == "main" and choice.reason is RouteReason.REQUESTED


def test_an_unknown_model_is_not_found():
    with pytest.raises(RouteError) as err:
        router().route("gpt-9", Lane.INTERACTIVE, 10, normal)
    assert err.value.kind is ErrorKind.NOT_FOUND and "main" in err.value.message


def test_version_shares_follow_the_weights():
    counts = versions(router())
    assert set(counts) == {"v1", "v2-canary"}
    assert 0.07 < counts["v2-canary"] / 2000 < 0.13


def test_the_same_request_id_always_takes_the_same_version():
    r = router()
    r.set_weights("main", {"v1": 50, "v2-canary": 50})
    first = [r.route("main", Lane.INTERACTIVE, 10, normal, key=f"k{i}").version for i in range(50)]
    again = [r.route("main", Lane.INTERACTIVE, 10, normal, key=f"k{i}").version for i in range(50)]
    assert first == again and len(set(first)) == 2


def test_without_a_key_a_seeded_rng_makes_the_sequence_reproducible():
    def run():
        r = ModelRouter(ModelRoutes.model_validate(ROUTES), WINDOWS, seed=7)
        return [r.route("main", Lane.INTERACTIVE, 10, normal).version for _ in range(100)]
    assert run() == run() and "v2-canary" in run()


def test_set_weights_changes_the_split():
    r = router()
    r.set_weights("main", {"v1": 0, "v2-canary": 1})
    assert versions(r, n=200) == Counter({"v2-canary": 200})


@pytest.mark.parametrize("weights", [{"v1": 1}, {"v1": 1, "v2-canary": 1, "v3": 1},
                                     {"v1": -1, "v2-canary": 2}, {"v1": 0, "v2-canary": 0}])
def test_bad_weights_are_refused_and_nothing_changes(weights):
    r = router()
    with pytest.raises(ValueError):
        r.set_weights("main", weights)
    assert r.weights("main") == {"v1": 90, "v2-canary": 10}


def test_rollback_sends_everything_to_the_stable_version_in_one_step():
    r = router()
    r.set_weights("main", {"v1": 0, "v2-canary": 100})
    assert r.rollback("main") == {"v1": 1.0, "v2-canary": 0.0}
    assert versions(r) == Counter({"v1": 2000})


def test_a_lane_rule_moves_that_lane_to_its_model():
    r = router()
    bg = r.route("long", Lane.BACKGROUND, 10, normal)
    assert (bg.model, bg.reason) == ("small", RouteReason.LANE)
    assert r.route("long", Lane.INTERACTIVE, 10, normal).model == "long"


def test_a_request_longer_than_the_context_goes_to_the_first_model_that_fits():
    r = router()
    kept = r.route("small", Lane.INTERACTIVE, 200, normal)
    assert kept == RouteChoice("small", "v1", RouteReason.REQUESTED)
    moved = r.route("small", Lane.INTERACTIVE, 300, normal, key="x")
    assert moved.model == "main" and moved.reason is RouteReason.CAPABILITY
    assert r.route("main", Lane.INTERACTIVE, 5000, normal).model == "long"  # main's window: 4096


def test_a_request_no_model_fits_is_a_clear_400():
    with pytest.raises(RouteError) as err:
        router().route("main", Lane.INTERACTIVE, 70000, normal)
    assert err.value.kind is ErrorKind.INVALID and "70000" in err.value.message
    assert "32768" in err.value.message


def test_a_missing_capability_routes_to_a_model_that_has_it():
    r = router()
    assert r.route("tiny", Lane.INTERACTIVE, 10, normal, needs=frozenset({"chat"})).model == "main"
    with pytest.raises(RouteError, match="vision"):
        r.route("main", Lane.INTERACTIVE, 10, normal, needs=frozenset({"vision"}))


def test_context_is_the_smaller_of_the_config_and_the_window():
    r = router()
    assert (r.context("main"), r.context("small"), r.context("long")) == (4096, 256, 32768)
    assert r.reachable_context("small") == 32768


@pytest.mark.parametrize("lane", [Lane.BACKGROUND, Lane.HEAVY])
def test_under_overload_non_interactive_traffic_falls_back(lane):
    states = {"main": "degraded", "small": "normal", "tiny": "normal"}
    choice = router().route("main", lane, 10, states.__getitem__)
    assert (choice.model, choice.version, choice.reason) == ("small", "v1", RouteReason.FALLBACK)


def test_interactive_traffic_stays_under_overload():
    states = {"main": "interactive_only", "small": "normal"}
    assert router().route("main", Lane.INTERACTIVE, 10, states.__getitem__).model == "main"


def test_the_ladder_keeps_stepping_down_while_the_fallback_is_overloaded_too():
    states = {"main": "degraded", "small": "batch_paused", "tiny": "normal"}
    assert router().route("main", Lane.BACKGROUND, 10, states.__getitem__).model == "tiny"


def test_the_ladder_stops_at_a_fallback_too_small_for_the_request():
    states = {"main": "degraded", "small": "batch_paused", "tiny": "normal"}
    assert router().route("main", Lane.BACKGROUND, 200, states.__getitem__).model == "small"
    assert router().route("main", Lane.BACKGROUND, 1000, states.__getitem__).model == "main"


def test_a_normal_model_keeps_its_traffic():
    assert router().route("main", Lane.BACKGROUND, 10, normal).model == "main"


def test_a_fallback_cycle_ends():
    r = router(models={"a": {"fallback": "b"}, "b": {"fallback": "a"}})
    assert r.route("a", Lane.BACKGROUND, 10, lambda m: "degraded").model == "b"


@pytest.mark.parametrize("models, match", [
    ({"a": {"fallback": "zz"}}, "no model 'zz'"),
    ({"a": {"fallback": "a"}}, "itself"),
    ({"a": {"lanes": {"background": "zz"}}}, "no model 'zz'"),
    ({"a": {"versions": {"v1": 0}}}, "positive weight"),
    ({"a": {"versions": {}}}, "at least 1"),
    ({"a": {"lanes": {"batch": "a"}}}, "lanes"),
    ({}, "at least 1"),
])
def test_the_config_refuses_dangling_or_empty_routes(models, match):
    with pytest.raises(ValidationError, match=match):
        ModelRoutes.model_validate({"models": models})
