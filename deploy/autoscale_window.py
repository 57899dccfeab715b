"""``SignalWindow``: successive ``ClusterStats`` snapshots and stream items → one ``ScaleSignals``.

    window.observe_stats(stats)            # every sample (several per window)
    window.observe_item(item)              # every stream item a front yields (Admitted, StageDone count)
    result = window.close(now_s)           # WindowSignals | None; the next window starts here

How each signal is formed (pure Python, no Ray)::

    queue_wait_p90_s     p90 of Admitted.queue_s seen in the window                 (source "items")
                         else Little's law: mean waiting / decisions per second,
                         the window length if requests waited and none was decided  (source "waiting")
    ttft_attainment      StageDone with ttft_s <= ttft_slo_s / StageDone seen       (None: none seen)
    tpot_attainment      the same for tpot_s <= tpot_slo_s, over stages with a TPOT (1-token stages
                         give no TPOT evidence)
    predicted_ttft_att.  Δadmitted / Δ(admitted + best_effort + rejected) over all lanes, from the
                         cumulative LaneStats counters (the scheduler's own prediction: "best effort"
                         and "rejected" mean it expected to miss the SLO); None: no decisions
    kv_usage             mean over the window's samples of the mean KV usage of decode workers
    prefill/decode_busy  the same over ``busy_fraction`` of prefill / decode workers
    replicas             workers per role in the window's last snapshot

A colocated worker (role "colocated") both prefills and decodes: it counts in both pools. The
counters' deltas are taken against the last snapshot of the previous window (the first window:
against its own first snapshot), so decisions made between two windows are never lost.

A window with no stats sample gives ``None`` (nothing is known about the replicas): the caller
skips that decision. Items are attributed to the window in which they are observed.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

from cluster.api import Admitted, ClusterStats, StageDone, StreamItem
from deploy.autoscale_config import ScaleSignals

PREFILL_ROLES = ("prefill", "colocated")
DECODE_ROLES = ("decode", "colocated")


@dataclass(frozen=True)
class WindowSignals:
    """One closed window: the signals, and what they were computed from."""

    signals: ScaleSignals
    start_s: float
    end_s: float
    stats_samples: int
    stages: int                     # StageDone items seen
    decisions: int                  # scheduler decisions (all lanes, from the counters)
    queue_wait_source: str          # "items" | "waiting"


@dataclass
class _Counts:
    met: int = 0
    total: int = 0

    def add(self, met: bool) -> None:
        self.met += int(met)
        self.total += 1

    def fraction(self) -> float | None:
        return self.met / self.total if self.total else None


@dataclass
class _Open:
    """What the open window has accumulated."""

    start_s: float
    samples: list[ClusterStats] = field(default_factory=list)
    queue_waits: list[float] = field(default_factory=list)
    ttft: _Counts = field(default_factory=_Counts)
    tpot: _Counts = field(default_factory=_Counts)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _decisions(stats: ClusterStats) -> tuple[int, int]:
    """(admitted, all decisions) so far, summed over lanes."""
    admitted = sum(ls.admitted for ls in stats.lanes.values())
    total = sum(ls.admitted + ls.best_effort + ls.rejected for ls in stats.lanes.values())
    return admitted, total


def _pool_mean(values: dict[str, float], roles: dict[str, str], pool: tuple[str, ...]) -> float:
    picked = [v for w, v in values.items() if roles.get(w) in pool]
    return sum(picked) / len(picked) if picked else 0.0


class SignalWindow:
    """Accumulates one measurement window at a time; see the module docstring for the rules.

    Thread-safe: fronts may feed items from another thread than the one closing windows.
    """

    def __init__(self, start_s: float):
        self._lock = threading.Lock()
        self._open = _Open(start_s)
        self._baseline: ClusterStats | None = None     # last snapshot of the previous window

    def observe_stats(self, stats: ClusterStats) -> None:
        """Add one snapshot (taken now) to the open window."""
        with self._lock:
            self._open.samples.append(stats)

    def observe_item(self, item: StreamItem) -> None:
        """Feed a stream item; only Admitted (queue wait) and StageDone (SLO checks) count."""
        with self._lock:
            self._observe(self._open, item)

    @staticmethod
    def _observe(w: _Open, item: StreamItem) -> None:
        if isinstance(item, Admitted):
            w.queue_waits.append(item.queue_s)
        elif isinstance(item, StageDone):
            w.ttft.add(item.ttft_s <= item.ttft_slo_s)
            if item.tpot_s is not None:
                w.tpot.add(item.tpot_s <= item.tpot_slo_s)

    def close(self, now_s: float) -> WindowSignals | None:
        """End the open window at ``now_s`` and start the next one; None without a stats sample."""
        with self._lock:
            w, self._open = self._open, _Open(now_s)
            if not w.samples:
                return None
            first = self._baseline or w.samples[0]
            last = self._baseline = w.samples[-1]
        duration = max(now_s - w.start_s, 1e-9)
        admitted0, total0 = _decisions(first)
        admitted1, total1 = _decisions(last)
        decided, admitted = total1 - total0, admitted1 - admitted0
        queue_p90, source = self._queue_wait(w, decided, duration)
        roles = {h.worker_id: h.role for h in last.workers}
        n = len(w.samples)
        kv = sum(_pool_mean(s.kv_usage, roles, DECODE_ROLES) for s in w.samples) / n
        p_busy = sum(_pool_mean(s.busy_fraction, roles, PREFILL_ROLES) for s in w.samples) / n
        d_busy = sum(_pool_mean(s.busy_fraction, roles, DECODE_ROLES) for s in w.samples) / n
        signals = ScaleSignals(
            queue_wait_p90_s=queue_p90,
            ttft_attainment=w.ttft.fraction(),
            predicted_ttft_attainment=admitted / decided if decided > 0 else None,
            tpot_attainment=w.tpot.fraction(),
            kv_usage=kv, prefill_busy=p_busy, decode_busy=d_busy,
            prefill_replicas=sum(1 for h in last.workers if h.role in PREFILL_ROLES),
            decode_replicas=sum(1 for h in last.workers if h.role in DECODE_ROLES))
        return WindowSignals(signals, w.start_s, now_s, n, w.ttft.total, max(decided, 0), source)

    @staticmethod
    def _queue_wait(w: _Open, decided: int, duration_s: float) -> tuple[float, str]:
        if w.queue_waits:
            return percentile(w.queue_waits, 90.0), "items"
        mean_waiting = sum(s.waiting for s in w.samples) / len(w.samples)
        if mean_waiting <= 0:
            return 0.0, "waiting"
        if decided <= 0:
            return duration_s, "waiting"       # waited all window, nothing decided: at least this
        return mean_waiting / (decided / duration_s), "waiting"
