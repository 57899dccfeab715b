"""HandoffSender and receive() over a scripted fake transport and a fake clock (no torch, no ray)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from kv_transfer.flow import HandoffSender, receive
from kv_transfer.handoff import Decision, HandoffPolicy, HandoffState, HandoffTracker, UnknownHandoff
from kv_transfer.transport import Released, ReleaseReason, SenderAddress, TransferTicket, TransferTimeout


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@dataclass
class FakeHandoff:
    request_id: str

    @property
    def meta(self):
        return self


@dataclass
class FakeTransport:
    """Fails the first ``drops`` pulls; records confirms and aborts; releases what it is told."""

    drops: int = 0
    calls: list[str] = field(default_factory=list)
    released: list[Released] = field(default_factory=list)

    def offer(self, handoff, deadline_s):
        tid = f"t{len(self.calls)}"
        self.calls.append(f"offer {tid}")
        return TransferTicket(tid, handoff.request_id, None, 8, "fake", SenderAddress("h", 1), 1e18)

    def pull(self, ticket, deadline_s):
        self.calls.append("pull")
        if self.drops:
            self.drops -= 1
            raise TransferTimeout("dropped")
        return FakeHandoff(ticket.request_id)

    def confirm(self, ticket):
        self.calls.append("confirm")
        self.released.append(Released(ticket.transfer_id, ticket.request_id, ReleaseReason.CONFIRMED))

    def abort(self, ticket):
        self.calls.append("abort")

    def reap(self, now=None):
        out, self.released = self.released, []
        return out

    def pending(self):
        return []


def _ticket(transport):
    return transport.offer(FakeHandoff("r1"), 10.0)


def test_receive_imports_then_confirms():
    t, imported = FakeTransport(), []
    tracker = HandoffTracker(HandoffPolicy(), FakeClock())
    out = receive(t, _ticket(t), tracker, imported.append, 1.0)
    assert out.decision is None and out.pulls == 1 and len(imported) == 1
    assert t.calls[1:] == ["pull", "confirm"] and len(tracker) == 0


def test_receive_retries_dropped_pulls_then_asks_for_recompute():
    t = FakeTransport(drops=5)
    out = receive(t, _ticket(t), HandoffTracker(HandoffPolicy(max_retries=2), FakeClock()), print, 1.0)
    assert out.decision is Decision.RECOMPUTE and out.pulls == 3
    assert t.calls[1:] == ["pull"] * 3 + ["abort"] and len(out.errors) == 3


def test_receive_succeeds_after_one_dropped_pull():
    t = FakeTransport(drops=1)
    out = receive(t, _ticket(t), HandoffTracker(HandoffPolicy(max_retries=2), FakeClock()), lambda h: None, 1.0)
    assert out.decision is None and out.pulls == 2


def test_import_failure_is_not_retried():
    t = FakeTransport()

    def full(_):
        raise RuntimeError("no room in the KV cache")

    out = receive(t, _ticket(t), HandoffTracker(HandoffPolicy(), FakeClock()), full, 1.0)
    assert out.decision is Decision.RECOMPUTE and out.pulls == 1 and t.calls[-1] == "abort"
    assert "no room" in out.errors[-1]


def test_sender_frees_only_after_the_confirm_arrives():
    t, clock = FakeTransport(), FakeClock()
    sender = HandoffSender(t, HandoffTracker(HandoffPolicy(), clock), deadline_s=5.0)
    ticket = sender.offer(FakeHandoff("r1"))
    assert sender.sweep() == [] and sender.tracker.get(ticket.transfer_id).state is HandoffState.OFFERED
    t.confirm(ticket)
    [r] = sender.sweep()
    assert r.reason is ReleaseReason.CONFIRMED and len(sender.tracker) == 0


def test_sender_sweep_expires_a_stale_offer_and_withdraws_it():
    t, clock = FakeTransport(), FakeClock()
    sender = HandoffSender(t, HandoffTracker(HandoffPolicy(), clock), deadline_s=5.0)
    sender.offer(FakeHandoff("r1"))
    clock.now = 5.0
    [r] = sender.sweep()
    assert r.reason is ReleaseReason.EXPIRED and t.calls[-1] == "abort" and len(sender.tracker) == 0


def test_a_late_confirm_after_expiry_is_ignored_not_double_freed():
    t, clock = FakeTransport(), FakeClock()
    sender = HandoffSender(t, HandoffTracker(HandoffPolicy(), clock), deadline_s=5.0)
    ticket = sender.offer(FakeHandoff("r1"))
    clock.now = 6.0
    assert len(sender.sweep()) == 1
    t.confirm(ticket)
    assert sender.sweep() == []
    with pytest.raises(UnknownHandoff):
        sender.tracker.get(ticket.transfer_id)
