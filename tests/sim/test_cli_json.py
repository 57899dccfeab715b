"""The CLI's JSON contract, determinism for a seed, scenarios and capacity search."""

from __future__ import annotations

import argparse
import json

import pytest

from sim import cli
from sim.cluster import ClusterSpec
from sim.run import RunSpec, Workload, simulate
from sim.workload import SCENARIOS

REQUIRED = ("attainment", "ttft_p50", "ttft_p90", "ttft_p99", "tpot_p50", "tpot_p90", "tpot_p99",
            "goodput_rps", "admitted", "best_effort", "rejected", "requests", "sim_wall_s", "gpus",
            "cost_per_million_tokens", "cost_per_successful_request", "lanes")


def _run(tmp_path, *extra):
    p = argparse.ArgumentParser()
    cli.add_parser(p.add_subparsers())
    out = tmp_path / "out.json"
    assert cli.run(p.parse_args(["sim", "--json", str(out), *extra])) == 0
    return json.loads(out.read_text())


def test_json_holds_the_contract_keys(tmp_path, conv_trace):
    d = _run(tmp_path, "--trace", conv_trace, "--duration", "20", "--scenario", "chatbot", "--policy", "slo",
             "--prefill", "1", "--decode", "1", "--hardware", "h100", "--model", "llama3-8b")
    assert all(k in d for k in REQUIRED)
    assert d["gpus"] == 2 and d["requests"] == d["admitted"] + d["best_effort"] + d["rejected"]
    assert 0.0 <= d["attainment"] <= 1.0 and d["lanes"]["interactive"]["requests"] > 0


def test_capacity_flag_adds_capacity_keys(tmp_path, traces):
    d = _run(tmp_path, "--trace", str(traces / "vidur_splitwise_code.csv"), "--duration", "8",
             "--scenario", "coding", "--policy", "fcfs", "--colocated", "1", "--capacity")
    assert d["capacity_rps"] > 0 and d["capacity_rps_per_gpu"] == pytest.approx(d["capacity_rps"])


def test_same_seed_same_result(conv_trace):
    spec = RunSpec(Workload(conv_trace, rate=10.0, duration_s=10, seed=5), "mixed", "slo", ClusterSpec(colocated=1))
    a, b = simulate(spec).as_json(), simulate(spec).as_json()
    a.pop("sim_wall_s"), b.pop("sim_wall_s")
    assert a == b


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_runs_and_reports_stages(scenario, conv_trace):
    r = simulate(RunSpec(Workload(conv_trace, duration_s=10), scenario, "slo", ClusterSpec(colocated=1)))
    s = r.summary
    assert s.requests > 0 and s.unfinished == 0
    multi = scenario in ("reasoning", "tool_calling", "mixed")
    assert ("1" in s.stages) == multi


def test_plot_writes_pngs(tmp_path, traces):
    pytest.importorskip("matplotlib")
    _run(tmp_path, "--trace", str(traces / "vidur_splitwise_code.csv"), "--duration", "5", "--scenario", "coding",
         "--policy", "edf", "--colocated", "1", "--plot", str(tmp_path / "plots"))
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["tpot_cdf.png", "ttft_cdf.png"]


def test_placement_finds_the_smallest_split_that_meets_the_target(traces):
    from sim.capacity import placement
    spec = RunSpec(Workload(str(traces / "vidur_splitwise_code.csv"), duration_s=10), "coding", "distserve",
                   ClusterSpec(prefill=1, decode=1))
    best = placement(spec, rate=1.0, max_gpus=3)
    assert (best.prefill, best.decode) == (1, 1) and best.attainment >= 0.9
