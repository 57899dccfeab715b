"""Fixtures for simulator tests (pure Python: no torch, no ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"
EXCERPTS = Path(__file__).resolve().parent / "data"  # head excerpts, see data/README.md


@pytest.fixture(scope="session")
def traces() -> Path:
    """The shared traces when present, else the shipped head excerpts of the same files."""
    return TRACES if TRACES.is_dir() else EXCERPTS


@pytest.fixture(scope="session")
def conv_trace(traces) -> str:
    return str(traces / "AzureLLMInferenceTrace_conv.csv")
