"""The KV transport contract: how a prefill worker's ``KVHandoff`` reaches a decode worker.

One transfer, as both ends see it::

    sender (prefill)                                   receiver (decode)
    ticket = t.offer(handoff, deadline_s)   ──ticket──▶ handoff = t.pull(ticket, deadline_s)
      bytes stay registered under ticket.transfer_id      engine.import_kv(handoff, ...)
                                                         t.confirm(ticket)   (or t.abort(ticket))
    t.reap()  ◀─────────── confirm / abort / deadline ───
      frees the bytes, returns a ``Released`` per transfer

Rules every implementation keeps:

- **Who frees.** The sender owns the bytes from ``offer`` until it *sees* the receiver's
  ``confirm`` or ``abort``, or the ticket's deadline passes; only then does ``reap`` free them. A
  receiver that confirms has already copied the KV into its own cache, so freeing is safe.
- **Deadlines.** Every ticket carries an absolute wall-clock deadline (``time.time()`` seconds).
  ``pull`` never waits past ``min(ticket.deadline, now + deadline_s)``: it returns the handoff or
  raises ``TransferTimeout`` / ``TransferFailed`` with a message. No call blocks forever.
- **Ownership of the pulled buffer.** The ``KVHandoff`` from ``pull`` may view transport memory
  (zero-copy); it is valid until ``confirm``/``abort`` on that ticket. Import it first.
- **Measurement.** Each completed ``offer`` and ``pull`` appends a ``TransferStats`` (bytes,
  seconds) readable through ``stats()``.

Tickets are plain frozen data (no tensors, no actor handles), so they can travel through Ray
calls, logs and the scheduler unchanged.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from engine.kv_cache import KVHandoff, KVHandoffMeta


class TransferError(RuntimeError):
    """Base of transport errors; the message says which transfer and why."""


class TransferTimeout(TransferError):
    """The bytes did not arrive before the deadline (the sender may still be alive)."""


class TransferFailed(TransferError):
    """The transfer cannot succeed: unknown or withdrawn ticket, dead sender, broken channel."""


@dataclass(frozen=True)
class SenderAddress:
    """Where the bytes live, as plain data. Fields a transport does not use stay at defaults."""

    host: str
    pid: int
    endpoint: str = ""      # shm segment name, gloo pair name, Ray actor name...
    port: int = 0
    tag: int = 0            # per-transfer channel tag (gloo)
    namespace: str = ""     # Ray namespace of a named sender actor
    handle: bytes = b""     # opaque bytes that reach the data (a pickled CUDA IPC handle)


@dataclass(frozen=True)
class TransferTicket:
    transfer_id: str
    request_id: str
    meta: KVHandoffMeta
    nbytes: int
    transport: str
    sender: SenderAddress
    deadline: float         # absolute, time.time() seconds

    def remaining(self, now: float | None = None) -> float:
        return self.deadline - (time.time() if now is None else now)


class ReleaseReason(Enum):
    CONFIRMED = "confirmed"
    ABORTED = "aborted"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Released:
    """The sender freed a transfer's bytes, and why."""

    transfer_id: str
    request_id: str
    reason: ReleaseReason


@dataclass(frozen=True)
class TransferStats:
    transfer_id: str
    request_id: str
    transport: str
    side: str               # "offer" (sender staging) or "pull" (receiver)
    nbytes: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / 1e6 / max(self.seconds, 1e-9)


class KVTransport(ABC):
    """One endpoint of a KV transport. A worker holds one instance and plays sender, receiver or both."""

    name: ClassVar[str]

    def __init__(self, max_stats: int = 1024):
        self._stats: deque[TransferStats] = deque(maxlen=max_stats)

    # -- sender ----------------------------------------------------------------------------
    @abstractmethod
    def offer(self, handoff: KVHandoff, deadline_s: float) -> TransferTicket:
        """Register ``handoff``'s bytes under a new transfer id, kept until confirm, abort or deadline.

        The transport may copy the buffer (the caller may then drop its handoff) or keep a
        reference to it; either way the caller must not modify the buffer afterwards.
        """

    @abstractmethod
    def reap(self, now: float | None = None) -> list[Released]:
        """Free every offer the receiver confirmed or aborted and every offer past its deadline.

        Returns one ``Released`` per freed transfer; a transfer is released exactly once.
        Cheap; the sender calls it from its loop (and the handoff state machine's ``sweep``).
        """

    @abstractmethod
    def pending(self) -> list[str]:
        """Transfer ids this endpoint still holds bytes for (sender side)."""

    # -- receiver --------------------------------------------------------------------------
    @abstractmethod
    def pull(self, ticket: TransferTicket, deadline_s: float) -> KVHandoff:
        """Fetch the bytes of ``ticket``. Raises ``TransferTimeout`` or ``TransferFailed``.

        May be called again for the same ticket after a failure (a retry) until it is
        confirmed or aborted. The result may view transport memory until ``confirm``/``abort``.
        """

    @abstractmethod
    def confirm(self, ticket: TransferTicket) -> None:
        """The receiver imported the KV: release local views and tell the sender it may free.

        Raises ``TransferFailed`` if the ticket was never pulled here or is already confirmed.
        """

    @abstractmethod
    def abort(self, ticket: TransferTicket) -> None:
        """Give up on a transfer. On the sender: free now. On the receiver: tell the sender to free.

        Idempotent: aborting a released or unknown transfer is a no-op.
        """

    # -- both ------------------------------------------------------------------------------
    def stats(self) -> tuple[TransferStats, ...]:
        """Bytes and seconds of recent offers and pulls, oldest first."""
        return tuple(self._stats)

    def close(self) -> None:
        """Free everything this endpoint still holds. Safe to call twice."""

    def _record(self, ticket: TransferTicket, side: str, seconds: float) -> None:
        self._stats.append(TransferStats(ticket.transfer_id, ticket.request_id, self.name, side,
                                         ticket.nbytes, seconds))


def check_ticket(ticket: TransferTicket, transport: str) -> None:
    """Raise ``TransferFailed`` if the ticket belongs to another transport or has expired."""
    if ticket.transport != transport:
        raise TransferFailed(f"transfer {ticket.transfer_id} is a {ticket.transport!r} ticket, not {transport!r}")
    if ticket.remaining() <= 0:
        raise TransferTimeout(f"transfer {ticket.transfer_id} of {ticket.request_id} expired before pull")
