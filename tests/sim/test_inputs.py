"""Acceptance 4: bad input gives a clear error (SimInputError; exit 2 with `error: ...` from the CLI)."""

from __future__ import annotations

import argparse

import pytest

from sim import cli
from sim.cluster import ClusterSpec
from sim.errors import SimInputError
from sim.run import RunSpec, Workload, simulate
from sim.trace import load_rows


def _args(*extra: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    cli.add_parser(sub)
    return p.parse_args(["sim", *extra])


def _cli(tmp_path, *extra: str) -> int:
    return cli.run(_args("--json", str(tmp_path / "out.json"), *extra))


def test_unknown_format_names_the_accepted_ones(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("a,b\n1,2\n")
    with pytest.raises(SimInputError, match="unknown trace format 'parquet'.*azure, vidur, burstgpt, lengths"):
        load_rows(f, "parquet")
    with pytest.raises(SimInputError, match="cannot tell the format"):
        load_rows(f)


def test_wrong_columns_for_a_named_format(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n")
    with pytest.raises(SimInputError, match="not in azure format: missing columns"):
        load_rows(f, "azure")


@pytest.mark.parametrize("text,msg", [("", "empty"), ("arrived_at,num_prefill_tokens,num_decode_tokens\n",
                                                      "no requests")])
def test_empty_trace(tmp_path, text, msg):
    f = tmp_path / "t.csv"
    f.write_text(text)
    with pytest.raises(SimInputError, match=msg):
        load_rows(f)


def test_missing_file():
    with pytest.raises(SimInputError, match="not found"):
        load_rows("/nonexistent/trace.csv")


def test_zero_workers():
    with pytest.raises(SimInputError, match="zero workers"):
        ClusterSpec()


@pytest.mark.parametrize("kw,msg", [(dict(prefill=1), "both prefill and decode"),
                                    (dict(prefill=1, decode=1, colocated=1), "mixing"),
                                    (dict(colocated=-1), ">= 0")])
def test_bad_layouts(kw, msg):
    with pytest.raises(SimInputError, match=msg):
        ClusterSpec(**kw)


def test_policy_layout_mismatch(conv_trace):
    w = Workload(conv_trace, duration_s=5)
    with pytest.raises(SimInputError, match="distserve needs --prefill"):
        simulate(RunSpec(w, "chatbot", "distserve", ClusterSpec(colocated=2)))
    with pytest.raises(SimInputError, match="fcfs runs on colocated"):
        simulate(RunSpec(w, "chatbot", "fcfs", ClusterSpec(prefill=1, decode=1)))


def test_impossible_slo_from_the_cli(tmp_path, conv_trace, capsys):
    assert _cli(tmp_path, "--trace", conv_trace, "--scenario", "chatbot", "--policy", "slo",
                "--colocated", "1", "--tpot-ms", "1") == 2
    assert "impossible SLO: TPOT 1.00 ms is below one decode step" in capsys.readouterr().err
    assert _cli(tmp_path, "--trace", conv_trace, "--scenario", "chatbot", "--policy", "slo",
                "--colocated", "1", "--ttft-slowdown", "0.5") == 2
    assert "impossible SLO: TTFT slowdown 0.5" in capsys.readouterr().err


def test_zero_workers_from_the_cli(tmp_path, conv_trace, capsys):
    assert _cli(tmp_path, "--trace", conv_trace, "--scenario", "chatbot", "--policy", "slo") == 2
    assert "zero workers" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_lengths_only_trace_needs_a_rate(tmp_path, traces, capsys):
    assert _cli(tmp_path, "--trace", str(traces / "bwb_stats_llama2_tokenizer_filtered_v2.csv"),
                "--scenario", "chatbot", "--policy", "slo", "--colocated", "1") == 2
    assert "lengths only: give --rate and --duration" in capsys.readouterr().err


def test_duration_with_no_arrivals(tmp_path, conv_trace, capsys):
    assert _cli(tmp_path, "--trace", conv_trace, "--scenario", "chatbot", "--policy", "slo",
                "--colocated", "1", "--duration", "-1") == 2
    assert "no request" in capsys.readouterr().err


def test_bad_scheduler_config_from_the_cli(tmp_path, conv_trace, capsys):
    base = ("--trace", conv_trace, "--scenario", "chatbot", "--colocated", "1", "--duration", "5")
    bad = tmp_path / "bad.json"
    bad.write_text('{"later_stage_reserve": 2}')
    assert _cli(tmp_path, *base, "--policy", "slo", "--scheduler-config", str(bad)) == 2
    assert "later_stage_reserve" in capsys.readouterr().err
    bad.write_text("{not json")
    assert _cli(tmp_path, *base, "--policy", "slo", "--scheduler-config", str(bad)) == 2
    assert "--scheduler-config" in capsys.readouterr().err
    assert _cli(tmp_path, *base, "--policy", "slo", "--scheduler-config", str(tmp_path / "none.yaml")) == 2
    assert "cannot read" in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text("later_stage_reserve: 0.5\n")
    assert _cli(tmp_path, *base, "--policy", "fcfs", "--scheduler-config", str(good)) == 2
    assert "--policy slo only" in capsys.readouterr().err
    assert _cli(tmp_path, *base, "--policy", "slo", "--scheduler-config", str(good)) == 0
