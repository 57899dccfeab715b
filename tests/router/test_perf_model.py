"""Acceptance 3 (fit on ../shared/profiles) and the performance model's contracts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.perf_model import (AffinePiece, BatchShape, Calibrator, PerfModel, attention_pairs, fit,
                               fit_and_report)
from router.profiles import load_points

TRUE = PerfModel((AffinePiece(0.006, (6e-6, 9e-6, 4e-8, 1.4e-9, 2e-6)),
                  AffinePiece(0.002, (2e-5, 1.5e-5, 4e-8, 1.4e-9, 1e-5))))


def test_h100_llama3_8b_fit_has_p90_error_under_15_percent_on_held_out_points(h100_fit, h100_points):
    model, rep = h100_fit
    assert rep.n_test >= 100 and rep.n_train + rep.n_test == len(h100_points.y)
    assert rep.p90_rel_err < 0.15
    assert rep.r2 > 0.95
    assert 0 <= model.margin <= 0.5


def test_a100_points_fit_too():
    pts = load_points("a100")
    _, rep = fit_and_report(pts.x, pts.y)
    assert rep.p90_rel_err < 0.15


def test_profiles_cover_prefill_decode_and_mixed_batches(h100_points):
    kinds = set(h100_points.kind)
    assert kinds == {"prefill", "decode", "mixed"}
    assert np.all(h100_points.y > 0) and np.all(h100_points.x[:, 0] + h100_points.x[:, 1] <= 4096)


def test_unknown_hardware_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="hardware"):
        load_points("tpu")
    with pytest.raises(FileNotFoundError, match="profile file missing"):
        load_points("h100", root=tmp_path)


def test_fit_recovers_an_exact_max_of_affine_model():
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.integers(0, 4000, 400), rng.integers(0, 256, 400), rng.integers(0, 10**6, 400),
                         rng.integers(0, 10**7, 400), rng.integers(1, 64, 400)]).astype(float)
    y = TRUE.times(x)
    model, rep = fit_and_report(x, y)
    assert rep.r2 > 0.999 and rep.p90_rel_err < 0.01


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError):
        fit(np.ones((3, 5)), np.ones(3))
    with pytest.raises(ValueError, match="positive"):
        fit(np.ones((10, 5)), np.zeros(10))


@settings(max_examples=200, deadline=None)
@given(limit=st.floats(0.01, 0.5), decode=st.integers(0, 300), ctx=st.integers(0, 4000),
       prior=st.integers(0, 8000), margin=st.floats(0, 0.3))
def test_conservative_inverse_never_overshoots(limit, decode, ctx, prior, margin):
    model = TRUE.with_margin(margin)
    n = model.max_prefill_tokens(limit, decode, decode * ctx, prior)
    shape = BatchShape(n, decode, decode * ctx, attention_pairs(n, prior), decode + (1 if n else 0))
    if n > 0:   # 0 also covers "the decode batch alone does not fit"
        assert model.planned_time(shape) <= limit + 1e-12


@settings(max_examples=200, deadline=None)
@given(limit=st.floats(0.01, 0.3), chunks=st.lists(st.tuples(st.integers(1, 2000), st.integers(0, 6000)), max_size=5),
       ctxs=st.lists(st.integers(1, 8000), max_size=40))
def test_a_batch_within_the_linear_budget_is_within_the_model(limit, chunks, ctxs):
    b = TRUE.budget(limit)
    cost = sum(b.prefill_cost(c, p) + b.per_chunk for c, p in chunks) + sum(b.decode_cost(x) for x in ctxs)
    shape = BatchShape(sum(c for c, _ in chunks), len(ctxs), sum(ctxs),
                       sum(attention_pairs(c, p) for c, p in chunks), len(chunks) + len(ctxs))
    if cost <= b.tokens:
        assert TRUE.planned_time(shape) <= limit + 1e-12


def test_budget_is_empty_when_the_limit_is_below_the_floor():
    assert TRUE.budget(0.001).tokens == 0.0


def test_calibrator_refits_from_timed_batches():
    cal = Calibrator(min_points=32)
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="needs 32"):
        cal.refit()
    for _ in range(64):
        s = BatchShape(int(rng.integers(0, 3000)), int(rng.integers(0, 128)), int(rng.integers(0, 10**5)),
                       int(rng.integers(0, 10**6)), int(rng.integers(1, 64)))
        cal.observe(s, TRUE.time(s))
    model, rep = cal.refit()
    assert rep.p90_rel_err < 0.1 and len(cal) == 64


def test_model_validation():
    with pytest.raises(ValueError):
        AffinePiece(-1.0, (0, 0, 0, 0, 0))
    with pytest.raises(ValueError):
        PerfModel(())
    with pytest.raises(ValueError):
        TRUE.with_margin(1.5)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(*[st.integers(0, 10**7)] * 5), min_size=1, max_size=40))
def test_scalar_time_equals_the_vectorised_times_bit_for_bit(h100_fit, rows):
    model = h100_fit[0]
    x = np.array(rows, dtype=float)
    assert [model.time(BatchShape(*r)) for r in rows] == model.times(x).tolist()


def test_budget_is_memoised_per_limit(h100_fit):
    model = h100_fit[0]
    assert model.budget(0.05) is model.budget(0.05)
    assert model.budget(0.05) == model._budget(0.05)
