"""Shared fixtures. Triton runs under its interpreter when there is no GPU (set before import)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from tests.tiny_models import build_llama, build_mistral, build_qwen2  # noqa: E402


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    return build_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def llama3_rope_dir(tmp_path_factory):
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    return build_llama(tmp_path_factory.mktemp("llama3"), rope_parameters=rope, seed=1)


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory):
    return build_qwen2(tmp_path_factory.mktemp("qwen2"))


@pytest.fixture(scope="session")
def mistral_dir(tmp_path_factory):
    return build_mistral(tmp_path_factory.mktemp("mistral"))
