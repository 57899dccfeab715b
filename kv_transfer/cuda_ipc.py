"""Same-GPU transport through CUDA IPC: the receiver maps the sender's buffer, no copy in between.

``offer`` keeps the handoff's CUDA buffer and exports it with torch.multiprocessing's CUDA
tensor sharing (``reduce_tensor``: a ``cudaIpcMemHandle`` plus torch's cross-process reference
count, which keeps the memory alive while any receiver maps it). That handle is plain bytes in
the ticket. ``pull`` rebuilds the tensor in the receiving process — a view of the sender's
memory — and ``import_kv`` copies it into the receiver's cache (one device-to-device copy).
Both processes must see the same device. Control uses a 64-byte /dev/shm word per transfer
exactly like ``cpu_shm`` (the receiver writes CONFIRMED/ABORTED; the sender's ``reap`` frees),
so a dead sender is detected by pid and nothing waits forever. Importable without CUDA.
"""

from __future__ import annotations

import os
import pickle
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.kv_cache import KVHandoff
from kv_transfer.cpu_shm import ABORTED, CONFIRMED, PREFIX, READY, ShmControl, pid_alive, release_reason
from kv_transfer.transport import (KVTransport, Released, SenderAddress, TransferFailed,
                                   TransferTicket, check_ticket)


@dataclass
class _Offer:
    ticket: TransferTicket
    buffer: torch.Tensor
    control: ShmControl


class CudaIpcTransport(KVTransport):
    name = "cuda_ipc"

    def __init__(self, shm_dir: str | Path = "/dev/shm"):
        super().__init__()
        if not torch.cuda.is_available():
            raise TransferFailed("the cuda_ipc transport needs a CUDA device")
        self.shm_dir = Path(shm_dir)
        self._offers: dict[str, _Offer] = {}
        self._pulled: dict[str, tuple[torch.Tensor, ShmControl]] = {}

    # -- sender ----------------------------------------------------------------------------
    def offer(self, handoff: KVHandoff, deadline_s: float) -> TransferTicket:
        from torch.multiprocessing.reductions import reduce_tensor

        if not handoff.buffer.is_cuda:
            raise TransferFailed("cuda_ipc offers CUDA buffers only")
        start = time.perf_counter()
        buffer = handoff.buffer.contiguous()
        torch.cuda.current_stream(buffer.device).synchronize()   # export_kv's gather has landed
        tid = uuid.uuid4().hex[:16]
        control = ShmControl.create(self.shm_dir / f"{PREFIX}{os.getpid()}-{tid}")
        control.claim(tid)
        handle = pickle.dumps(reduce_tensor(buffer))
        ticket = TransferTicket(tid, handoff.meta.request_id, handoff.meta, handoff.nbytes, self.name,
                                SenderAddress(socket.gethostname(), os.getpid(), control.path.name,
                                              handle=handle), time.time() + deadline_s)
        self._offers[tid] = _Offer(ticket, buffer, control)
        control.set(READY)
        self._record(ticket, "offer", time.perf_counter() - start)
        return ticket

    def reap(self, now: float | None = None) -> list[Released]:
        now = time.time() if now is None else now
        out = []
        for tid, off in list(self._offers.items()):
            reason = release_reason(off.control.get(), off.ticket.deadline, now)
            if reason is None:
                continue
            self._free(tid)
            out.append(Released(tid, off.ticket.request_id, reason))
        return out

    def pending(self) -> list[str]:
        return list(self._offers)

    def _free(self, tid: str) -> None:
        """Drop our buffer; torch's IPC ref count keeps memory a receiver still maps."""
        control = self._offers.pop(tid).control
        control.unlink()
        control.close()

    # -- receiver --------------------------------------------------------------------------
    def pull(self, ticket: TransferTicket, deadline_s: float) -> KVHandoff:
        check_ticket(ticket, self.name)
        start = time.perf_counter()
        control = ShmControl.open(self.shm_dir / ticket.sender.endpoint, ticket)
        if control.get() != READY or not pid_alive(ticket.sender.pid):
            raise TransferFailed(f"transfer {ticket.transfer_id} is released or its sender died")
        rebuild, args = pickle.loads(ticket.sender.handle)
        try:
            buffer = rebuild(*args)
        except Exception as exc:
            raise TransferFailed(f"transfer {ticket.transfer_id}: cannot map the IPC handle: {exc}") from exc
        self._pulled[ticket.transfer_id] = (buffer, control)
        self._record(ticket, "pull", time.perf_counter() - start)
        return KVHandoff(ticket.meta, buffer.view(ticket.meta.shape))

    def confirm(self, ticket: TransferTicket) -> None:
        entry = self._pulled.pop(ticket.transfer_id, None)
        if entry is None:
            raise TransferFailed(f"transfer {ticket.transfer_id} was not pulled here or is already confirmed")
        self._answer(ticket, entry[1], CONFIRMED)

    def abort(self, ticket: TransferTicket) -> None:
        if ticket.transfer_id in self._offers:
            self._free(ticket.transfer_id)
            return
        entry = self._pulled.pop(ticket.transfer_id, None)
        if entry is not None:
            self._answer(ticket, entry[1], ABORTED)

    def _answer(self, ticket: TransferTicket, control: ShmControl, state: int) -> None:
        torch.cuda.current_stream().synchronize()               # the import's copy has finished
        control.set(state)
        if not pid_alive(ticket.sender.pid):
            control.unlink()
        control.close()
        torch.cuda.ipc_collect()

    def close(self) -> None:
        for tid in list(self._offers):
            self._free(tid)
        self._pulled.clear()
