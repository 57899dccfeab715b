"""The KV handoff state machine: one record per transfer, explicit transitions, deadlines, retries.

Pure Python (no torch, no ray) so it runs under a fake clock in tests and in the simulator::

    OFFERED ──▶ PULLING ──▶ IMPORTED ──▶ CONFIRMED ──▶ FREED
                 │    ▲
                 ▼    │
                RETRYING
    OFFERED, PULLING, RETRYING, IMPORTED ──▶ FAILED or EXPIRED ──▶ FREED
    OFFERED ──▶ CONFIRMED    (the sender's record: it sees only the receiver's answer)

- Every non-terminal state has a deadline (``HandoffPolicy.state_timeout_s``), and the whole
  transfer has one (``transfer_timeout_s``); ``sweep(now)`` moves anything past either to
  EXPIRED, so no state waits forever. EXPIRED and FAILED records are released by the sender
  (→ FREED) — the tracker reports them; the caller frees the bytes and calls ``freed``.
- The sender frees only after CONFIRMED (or FAILED/EXPIRED): ``freed`` from any other state
  raises ``InvalidTransition``. Confirming twice raises too.
- ``failed(...)`` returns a ``Decision``: RETRY while retries remain (bounded), then RECOMPUTE
  (re-prefill the request) once, then FAIL (the client gets an error).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum


class HandoffState(Enum):
    OFFERED = "offered"
    PULLING = "pulling"
    RETRYING = "retrying"
    IMPORTED = "imported"
    CONFIRMED = "confirmed"
    FREED = "freed"
    FAILED = "failed"
    EXPIRED = "expired"


S = HandoffState
TRANSITIONS: dict[HandoffState, frozenset[HandoffState]] = {
    # the sender never sees PULLING/IMPORTED: its record goes OFFERED → CONFIRMED on the answer
    S.OFFERED: frozenset({S.PULLING, S.CONFIRMED, S.FAILED, S.EXPIRED}),
    S.PULLING: frozenset({S.IMPORTED, S.RETRYING, S.FAILED, S.EXPIRED}),
    S.RETRYING: frozenset({S.PULLING, S.FAILED, S.EXPIRED}),
    S.IMPORTED: frozenset({S.CONFIRMED, S.FAILED, S.EXPIRED}),
    S.CONFIRMED: frozenset({S.FREED}),
    S.FAILED: frozenset({S.FREED}),
    S.EXPIRED: frozenset({S.FREED}),
    S.FREED: frozenset(),
}
RELEASABLE = frozenset({S.CONFIRMED, S.FAILED, S.EXPIRED})   # the sender may free the bytes


class Decision(Enum):
    RETRY = "retry"          # pull the same ticket again
    RECOMPUTE = "recompute"  # drop the KV and re-prefill the request
    FAIL = "fail"            # report an error to the client


class InvalidTransition(RuntimeError):
    """A transition the table does not allow (e.g. confirm twice, free before confirm)."""


class UnknownHandoff(KeyError):
    """No record for this transfer id."""


@dataclass(frozen=True)
class HandoffPolicy:
    max_retries: int = 2                 # pulls after the first one
    allow_recompute: bool = True         # one re-prefill after the retries are spent
    transfer_timeout_s: float = 30.0     # whole transfer, offer → confirm
    state_timeout_s: dict[HandoffState, float] = field(default_factory=lambda: {
        S.OFFERED: 10.0, S.PULLING: 10.0, S.RETRYING: 5.0, S.IMPORTED: 10.0})

    def __post_init__(self):
        if self.max_retries < 0 or self.transfer_timeout_s <= 0:
            raise ValueError("max_retries must be >= 0 and transfer_timeout_s > 0")
        missing = {S.OFFERED, S.PULLING, S.RETRYING, S.IMPORTED} - set(self.state_timeout_s)
        if missing:
            raise ValueError(f"state_timeout_s lacks {sorted(m.value for m in missing)}")


@dataclass
class HandoffRecord:
    transfer_id: str
    request_id: str
    state: HandoffState
    created_at: float
    entered_at: float
    deadline: float                      # whole-transfer deadline
    recompute_attempt: int = 0           # 1 when this transfer follows a re-prefill
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    history: list[tuple[HandoffState, float]] = field(default_factory=list)

    def state_deadline(self, policy: HandoffPolicy) -> float:
        if self.state in RELEASABLE or self.state is S.FREED:
            return float("inf")
        return min(self.deadline, self.entered_at + policy.state_timeout_s[self.state])


class HandoffTracker:
    """Records of every live transfer on one worker. ``clock`` returns seconds (monotonic or fake)."""

    def __init__(self, policy: HandoffPolicy | None = None, clock: Callable[[], float] | None = None):
        self.policy = policy or HandoffPolicy()
        self.clock = clock or time.monotonic
        self._records: dict[str, HandoffRecord] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def offered(self, transfer_id: str, request_id: str, *, recompute_attempt: int = 0,
                timeout_s: float | None = None) -> HandoffRecord:
        if transfer_id in self._records:
            raise InvalidTransition(f"transfer {transfer_id} already exists")
        now = self.clock()
        rec = HandoffRecord(transfer_id, request_id, S.OFFERED, now, now,
                            now + (timeout_s or self.policy.transfer_timeout_s), recompute_attempt)
        rec.history.append((S.OFFERED, now))
        self._records[transfer_id] = rec
        return rec

    def pulling(self, transfer_id: str) -> HandoffRecord:
        return self._move(transfer_id, S.PULLING)

    def imported(self, transfer_id: str) -> HandoffRecord:
        return self._move(transfer_id, S.IMPORTED)

    def confirmed(self, transfer_id: str) -> HandoffRecord:
        return self._move(transfer_id, S.CONFIRMED)

    def freed(self, transfer_id: str) -> HandoffRecord:
        """The sender freed the bytes; the record leaves the table."""
        rec = self._move(transfer_id, S.FREED)
        del self._records[transfer_id]
        return rec

    def abort(self, transfer_id: str, reason: str) -> HandoffRecord:
        """Give up now (cancelled request, dead peer): FAILED, ready to be freed. Idempotent."""
        rec = self.get(transfer_id)
        if rec.state in RELEASABLE and rec.state is not S.CONFIRMED:
            return rec
        rec.errors.append(reason)
        return self._move(transfer_id, S.FAILED)

    def failed(self, transfer_id: str, reason: str) -> Decision:
        """A pull or import failed. Retry while allowed, else FAILED with recompute or fail."""
        rec = self.get(transfer_id)
        rec.errors.append(reason)
        if rec.retries < self.policy.max_retries and self.clock() < rec.deadline:
            rec.retries += 1
            self._move(transfer_id, S.RETRYING)
            return Decision.RETRY
        self._move(transfer_id, S.FAILED)
        return self.after_failure(rec)

    def after_failure(self, rec: HandoffRecord) -> Decision:
        """What to do with the request once this transfer is given up."""
        if self.policy.allow_recompute and rec.recompute_attempt == 0:
            return Decision.RECOMPUTE
        return Decision.FAIL

    def sweep(self, now: float | None = None) -> list[HandoffRecord]:
        """Expire every record past its state or transfer deadline; return them (state EXPIRED).

        The caller frees their bytes (sender) or re-prefills/fails their requests (receiver:
        ``after_failure(rec)``), then calls ``freed``. Records already releasable are skipped.
        """
        now = self.clock() if now is None else now
        expired = []
        for rec in list(self._records.values()):
            if rec.state_deadline(self.policy) <= now:
                rec.errors.append(f"{rec.state.value} past its deadline")
                expired.append(self._move(rec.transfer_id, S.EXPIRED, now))
        return expired

    # -- queries ---------------------------------------------------------------------------
    def get(self, transfer_id: str) -> HandoffRecord:
        try:
            return self._records[transfer_id]
        except KeyError:
            raise UnknownHandoff(f"no handoff record for transfer {transfer_id}") from None

    def __contains__(self, transfer_id: str) -> bool:
        return transfer_id in self._records

    def __len__(self) -> int:
        return len(self._records)

    def releasable(self) -> list[HandoffRecord]:
        return [r for r in self._records.values() if r.state in RELEASABLE]

    def next_deadline(self) -> float:
        """The earliest moment ``sweep`` could expire something (inf when nothing is live)."""
        return min((r.state_deadline(self.policy) for r in self._records.values()), default=float("inf"))

    def check_invariants(self) -> None:
        for tid, rec in self._records.items():
            assert tid == rec.transfer_id, tid
            assert rec.state is not S.FREED, f"{tid} FREED but still tracked"
            assert rec.retries <= self.policy.max_retries, f"{tid} retried {rec.retries} times"
            for (a, _), (b, _) in zip(rec.history, rec.history[1:]):
                assert b in TRANSITIONS[a], f"{tid}: {a} -> {b}"

    # -- internals -------------------------------------------------------------------------
    def _move(self, transfer_id: str, to: HandoffState, now: float | None = None) -> HandoffRecord:
        rec = self.get(transfer_id)
        if to not in TRANSITIONS[rec.state]:
            raise InvalidTransition(f"transfer {transfer_id}: {rec.state.value} -> {to.value} is not allowed")
        rec.state, rec.entered_at = to, self.clock() if now is None else now
        rec.history.append((to, rec.entered_at))
        return rec
