"""Same-host CPU transport through files in /dev/shm: one copy in, zero copies out.

Each offer is a segment ``/dev/shm/tandem-kv-<sender pid>-<transfer id>``: a 64-byte header
(a state word) and the KV bytes. The sender copies the buffer in and marks it READY; the
receiver maps the file and views it as a torch tensor (no copy); ``import_kv`` then copies it
into the paged cache. Control flows through the header: the receiver writes CONFIRMED or
ABORTED, and the sender's ``reap`` unlinks the segment when it sees that or when the deadline
passes. Names carry the sender's pid: a receiver that finds the sender dead unlinks the
segment itself, and every new ``ShmTransport`` unlinks segments of dead pids
(``reap_orphans``), so a killed worker's offers do not outlive the next worker start.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.kv_cache import KVHandoff
from kv_transfer.transport import (KVTransport, Released, ReleaseReason, SenderAddress, TransferFailed,
                                   TransferTicket, TransferTimeout, check_ticket)

PREFIX = "tandem-kv-"
HEADER = 64
WRITING, READY, CONFIRMED, ABORTED = 0, 1, 2, 3
_STATE = struct.Struct("<i")          # at offset 0
_OWNER = struct.Struct("<16s")        # at offset 8: the transfer id the segment now carries
_CHUNK = 2**20                        # pooled segments are sized in whole MiB
# The receiver maps pages that exist: populating them at map time saves a fault per page. The
# sender's pages are new: populating would zero them first, then the copy writes them again.
_OPEN_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


def release_reason(state: int, deadline: float, now: float) -> ReleaseReason | None:
    """Why a sender may free an offer whose control word reads ``state``, or None to keep it."""
    if state == CONFIRMED:
        return ReleaseReason.CONFIRMED
    if state == ABORTED:
        return ReleaseReason.ABORTED
    if deadline <= now:
        return ReleaseReason.EXPIRED
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphans(shm_dir: Path = Path("/dev/shm")) -> list[str]:
    """Unlink segments whose sender process is gone; return their names."""
    gone = []
    for path in shm_dir.glob(PREFIX + "*"):
        pid = int(path.name[len(PREFIX):].split("-", 1)[0])
        if not pid_alive(pid):
            path.unlink(missing_ok=True)
            gone.append(path.name)
    return gone


class ShmControl:
    """A segment in /dev/shm: a 64-byte header (state word, owning transfer id), then the payload.

    ``create`` and ``claim`` are the sender's; ``open`` is the receiver's and refuses a segment
    that now carries another transfer (it was recycled), so a stale ticket never reads new bytes.
    """

    def __init__(self, path: Path, mm: mmap.mmap):
        self.path, self.mm = path, mm
        self.capacity = len(mm) - HEADER

    @classmethod
    def create(cls, path: Path, payload: int = 0) -> ShmControl:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, HEADER + payload)
            return cls(path, mmap.mmap(fd, HEADER + payload, flags=mmap.MAP_SHARED))
        finally:
            os.close(fd)

    @classmethod
    def open(cls, path: Path, ticket: TransferTicket, payload: int = 0) -> ShmControl:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            pid = ticket.sender.pid
            cause = "released by the sender" if pid_alive(pid) else f"sender pid {pid} died"
            raise TransferFailed(f"segment of transfer {ticket.transfer_id} is gone ({cause})") from None
        try:
            size = os.fstat(fd).st_size
            if size < HEADER + payload:
                raise TransferFailed(f"segment of transfer {ticket.transfer_id} is too small")
            control = cls(path, mmap.mmap(fd, size, flags=_OPEN_FLAGS))
        finally:
            os.close(fd)
        if control.owner() != ticket.transfer_id:
            control.close()
            raise TransferFailed(f"segment of transfer {ticket.transfer_id} was released and reused")
        return control

    def claim(self, transfer_id: str) -> None:
        """Sender: this segment now carries ``transfer_id`` (state WRITING until ``set(READY)``)."""
        self.set(WRITING)
        _OWNER.pack_into(self.mm, 8, transfer_id.encode())

    def owner(self) -> str:
        return _OWNER.unpack_from(self.mm, 8)[0].rstrip(b"\0").decode()

    def get(self) -> int:
        return _STATE.unpack_from(self.mm, 0)[0]

    def set(self, state: int) -> None:
        _STATE.pack_into(self.mm, 0, state)

    def payload(self, dtype: torch.dtype, count: int) -> torch.Tensor:
        """A tensor viewing the payload; it keeps the mapping alive while it lives."""
        return torch.frombuffer(self.mm, dtype=dtype, count=count, offset=HEADER)

    def unlink(self) -> None:
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Unmap now if no tensor views the payload, else when the last one goes."""
        try:
            self.mm.close()
        except BufferError:
            pass
        self.mm = None


@dataclass
class _Offer:
    ticket: TransferTicket
    control: ShmControl


