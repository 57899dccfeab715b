"""A point-to-point pair (rank 0 sends, rank 1 receives) whose control plane is a ``TCPStore``.

Base of the gloo and NCCL transports: they differ only in how bytes move (``_join_data``,
``_send_bytes``, ``_recv_bytes``, ``_empty``). Collective libraries cannot time out a
send/recv without breaking the pair (gloo closes it, NCCL hangs until aborted), so the data
plane only ever waits for bytes that are already committed; every wait that may time out
happens on the store. Transfer ``k`` (tag ``k``)::

    receiver: set k/req ─▶ sender thread: set k/go=1 ─▶ receiver (saw go): set k/ready, recv
    sender thread (saw ready): send ─▶ receiver: set k/ans (1 confirm, 2 abort)
    sender thread: release ─▶ reap() reports it

A send starts only once the receiver has committed to that exact receive, so a receiver that
gives up early never strands a send (NCCL, which has no tags, also needs sends and receives in
the same order: pulls on one endpoint are serialized, and the sender sends one at a time).

An offer that expires or is withdrawn before ``req`` gets ``go=0`` (the receiver fails fast).
The store lives in the sender, so a dead sender surfaces at once as ``TransferFailed``; a
silent one as ``TransferTimeout`` at the deadline. Nothing waits forever.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
import uuid
from abc import abstractmethod
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from engine.kv_cache import KVHandoff
from kv_transfer.transport import (KVTransport, Released, ReleaseReason, SenderAddress, TransferFailed,
                                   TransferTicket, TransferTimeout, check_ticket)

CONFIRM, ABORT = 1, 2


@dataclass(frozen=True)
class PairAddress:
    """Where rank 1 finds the pair; travels through Ray. ``unique_id`` is NCCL's, empty for gloo."""

    host: str
    port: int
    name: str
    unique_id: tuple[int, ...] = ()


