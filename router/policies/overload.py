"""Overload state machine: signals in, a state and its fallback actions out, with counters.

    NORMAL ──▶ DEGRADED ──▶ BATCH_PAUSED ──▶ INTERACTIVE_ONLY        (escalate at once, any step)
       ◀───────────◀──────────────◀──   one level down after every signal stayed below
                                        recover_fraction × the current level's thresholds
                                        for recover_hold_s

    state              actions
    NORMAL             —
    DEGRADED           cap max_tokens of heavy and background requests
    BATCH_PAUSED       + pause background (new background requests wait; best-effort
                         background work is preempted)
    INTERACTIVE_ONLY   + reject non-interactive requests with a retry-after

A level is entered when any one signal reaches its threshold: the longest queue wait, the
predicted TTFT over the SLO, or the KV usage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from router.config import OverloadConfig, Thresholds
from router.plan import FallbackAction, OverloadState

LEVELS = (OverloadState.NORMAL, OverloadState.DEGRADED, OverloadState.BATCH_PAUSED,
          OverloadState.INTERACTIVE_ONLY)
ACTIONS = {
    OverloadState.NORMAL: (),
    OverloadState.DEGRADED: (FallbackAction.CAP_MAX_TOKENS,),
    OverloadState.BATCH_PAUSED: (FallbackAction.CAP_MAX_TOKENS, FallbackAction.PAUSE_BACKGROUND),
    OverloadState.INTERACTIVE_ONLY: (FallbackAction.CAP_MAX_TOKENS, FallbackAction.PAUSE_BACKGROUND,
                                     FallbackAction.REJECT_RETRY_AFTER),
}


@dataclass(frozen=True)
class Signals:
    """Measured at a scheduling step: seconds, a ratio, a fraction in [0, 1]."""

    queue_wait_s: float = 0.0
    ttft_ratio: float = 0.0
    kv_usage: float = 0.0


@dataclass
class Counters:
    """How often each state was entered and each action applied to a request."""

    entered: dict[OverloadState, int] = field(default_factory=lambda: {s: 0 for s in LEVELS})
    applied: dict[FallbackAction, int] = field(default_factory=lambda: {a: 0 for a in FallbackAction})


class OverloadMachine:
    """Holds the current state; `step(signals, now_s)` moves it. Clock = the caller's."""

    def __init__(self, config: OverloadConfig) -> None:
        self.config = config
        self.state = OverloadState.NORMAL
        self.counters = Counters()
        self._calm_since: float | None = None

    def _thresholds(self, level: OverloadState) -> Thresholds:
        return getattr(self.config, level.value)

    def _reached(self, s: Signals, t: Thresholds, scale: float = 1.0) -> bool:
        return (s.queue_wait_s >= t.queue_wait_s * scale or s.ttft_ratio >= t.ttft_ratio * scale
                or s.kv_usage >= t.kv_usage * scale)

    def _target(self, s: Signals) -> OverloadState:
        for level in reversed(LEVELS[1:]):
            if self._reached(s, self._thresholds(level)):
                return level
        return OverloadState.NORMAL

    def step(self, signals: Signals, now_s: float) -> OverloadState:
        """Escalate immediately to the highest level reached; step down one level after a calm hold."""
        target = self._target(signals)
        cur = LEVELS.index(self.state)
        if LEVELS.index(target) > cur:
            self._enter(target)
            self._calm_since = None
        elif cur > 0 and not self._reached(signals, self._thresholds(self.state), self.config.recover_fraction):
            if self._calm_since is None:
                self._calm_since = now_s
            if now_s - self._calm_since >= self.config.recover_hold_s:
                self._enter(LEVELS[cur - 1])
                self._calm_since = now_s
        else:
            self._calm_since = None
        return self.state

    def _enter(self, level: OverloadState) -> None:
        self.state = level
        self.counters.entered[level] += 1

    @property
    def actions(self) -> tuple[FallbackAction, ...]:
        return ACTIONS[self.state]

    def applied(self, action: FallbackAction, n: int = 1) -> None:
        self.counters.applied[action] += n
