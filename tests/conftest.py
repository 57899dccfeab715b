"""Shared fixtures. Triton runs under its interpreter when there is no GPU (set before import).

Policy tests (tests/router) need neither torch nor a model, so torch is imported lazily here.
"""

import os

import pytest

# The test process starts Ray clusters (it forks their GCS and raylet) and also runs gRPC servers
# and clients; gRPC's fork support with the poll strategy keeps those forks safe (what Ray sets for
# its own worker processes). Set before anything imports grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "1")
os.environ.setdefault("GRPC_POLL_STRATEGY", "poll")

try:
    import torch
except ImportError:  # policy-only environments
    torch = None

if torch is None or not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    from tests.tiny_models import build_llama

    return build_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def llama3_rope_dir(tmp_path_factory):
    from tests.tiny_models import build_llama

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    return build_llama(tmp_path_factory.mktemp("llama3"), rope_parameters=rope, seed=1)


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory):
    from tests.tiny_models import build_qwen2

    return build_qwen2(tmp_path_factory.mktemp("qwen2"))


@pytest.fixture(scope="session")
def mistral_dir(tmp_path_factory):
    from tests.tiny_models import build_mistral

    return build_mistral(tmp_path_factory.mktemp("mistral"))