@dataclass
class _Offer:
    ticket: TransferTicket
    buffer: torch.Tensor
    phase: str = "offered"       # offered → go → sent
    reason: ReleaseReason | None = None


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view, so every dtype (bfloat16 included) travels as raw bytes."""
    return t.contiguous().view(-1).view(torch.uint8)


def store_timeout(until: float) -> timedelta:
    return timedelta(seconds=max(until - time.time(), 0.001))


def _classify(exc: Exception, what: str) -> Exception:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "imeout" in text or "imed out" in text:
        return TransferTimeout(f"{what}: {text}")
    return TransferFailed(f"{what}: {text}")


def open_store(host: str = "127.0.0.1") -> dist.TCPStore:
    """Sender side: a rendezvous store on a free port (``store.port``)."""
    return dist.TCPStore(host, 0, 2, True, wait_for_workers=False, timeout=timedelta(seconds=60))


class StorePairTransport(KVTransport):
    def __init__(self, address: PairAddress, rank: int, store: dist.TCPStore | None = None,
                 connect_timeout_s: float = 60.0, poll_s: float = 0.001):
        """Join the pair; blocks until the peer joins too (or ``connect_timeout_s``)."""
        super().__init__()
        if rank not in (0, 1):
            raise ValueError("rank must be 0 (sender) or 1 (receiver)")
        timeout = timedelta(seconds=connect_timeout_s)
        base = store or dist.TCPStore(address.host, address.port, 2, False, timeout=timeout)
        self.address, self.rank, self.poll_s = address, rank, poll_s
        self._base = base
        self._store = dist.PrefixStore(address.name + "/x", base)
        self._join_data(base, timeout)
        self._tags = itertools.count(1)
        self._lock = threading.Lock()
        self._offers: dict[str, _Offer] = {}
        self._done: list[Released] = []
        self._pulled: set[str] = set()
        self._pull_lock = threading.Lock()
        self._closed, self._wake = threading.Event(), threading.Event()
        if rank == 0:
            threading.Thread(target=self._serve_loop, daemon=True, name=f"kv-{self.name}-sender").start()

    # -- data plane (subclasses) -----------------------------------------------------------
    @abstractmethod
    def _join_data(self, store: dist.Store, timeout: timedelta) -> None:
        """Connect the data channel of the pair (collective: both ranks call it)."""

    @abstractmethod
    def _send_bytes(self, data: torch.Tensor, tag: int, until: float) -> None:
        """Send a flat uint8 tensor to rank 1 (which is receiving it); returns when it may be reused."""

    @abstractmethod
    def _recv_bytes(self, data: torch.Tensor, tag: int, until: float) -> None:
        """Receive into a flat uint8 tensor from rank 0; the sender has committed the send."""

    @abstractmethod
    def _empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A receive buffer on this transport's device."""

    # -- sender ----------------------------------------------------------------------------
    def offer(self, handoff: KVHandoff, deadline_s: float) -> TransferTicket:
        if self.rank != 0:
            raise TransferFailed(f"only rank 0 of a {self.name} pair sends")
        start = time.perf_counter()
        tag = next(self._tags)
        ticket = TransferTicket(uuid.uuid4().hex[:16], handoff.meta.request_id, handoff.meta, handoff.nbytes,
                                self.name, SenderAddress(socket.gethostname(), os.getpid(), self.address.name,
                                                         self.address.port, tag), time.time() + deadline_s)
        with self._lock:
            self._offers[ticket.transfer_id] = _Offer(ticket, as_bytes(handoff.buffer))
        self._wake.set()
        self._record(ticket, "offer", time.perf_counter() - start)
        return ticket

    def _serve_loop(self) -> None:
        while not self._closed.is_set():
            with self._lock:
                live = list(self._offers.values())
            for off in live:
                try:
                    self._serve(off)
                except Exception:          # broken pair or store: give the bytes up
                    self._finish(off, ReleaseReason.ABORTED, go=False)
            if live:
                time.sleep(self.poll_s)
            else:
                self._wake.wait(0.1)
                self._wake.clear()

    def _serve(self, off: _Offer) -> None:
        """One poll of one offer: advance its handshake, free it when answered or expired."""
        tag, expired = off.ticket.sender.tag, off.ticket.deadline <= time.time()
        if off.phase == "offered":
            if expired:
                return self._finish(off, ReleaseReason.EXPIRED, go=True)
            if self._store.check([f"{tag}/req"]):
                self._store.set(f"{tag}/go", "1")
                off.phase = "go"
        elif off.phase == "go":
            if self._store.check([f"{tag}/ready"]):
                self._send_bytes(off.buffer, tag, max(off.ticket.deadline, time.time() + 1.0))
                off.phase = "sent"
            elif expired:
                self._finish(off, ReleaseReason.EXPIRED, go=False)
        elif self._store.check([f"{tag}/ans"]):
            code = int(self._store.get(f"{tag}/ans"))
            self._finish(off, ReleaseReason.CONFIRMED if code == CONFIRM else ReleaseReason.ABORTED, go=False)
        elif expired:
            self._finish(off, ReleaseReason.EXPIRED, go=False)

    def _finish(self, off: _Offer, reason: ReleaseReason, go: bool) -> None:
        if go:
            self._store.set(f"{off.ticket.sender.tag}/go", "0")   # a late receiver learns it is withdrawn
        with self._lock:
            if self._offers.pop(off.ticket.transfer_id, None) is not None:
                self._done.append(Released(off.ticket.transfer_id, off.ticket.request_id, reason))

    def reap(self, now: float | None = None) -> list[Released]:
        """Hand over what the serving thread released (it enforces the deadlines itself)."""
        with self._lock:
            out, self._done = self._done, []
        return out

    def pending(self) -> list[str]:
        with self._lock:
            return list(self._offers)

    # -- receiver --------------------------------------------------------------------------
    def pull(self, ticket: TransferTicket, deadline_s: float) -> KVHandoff:
        check_ticket(ticket, self.name)
        with self._pull_lock:
            return self._pull(ticket, deadline_s)

    def _pull(self, ticket: TransferTicket, deadline_s: float) -> KVHandoff:
        start = time.perf_counter()
        until = min(ticket.deadline, time.time() + deadline_s)
        tag, what = ticket.sender.tag, f"transfer {ticket.transfer_id} of {ticket.request_id}"
        buffer = self._empty(ticket.meta.shape, getattr(torch, ticket.meta.dtype))
        try:
            self._store.set(f"{tag}/req", "1")
            self._store.wait([f"{tag}/go"], store_timeout(until))
            go = self._store.get(f"{tag}/go")
            if go == b"1":
                self._store.set(f"{tag}/ready", "1")          # committed: the sender sends now
        except Exception as exc:
            raise _classify(exc, what) from exc
        if go != b"1":
            raise TransferFailed(f"{what} was withdrawn or expired by the sender")
        try:
            self._recv_bytes(as_bytes(buffer), tag, max(until, time.time() + 1.0))
        except TransferFailed:
            raise
        except Exception as exc:
            raise TransferFailed(f"{what}: {str(exc).splitlines()[0]}") from exc
        self._pulled.add(ticket.transfer_id)
        self._record(ticket, "pull", time.perf_counter() - start)
        return KVHandoff(ticket.meta, buffer)

    def confirm(self, ticket: TransferTicket) -> None:
        if ticket.transfer_id not in self._pulled:
            raise TransferFailed(f"transfer {ticket.transfer_id} was not pulled here or is already confirmed")
        self._pulled.discard(ticket.transfer_id)
        self._answer(ticket, CONFIRM)

    def abort(self, ticket: TransferTicket) -> None:
        with self._lock:
            off = self._offers.get(ticket.transfer_id)
        if off is not None:                          # sender withdraws
            self._finish(off, ReleaseReason.ABORTED, go=off.phase == "offered")
            return
        if self.rank == 1:
            self._pulled.discard(ticket.transfer_id)
            try:
                self._answer(ticket, ABORT)
            except TransferFailed:
                pass                                 # the sender is gone: nothing left to free

    def _answer(self, ticket: TransferTicket, code: int) -> None:
        try:
            self._store.set(f"{ticket.sender.tag}/ans", str(code))
        except Exception as exc:
            raise TransferFailed(f"answer for transfer {ticket.transfer_id}: {str(exc).splitlines()[0]}") from exc

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        with self._lock:
            self._offers.clear()
        self._pulled.clear()
