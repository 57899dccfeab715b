"""Fixtures for the router tests (pure Python: no torch, no ray)."""

from __future__ import annotations

import pytest

from router.config import OverloadConfig, SchedulerConfig, Thresholds
from router.perf_model import fit_and_report
from router.profiles import load_points


@pytest.fixture(scope="session")
def h100_points():
    return load_points("h100")


@pytest.fixture(scope="session")
def h100_fit(h100_points):
    return fit_and_report(h100_points.x, h100_points.y)


@pytest.fixture(scope="session")
def exact_model(h100_fit):
    """The fitted H100 model used as ground truth: planning and replay share it, margin 0."""
    return h100_fit[0].with_margin(0.0)


NEVER = Thresholds(queue_wait_s=1e9, ttft_ratio=1e9, kv_usage=1.0)


@pytest.fixture
def calm_config():
    """A config whose overload machine never leaves NORMAL (to test admission alone)."""
    return SchedulerConfig(overload=OverloadConfig(degraded=NEVER, batch_paused=NEVER, interactive_only=NEVER))
