"""The arithmetic of bench/front_overhead.py: percentiles, round-robin order, ratios and deltas."""

from __future__ import annotations

import numpy as np
import pytest

from bench.front_overhead import PATHS, Sample, percentile, rotation, summarize, table


@pytest.mark.parametrize("q", [0, 25, 50, 90, 99, 100])
def test_percentile_matches_numpy(q):
    xs = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.25]
    assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_round_robin_puts_every_path_first_equally_often():
    orders = [rotation(PATHS, i) for i in range(6)]
    assert all(sorted(o) == sorted(PATHS) for o in orders)
    assert [o[0] for o in orders] == ["direct", "http", "grpc"] * 2


def test_summary_reports_deltas_in_ms_and_ratios_against_direct():
    ttft = {"direct": [0.010, 0.020, 0.030], "http": [0.015, 0.025, 0.035], "grpc": [0.020, 0.040, 0.060]}
    rates = {"direct": [100.0, 120.0], "http": [90.0, 90.0], "grpc": []}
    rows = summarize(ttft, rates)
    assert rows["direct"]["ttft_p50_ms"] == pytest.approx(20.0) and rows["direct"]["ttft_p50_ratio"] == 1.0
    assert rows["http"]["ttft_p50_delta_ms"] == pytest.approx(5.0)
    assert rows["http"]["ttft_p50_ratio"] == pytest.approx(25.0 / 20.0)
    assert rows["grpc"]["ttft_p50_ratio"] == pytest.approx(2.0)
    assert rows["grpc"]["ttft_p99_ms"] == pytest.approx(1e3 * float(np.percentile([0.02, 0.04, 0.06], 99)))
    assert rows["http"]["stream_tok_s"] == 90.0 and rows["http"]["stream_ratio"] == pytest.approx(90 / 110)
    assert rows["grpc"]["stream_tok_s"] is None and rows["grpc"]["stream_ratio"] is None
    text = table(rows)
    assert "| http | 3 | 25.0 | +5.0 | 1.25 |" in text and text.count("\n") == 4


def test_stream_rate_counts_the_tokens_after_the_first():
    assert Sample(ttft_s=0.5, last_s=2.5, tokens=101).stream_tok_s == pytest.approx(50.0)
    assert Sample(0.5, 0.5, 1).stream_tok_s is None
