"""GPU transport over NCCL through cupy: one communicator per prefill/decode pair (rank 0 sends).

The sender creates the NCCL unique id and the control store; both travel through Ray as a
``PairAddress`` (plain data), then both ranks join at once (NCCL init is collective)::

    addr = ray.get(prefill.nccl_listen.remote(), timeout=30)         # NcclTransport.listen()
    ray.get([prefill.nccl_join.remote(addr, 0), decode.nccl_join.remote(addr, 1)], timeout=120)

Handshake and deadlines are ``pair.StorePairTransport``'s. NCCL has no timeouts of its own, so
each send/recv runs on a private stream and the host polls a CUDA event until the deadline;
past it the communicator is aborted and the transfer fails (``TransferFailed``; the pair must
be rebuilt). NCCL matches by order, not tag: the base class serializes pulls and sends.
cupy is imported lazily, so this module imports (and its tests skip) on machines without CUDA.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import torch
import torch.distributed as dist

from kv_transfer.pair import PairAddress, StorePairTransport, open_store
from kv_transfer.transport import TransferFailed


def _nccl():
    try:
        from cupy.cuda import nccl
    except ImportError as exc:
        raise TransferFailed("the nccl transport needs cupy (pip install cupy-cuda12x)") from exc
    return nccl


class NcclTransport(StorePairTransport):
    name = "nccl"

    def __init__(self, address: PairAddress, rank: int, store: dist.TCPStore | None = None,
                 device: int | None = None, **kwargs):
        if not torch.cuda.is_available():
            raise TransferFailed("the nccl transport needs a CUDA device")
        self.device = torch.device("cuda", torch.cuda.current_device() if device is None else device)
        super().__init__(address, rank, store, **kwargs)

    @staticmethod
    def listen(name: str | None = None, host: str = "127.0.0.1") -> tuple[PairAddress, dist.TCPStore]:
        """Sender side: NCCL unique id + control store, as plain data for Ray."""
        store = open_store(host)
        uid = tuple(int(x) for x in _nccl().get_unique_id())
        return PairAddress(host, store.port, name or f"kvpair-{uuid.uuid4().hex[:8]}", uid), store

    def _join_data(self, store: dist.Store, timeout: timedelta) -> None:
        nccl = _nccl()
        with torch.cuda.device(self.device):
            self._comm = nccl.NcclCommunicator(2, self.address.unique_id, self.rank)
            self._stream = torch.cuda.Stream(self.device)

    def _run(self, op, data: torch.Tensor, until: float, what: str) -> None:
        nccl = _nccl()
        with torch.cuda.device(self.device):
            self._stream.wait_stream(torch.cuda.default_stream(self.device))   # data is ready
            op(data.data_ptr(), data.numel(), nccl.NCCL_UINT8, 1 - self.rank, self._stream.cuda_stream)
            done = torch.cuda.Event()
            done.record(self._stream)
            while not done.query():
                if time.time() > until:
                    self._comm.abort()
                    raise TransferFailed(f"nccl {what} did not finish by its deadline; communicator aborted")
                time.sleep(self.poll_s)
            data.record_stream(self._stream)

    def _send_bytes(self, data: torch.Tensor, tag: int, until: float) -> None:
        self._run(self._comm.send, data, until, f"send {tag}")

    def _recv_bytes(self, data: torch.Tensor, tag: int, until: float) -> None:
        self._run(self._comm.recv, data, until, f"recv {tag}")

    def _empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=self.device)

    def close(self) -> None:
        super().close()
        comm = getattr(self, "_comm", None)
        if comm is not None:
            comm.destroy()
            self._comm = None