class ShmTransport(KVTransport):
    """Segments of confirmed transfers go back to a small pool and are reused: writing into
    pages that already exist costs one memcpy, while a fresh tmpfs file pays a page fault per
    4 KiB first (about 2x the copy). Expired or aborted segments are unlinked, never reused,
    since a late receiver may still be reading them. ``pool_bytes=0`` turns pooling off.
    """

    name = "cpu_shm"

    def __init__(self, shm_dir: str | Path = "/dev/shm", poll_s: float = 0.001, pool_bytes: int = 256 * 2**20):
        """Also unlinks segments left by dead processes (a killed worker's unreaped offers)."""
        super().__init__()
        self.shm_dir, self.poll_s, self.pool_bytes = Path(shm_dir), poll_s, pool_bytes
        self._pool: list[ShmControl] = []
        reap_orphans(self.shm_dir)
        self._offers: dict[str, _Offer] = {}
        self._pulled: dict[str, ShmControl] = {}

    # -- sender ----------------------------------------------------------------------------
    def offer(self, handoff: KVHandoff, deadline_s: float) -> TransferTicket:
        start = time.perf_counter()
        tid = uuid.uuid4().hex[:16]
        nbytes = handoff.nbytes
        control = self._segment(nbytes, tid)
        control.claim(tid)
        try:
            if nbytes:
                view = control.payload(torch.uint8, nbytes)
                view.copy_(handoff.buffer.contiguous().view(-1).view(torch.uint8))
                del view
        except BaseException:
            control.unlink()
            control.close()
            raise
        ticket = TransferTicket(tid, handoff.meta.request_id, handoff.meta, nbytes, self.name,
                                SenderAddress(socket.gethostname(), os.getpid(), control.path.name),
                                time.time() + deadline_s)
        self._offers[tid] = _Offer(ticket, control)
        self._publish(control)
        self._record(ticket, "offer", time.perf_counter() - start)
        return ticket

    def _segment(self, nbytes: int, tid: str) -> ShmControl:
        """A pooled segment that fits (without wasting more than half of it), else a new one."""
        for i, seg in enumerate(self._pool):
            if nbytes <= seg.capacity <= 2 * max(nbytes, _CHUNK):
                return self._pool.pop(i)
        size = -(-nbytes // _CHUNK) * _CHUNK if self.pool_bytes else nbytes
        return ShmControl.create(self.shm_dir / f"{PREFIX}{os.getpid()}-{tid}", size)

    def _publish(self, control: ShmControl) -> None:
        control.set(READY)

    def reap(self, now: float | None = None) -> list[Released]:
        now = time.time() if now is None else now
        out = []
        for tid, off in list(self._offers.items()):
            reason = release_reason(off.control.get(), off.ticket.deadline, now)
            if reason is None:
                continue
            self._free(tid, reuse=reason is ReleaseReason.CONFIRMED)
            out.append(Released(tid, off.ticket.request_id, reason))
        return out

    def pending(self) -> list[str]:
        return list(self._offers)

    def _free(self, tid: str, reuse: bool = False) -> None:
        control = self._offers.pop(tid).control
        pooled = sum(c.capacity for c in self._pool)
        if reuse and pooled + control.capacity <= self.pool_bytes:
            control.claim("")
            self._pool.append(control)
        else:
            control.unlink()
            control.close()

    # -- receiver --------------------------------------------------------------------------
    def pull(self, ticket: TransferTicket, deadline_s: float) -> KVHandoff:
        check_ticket(ticket, self.name)
        start = time.perf_counter()
        until = min(ticket.deadline, time.time() + deadline_s)
        path = self.shm_dir / ticket.sender.endpoint
        while True:
            control = ShmControl.open(path, ticket, ticket.nbytes)
            state = control.get()
            if state == READY:
                break
            control.close()
            if state != WRITING:
                raise TransferFailed(f"transfer {ticket.transfer_id} was already released (state {state})")
            if not pid_alive(ticket.sender.pid):
                path.unlink(missing_ok=True)
                raise TransferFailed(f"sender pid {ticket.sender.pid} died while writing "
                                     f"transfer {ticket.transfer_id}")
            if time.time() >= until:
                raise TransferTimeout(f"transfer {ticket.transfer_id} of {ticket.request_id} not ready "
                                      f"within {deadline_s:.3g}s")
            time.sleep(self.poll_s)
        dtype = getattr(torch, ticket.meta.dtype)
        count = ticket.nbytes // torch.empty((), dtype=dtype).element_size()
        buffer = control.payload(dtype, count).view(ticket.meta.shape)
        self._pulled[ticket.transfer_id] = control
        self._record(ticket, "pull", time.perf_counter() - start)
        return KVHandoff(ticket.meta, buffer)

    def confirm(self, ticket: TransferTicket) -> None:
        control = self._pulled.pop(ticket.transfer_id, None)
        if control is None:
            raise TransferFailed(f"transfer {ticket.transfer_id} was not pulled here or is already confirmed")
        self._answer(ticket, control, CONFIRMED)

    def abort(self, ticket: TransferTicket) -> None:
        if ticket.transfer_id in self._offers:
            self._free(ticket.transfer_id)
            return
        control = self._pulled.pop(ticket.transfer_id, None)
        if control is None:
            try:
                control = ShmControl.open(self.shm_dir / ticket.sender.endpoint, ticket, ticket.nbytes)
            except TransferFailed:
                return
        self._answer(ticket, control, ABORTED)

    def _answer(self, ticket: TransferTicket, control: ShmControl, state: int) -> None:
        control.set(state)
        if not pid_alive(ticket.sender.pid):          # nobody left to reap it
            control.unlink()
        control.close()    # the caller's handoff may still view it: then it unmaps with the tensor

    def close(self) -> None:
        for tid in list(self._offers):
            self._free(tid)
        for control in self._pool:
            control.unlink()
            control.close()
        self._pool.clear()
        self._pulled.clear()
