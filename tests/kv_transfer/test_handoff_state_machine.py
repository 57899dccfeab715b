"""The handoff state machine under a fake clock: deadlines, bounded retries, confirm-before-free."""

import pytest

from kv_transfer.handoff import (RELEASABLE, TRANSITIONS, Decision, HandoffPolicy, HandoffState as S,
                                 HandoffTracker, InvalidTransition, UnknownHandoff)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def tracker(**policy):
    clock = FakeClock()
    return HandoffTracker(HandoffPolicy(**policy), clock), clock


def test_happy_path_walks_offered_to_freed():
    t, clock = tracker()
    t.offered("x1", "r1")
    for step in (t.pulling, t.imported, t.confirmed):
        clock.now += 0.1
        step("x1")
    assert t.get("x1").state is S.CONFIRMED and [r.transfer_id for r in t.releasable()] == ["x1"]
    t.check_invariants()
    rec = t.freed("x1")
    assert [s for s, _ in rec.history] == [S.OFFERED, S.PULLING, S.IMPORTED, S.CONFIRMED, S.FREED]
    assert len(t) == 0


def test_sender_cannot_free_before_confirm():
    t, _ = tracker()
    t.offered("x1", "r1")
    t.pulling("x1")
    t.imported("x1")
    with pytest.raises(InvalidTransition, match="imported -> freed"):
        t.freed("x1")


def test_double_confirm_is_an_error():
    t, _ = tracker()
    t.offered("x1", "r1")
    t.pulling("x1")
    t.imported("x1")
    t.confirmed("x1")
    with pytest.raises(InvalidTransition, match="confirmed -> confirmed"):
        t.confirmed("x1")


def test_unknown_and_duplicate_transfers_are_errors():
    t, _ = tracker()
    with pytest.raises(UnknownHandoff):
        t.pulling("nope")
    t.offered("x1", "r1")
    with pytest.raises(InvalidTransition, match="already exists"):
        t.offered("x1", "r1")


def test_stale_offer_expires_on_sweep_and_is_then_freed():
    t, clock = tracker(state_timeout_s={S.OFFERED: 2.0, S.PULLING: 5.0, S.RETRYING: 1.0, S.IMPORTED: 5.0})
    t.offered("x1", "r1")
    clock.now += 1.9
    assert t.sweep() == []
    clock.now += 0.2
    [rec] = t.sweep()
    assert rec.state is S.EXPIRED and "offered past its deadline" in rec.errors[-1]
    assert t.after_failure(rec) is Decision.RECOMPUTE
    t.freed("x1")
    assert len(t) == 0


def test_whole_transfer_deadline_bounds_every_state():
    t, clock = tracker(transfer_timeout_s=3.0)
    t.offered("x1", "r1")
    t.pulling("x1")
    clock.now += 2.0
    t.failed("x1", "lost")              # RETRYING resets the state clock...
    clock.now += 1.0
    assert t.get("x1").state is S.RETRYING
    assert t.next_deadline() == pytest.approx(1003.0)
    [rec] = t.sweep()                   # ...but not the transfer's own deadline
    assert rec.state is S.EXPIRED


def test_retries_are_bounded_then_recompute_then_fail():
    t, _ = tracker(max_retries=2)
    t.offered("x1", "r1")
    decisions = []
    for _ in range(3):
        t.pulling("x1")
        decisions.append(t.failed("x1", "timeout"))
    assert decisions == [Decision.RETRY, Decision.RETRY, Decision.RECOMPUTE]
    assert t.get("x1").state is S.FAILED and t.get("x1").retries == 2
    t.check_invariants()
    t.freed("x1")
    # the re-prefilled request's transfer gets one pull and no second recompute
    t2, _ = tracker(max_retries=0)
    t2.offered("x2", "r1", recompute_attempt=1)
    t2.pulling("x2")
    assert t2.failed("x2", "timeout") is Decision.FAIL


def test_recompute_can_be_disabled():
    t, _ = tracker(max_retries=0, allow_recompute=False)
    t.offered("x1", "r1")
    t.pulling("x1")
    assert t.failed("x1", "dead sender") is Decision.FAIL


def test_no_retry_past_the_transfer_deadline():
    t, clock = tracker(max_retries=5, transfer_timeout_s=1.0)
    t.offered("x1", "r1")
    t.pulling("x1")
    clock.now += 1.5
    assert t.failed("x1", "timeout") is Decision.RECOMPUTE


def test_abort_fails_the_transfer_once_and_lets_the_sender_free():
    t, _ = tracker()
    t.offered("x1", "r1")
    t.pulling("x1")
    assert t.abort("x1", "cancelled").state is S.FAILED
    assert t.abort("x1", "again").state is S.FAILED       # idempotent
    t.freed("x1")


def test_abort_after_confirm_is_an_error():
    t, _ = tracker()
    t.offered("x1", "r1")
    t.pulling("x1")
    t.imported("x1")
    t.confirmed("x1")
    with pytest.raises(InvalidTransition):
        t.abort("x1", "too late")


def test_every_live_state_has_a_deadline_and_a_way_out():
    policy = HandoffPolicy()
    for state, targets in TRANSITIONS.items():
        if state is S.FREED:
            assert not targets
        elif state in RELEASABLE:
            assert S.FREED in targets
        else:
            assert state in policy.state_timeout_s and S.EXPIRED in targets


def test_policy_rejects_missing_state_deadlines():
    with pytest.raises(ValueError, match="state_timeout_s lacks"):
        HandoffPolicy(state_timeout_s={S.OFFERED: 1.0})
