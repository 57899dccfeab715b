"""The two ends of a handoff, wiring a ``KVTransport`` to a ``HandoffTracker``.

Pure Python: the transport and the import step are passed in, so this runs under a fake
transport and clock too. A prefill worker keeps one ``HandoffSender``; a decode worker calls
``receive`` per request::

    ticket = sender.offer(handoff)                 # prefill worker, after export_kv
    ...                                            # ticket travels through Ray (plain data)
    outcome = receive(transport, ticket, tracker, import_fn=lambda h: engine.import_kv(h, ...))
    if outcome.decision is Decision.RECOMPUTE: ... # re-prefill; FAIL: error to the client
    for released in sender.sweep():                # prefill loop: frees confirmed/expired bytes
        engine.abort(released.request_id)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kv_transfer.handoff import Decision, HandoffState, HandoffTracker
from kv_transfer.transport import KVTransport, Released, ReleaseReason, TransferError, TransferTicket


class HandoffSender:
    """Offers handoffs and frees them only once confirmed, aborted or expired."""

    def __init__(self, transport: KVTransport, tracker: HandoffTracker, deadline_s: float):
        self.transport, self.tracker, self.deadline_s = transport, tracker, deadline_s
        self._tickets: dict[str, TransferTicket] = {}

    def offer(self, handoff: Any) -> TransferTicket:
        ticket = self.transport.offer(handoff, self.deadline_s)
        self.tracker.offered(ticket.transfer_id, ticket.request_id, timeout_s=self.deadline_s)
        self._tickets[ticket.transfer_id] = ticket
        return ticket

    def sweep(self, now: float | None = None) -> list[Released]:
        """Expire stale records (withdrawing their offers) and free what the transport released.

        Returns each freed transfer once, so the worker can drop the request's engine blocks.
        """
        freed = []
        for rec in self.tracker.sweep(now):
            self.transport.abort(self._tickets[rec.transfer_id])
            freed += self._release(Released(rec.transfer_id, rec.request_id, ReleaseReason.EXPIRED))
        for r in self.transport.reap():
            freed += self._release(r)
        return freed

    def _release(self, r: Released) -> list[Released]:
        if r.transfer_id not in self.tracker:
            return []                      # already released through the other path
        rec = self.tracker.get(r.transfer_id)
        if r.reason is ReleaseReason.CONFIRMED and rec.state is HandoffState.OFFERED:
            self.tracker.confirmed(r.transfer_id)
        elif rec.state is HandoffState.OFFERED:
            self.tracker.abort(r.transfer_id, r.reason.value)
        self.tracker.freed(r.transfer_id)
        self._tickets.pop(r.transfer_id, None)
        return [r]

    def withdraw(self, request_id: str) -> list[Released]:
        """Abort every offer of ``request_id`` now (its caller gave up); returns what was freed."""
        freed = []
        for tid, ticket in list(self._tickets.items()):
            if ticket.request_id == request_id:
                self.transport.abort(ticket)
                if tid in self.tracker:
                    self.tracker.abort(tid, "withdrawn by the sender")
                freed += self._release(Released(tid, request_id, ReleaseReason.ABORTED))
        return freed

    def pending(self) -> list[str]:
        return self.transport.pending()


@dataclass(frozen=True)
class ReceiveOutcome:
    transfer_id: str
    request_id: str
    decision: Decision | None        # None: imported and confirmed
    pulls: int
    errors: tuple[str, ...]


def receive(transport: KVTransport, ticket: TransferTicket, tracker: HandoffTracker,
            import_fn: Callable[[Any], object], pull_deadline_s: float) -> ReceiveOutcome:
    """Pull (retrying as the tracker's policy allows), import, confirm.

    Each pull waits at most ``pull_deadline_s`` (and never past the ticket's deadline). An
    import error aborts the transfer and is not retried. A confirm that cannot reach the sender
    still counts as success (the KV is imported; the sender frees at its deadline). The record
    leaves ``tracker`` either way.
    """
    tid = ticket.transfer_id
    tracker.offered(tid, ticket.request_id, timeout_s=max(ticket.remaining(), 1e-3))
    pulls = 0
    while True:
        tracker.pulling(tid)
        pulls += 1
        try:
            handoff = transport.pull(ticket, pull_deadline_s)
            break
        except TransferError as exc:
            decision = tracker.failed(tid, f"{type(exc).__name__}: {exc}")
            if decision is not Decision.RETRY:
                return _give_up(transport, ticket, tracker, decision, pulls)
    try:
        import_fn(handoff)
    except Exception as exc:
        del handoff
        decision = tracker.after_failure(tracker.abort(tid, f"import failed: {exc}"))
        return _give_up(transport, ticket, tracker, decision, pulls)
    del handoff                                   # it may view transport memory: drop before confirm
    tracker.imported(tid)
    try:
        transport.confirm(ticket)
    except TransferError as exc:
        tracker.get(tid).errors.append(f"confirm not delivered: {exc}")
    tracker.confirmed(tid)
    rec = tracker.freed(tid)
    return ReceiveOutcome(tid, ticket.request_id, None, pulls, tuple(rec.errors))


def _give_up(transport: KVTransport, ticket: TransferTicket, tracker: HandoffTracker,
             decision: Decision, pulls: int) -> ReceiveOutcome:
    transport.abort(ticket)
    rec = tracker.freed(ticket.transfer_id)
    return ReceiveOutcome(ticket.transfer_id, ticket.request_id, decision, pulls, tuple(rec.errors))
