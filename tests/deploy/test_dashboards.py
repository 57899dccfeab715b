"""The Grafana dashboard and the Prometheus alerts only use series ServingMetrics exports, and the
alerts burn the error budget at the stated thresholds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.api import ErrorKind, Failed
from deploy.metrics import ServingMetrics
from router.request import Lane
from tests.deploy.test_metrics import MODEL, FakeClock, stats, stream

yaml = pytest.importorskip("yaml")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC = re.compile(r"(?:vllm:|tandem_)[a-zA-Z0-9_:]*")
BURN = {"warning": 0.8, "critical": 1.0}


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every sample name a front exports once it has seen a request and a stats snapshot."""
    clock = FakeClock()
    metrics = ServingMetrics(MODEL, clock=clock)
    stream(metrics, clock)
    metrics.observe_item(Failed("x", ErrorKind.REJECTED, "busy"), MODEL, Lane.HEAVY, "acme")
    metrics.update_from_stats(stats())
    body, _ = metrics.render()
    return {s.name for f in text_string_to_metric_families(body.decode()) for s in f.samples}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "tandem.json").read_text())


@pytest.fixture(scope="module")
def rules() -> list[dict]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_queries(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def test_dashboard_uses_a_prometheus_datasource_variable(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"]


def test_dashboard_covers_the_serving_front(dashboard):
    titles = " | ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("ttft", "tpot", "attainment", "rejected", "overload state", "kv usage",
                  "handoff bytes", "handoff mean latency", "occupancy", "tenant"):
        assert topic in titles, topic


def test_dashboard_queries_only_exported_series(dashboard, exported):
    referenced = {name for expr in dashboard_queries(dashboard) for name in METRIC.findall(expr)}
    assert referenced, "no metric names found"
    assert referenced <= exported, sorted(referenced - exported)


def test_alerts_query_only_exported_series(rules, exported):
    referenced = {name for rule in rules for name in METRIC.findall(rule["expr"])}
    assert referenced == {"tandem_slo_stages_total"}
    assert referenced <= exported


def test_every_lane_has_a_warning_and_a_critical_burn_alert(rules):
    pairs = {(r["labels"]["lane"], r["labels"]["severity"]) for r in rules}
    assert pairs == {(lane.value, sev) for lane in Lane for sev in BURN}


@pytest.mark.parametrize("severity", sorted(BURN))
def test_burn_thresholds_are_the_stated_fraction_of_the_error_budget(rules, severity):
    for rule in (r for r in rules if r["labels"]["severity"] == severity):
        budget = 1.0 - float(rule["labels"]["slo_target"])
        thresholds = [float(x) for x in re.findall(r"\)\s*>\s*([0-9.eE+-]+)", rule["expr"])]
        assert len(thresholds) == 4, rule["alert"]          # two windows in each of two pairs
        assert thresholds == pytest.approx([BURN[severity] * budget] * 4), rule["alert"]


def test_burn_alerts_are_multi_window(rules):
    for rule in rules:
        windows = re.findall(r"\[(\d+[smhd])\]", rule["expr"])
        assert set(windows) == {"1h", "5m", "6h", "30m"}, rule["alert"]
        long_short = [("1h", "5m"), ("6h", "30m")]
        for long, short in long_short:
            # each pair is joined with `and`: the long window's ratio, then the short one's
            assert re.search(rf"\[{long}\].*?\)\s*>.*?and.*?\[{short}\]", rule["expr"], re.S)
