"""select_backend picks torch off-GPU, Triton on CUDA, and honours (or refuses) a preference."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import KernelBackend, select_backend
from kernels.attention_ref import paged_decode_attention_ref


def test_cpu_defaults_to_torch():
    backend = select_backend("cpu")
    assert backend.name == "torch" and backend.decode_attention.func is paged_decode_attention_ref


def test_backend_is_frozen():
    with pytest.raises(AttributeError):
        select_backend("cpu").name = "other"  # type: ignore[misc]
    assert isinstance(select_backend(torch.device("cpu"), prefer="torch"), KernelBackend)


def test_unknown_preference_is_rejected():
    with pytest.raises(ValueError, match="prefer must be"):
        select_backend("cpu", prefer="cuda")


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        select_backend("cpu", prefer="triton")


def test_triton_on_cpu_under_interpreter(triton_ops, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    attention, kv_ops = triton_ops
    backend = select_backend("cpu", prefer="triton")
    assert backend.name == "triton"
    assert backend.prefill_attention is attention.paged_prefill_attention_triton
    assert backend.scatter_blocks is kv_ops.scatter_blocks_triton


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_defaults_to_triton(triton_ops):
    assert select_backend("cuda").name == "triton"


def test_importing_kernels_does_not_import_triton():
    code = "import sys, kernels; kernels.select_backend('cpu'); assert 'triton' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
