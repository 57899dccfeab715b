"""Fixtures for simulator tests (pure Python: no torch, no ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"


@pytest.fixture(scope="session")
def traces() -> Path:
    if not TRACES.is_dir():
        pytest.skip(f"shared traces not found at {TRACES}")
    return TRACES


@pytest.fixture(scope="session")
def conv_trace(traces) -> str:
    return str(traces / "AzureLLMInferenceTrace_conv.csv")
