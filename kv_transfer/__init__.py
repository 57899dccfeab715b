"""KV handoff between prefill and decode workers: a transport contract, its state machine, transports.

- ``transport``: ``KVTransport`` (offer / pull / confirm / abort / reap), tickets, errors, stats.
- ``handoff``: the state machine (pure Python): states, transitions, deadlines, retry decisions.
- ``flow``: ``HandoffSender`` and ``receive`` wire a transport to the state machine.
- Transports: ``cpu_shm`` (same host, /dev/shm), ``cpu_ray`` (Ray object store), ``cpu_gloo``
  (gloo pair), ``cuda_ipc`` (same GPU), ``nccl`` (GPU pair through cupy).

``select_transport(kind, **kwargs)`` builds one endpoint. Pair transports (gloo, nccl) need the
rendezvous first: ``address, store = GlooTransport.listen()`` on the sender, then both ends
construct with ``rank`` 0 / 1 at the same time (see their module docstrings).
"""

from __future__ import annotations

from importlib import import_module

from kv_transfer.transport import (KVTransport, Released, ReleaseReason, SenderAddress, TransferError,
                                   TransferFailed, TransferStats, TransferTicket, TransferTimeout)

TRANSPORTS: dict[str, tuple[str, str]] = {
    "cpu_shm": ("kv_transfer.cpu_shm", "ShmTransport"),
    "cpu_ray": ("kv_transfer.cpu_ray", "RayObjectStoreTransport"),
    "cpu_gloo": ("kv_transfer.cpu_gloo", "GlooTransport"),
    "cuda_ipc": ("kv_transfer.cuda_ipc", "CudaIpcTransport"),
    "nccl": ("kv_transfer.nccl", "NcclTransport"),
}
DEFAULT_CPU = "cpu_shm"          # measured fastest on one host (bench/kv_transfer.py)
DEFAULT_CROSS_HOST_CPU = "cpu_ray"


def transport_class(kind: str) -> type[KVTransport]:
    """The class for ``kind`` ("cpu" picks the same-host default). Raises ``ValueError`` if unknown."""
    kind = DEFAULT_CPU if kind == "cpu" else kind
    if kind not in TRANSPORTS:
        raise ValueError(f"unknown KV transport {kind!r}; choose from {sorted(TRANSPORTS)} or 'cpu'")
    module, cls = TRANSPORTS[kind]
    return getattr(import_module(module), cls)


def select_transport(kind: str, **kwargs) -> KVTransport:
    """Build one endpoint of transport ``kind`` with its constructor's ``kwargs``.

    cuda_ipc and nccl raise ``TransferFailed`` without CUDA (or cupy for nccl).
    """
    return transport_class(kind)(**kwargs)


__all__ = ["KVTransport", "Released", "ReleaseReason", "SenderAddress", "TRANSPORTS", "TransferError",
           "TransferFailed", "TransferStats", "TransferTicket", "TransferTimeout", "select_transport",
           "transport_class"]
