"""Paged-attention and KV-cache kernels, each as a torch reference and as a Triton kernel.

    attention_ref.py / attention_triton.py   paged decode and chunked-prefill attention
    kv_ops_ref.py    / kv_ops_triton.py      write_kv, gather_blocks, scatter_blocks

Both implementations of an op share one signature and contract (see the ``*_ref`` docstrings),
so the engine picks a ``KernelBackend`` once with ``select_backend`` and calls through it.
Importing this package never imports triton: the Triton modules are loaded only when the
"triton" backend is selected. Triton runs on CPU tensors only under its interpreter, which
must be enabled (``TRITON_INTERPRET=1``) before triton is first imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

_TRUE = {"1", "true", "on", "yes", "y"}


def interpreter_enabled() -> bool:
    """Whether ``TRITON_INTERPRET`` asks Triton to run kernels in its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


@dataclass(frozen=True)
class KernelBackend:
    """The five kernel entry points of one implementation.

    Signatures are those of ``attention_ref.paged_decode_attention_ref``,
    ``attention_ref.paged_prefill_attention_ref``, ``kv_ops_ref.write_kv_ref``,
    ``kv_ops_ref.gather_blocks_ref`` and ``kv_ops_ref.scatter_blocks_ref``.
    """

    name: str
    decode_attention: Callable[..., torch.Tensor]
    prefill_attention: Callable[..., torch.Tensor]
    write_kv: Callable[..., None]
    gather_blocks: Callable[..., torch.Tensor]
    scatter_blocks: Callable[..., None]


def _torch_backend() -> KernelBackend:
    from functools import partial

    from kernels import attention_ref, kv_ops_ref

    workspace = attention_ref.Workspace()  # scratch reused across layers and steps of one engine
    return KernelBackend(
        name="torch",
        decode_attention=partial(attention_ref.paged_decode_attention_ref, workspace=workspace),
        prefill_attention=partial(attention_ref.paged_prefill_attention_ref, workspace=workspace),
        write_kv=kv_ops_ref.write_kv_ref,
        gather_blocks=kv_ops_ref.gather_blocks_ref,
        scatter_blocks=kv_ops_ref.scatter_blocks_ref,
    )


def _triton_backend() -> KernelBackend:
    """Raises ImportError when triton is not installed."""
    from kernels import attention_triton, kv_ops_triton

    return KernelBackend(
        name="triton",
        decode_attention=attention_triton.paged_decode_attention_triton,
        prefill_attention=attention_triton.paged_prefill_attention_triton,
        write_kv=kv_ops_triton.write_kv_triton,
        gather_blocks=kv_ops_triton.gather_blocks_triton,
        scatter_blocks=kv_ops_triton.scatter_blocks_triton,
    )


def select_backend(device: torch.device | str, prefer: str = "auto") -> KernelBackend:
    """Pick the kernels for tensors on ``device``.

    ``prefer="auto"``: Triton on CUDA when triton imports, torch otherwise.
    ``prefer="torch"``: always the torch reference.
    ``prefer="triton"``: Triton or an error; on a non-CUDA device only under the interpreter.

    Raises:
        ValueError: unknown ``prefer``, or Triton forced on CPU without ``TRITON_INTERPRET=1``.
        ImportError: Triton forced but not installed.
    """
    device = torch.device(device)
    if prefer not in ("auto", "torch", "triton"):
        raise ValueError(f"prefer must be 'auto', 'torch' or 'triton', got {prefer!r}")
    if prefer == "torch":
        return _torch_backend()
    if prefer == "triton":
        if device.type != "cuda" and not interpreter_enabled():
            raise ValueError(
                f"Triton kernels on device {device} need the interpreter: set TRITON_INTERPRET=1 "
                "before triton is first imported, or use prefer='torch'"
            )
        try:
            return _triton_backend()
        except ImportError as exc:
            raise ImportError(f"prefer='triton' but triton cannot be imported: {exc}") from exc
    if device.type == "cuda":
        try:
            return _triton_backend()
        except ImportError:
            pass
    return _torch_backend()


__all__ = ["KernelBackend", "interpreter_enabled", "select_backend"]
