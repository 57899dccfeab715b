"""Trace formats load to the same rows; arrivals and clipping are deterministic and reported."""

from __future__ import annotations

import numpy as np
import pytest

from sim.trace import arrivals, clip, load_rows, replay


def test_azure_and_vidur_files_are_the_same_requests(traces):
    az = load_rows(traces / "AzureLLMInferenceTrace_code.csv")
    vi = load_rows(traces / "vidur_splitwise_code.csv")
    assert (az.fmt, vi.fmt) == ("azure", "vidur") and len(az) == len(vi) > 0
    assert np.array_equal(az.input_tokens, vi.input_tokens)
    assert np.allclose(az.arrival_s, vi.arrival_s, atol=1e-5)


def test_burstgpt_drops_the_failed_rows(traces):
    rows = load_rows(traces / "BurstGPT_1_head400.csv")
    assert rows.fmt == "burstgpt" and rows.dropped == 17 and len(rows) == 383


def test_replay_rescales_to_the_asked_rate(conv_trace):
    rows = load_rows(conv_trace)
    fast = replay(rows, rate=2 * rows.native_rate)
    assert fast.native_rate == pytest.approx(2 * rows.native_rate)
    cut = replay(rows, duration_s=60)
    assert cut.arrival_s.max() < 60 and len(cut) < len(rows)


def test_generated_arrivals_are_deterministic_and_near_the_rate(traces):
    rows = load_rows(traces / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv")
    assert rows.arrival_s is None and rows.fmt == "lengths"
    a = arrivals(rows, rate=20.0, duration_s=200, seed=3)
    b = arrivals(rows, rate=20.0, duration_s=200, seed=3)
    assert np.array_equal(a.arrival_s, b.arrival_s)
    assert len(a) == pytest.approx(4000, rel=0.1)
    bursty = arrivals(rows, rate=20.0, duration_s=200, seed=3, cv=3.0)
    gaps = np.diff(bursty.arrival_s)
    assert gaps.std() / gaps.mean() > 2.0


def test_clip_to_the_context_is_counted(traces):
    rows = load_rows(traces / "AzureLLMInferenceTrace_conv.csv")
    c = clip(rows, 2048)
    assert c.clipped == int(((rows.input_tokens >= 2048) | (rows.input_tokens + rows.output_tokens > 2048)).sum())
    assert c.clipped > 0 and int((c.input_tokens + c.output_tokens).max()) <= 2048
