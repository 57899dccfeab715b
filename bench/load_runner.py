"""Open-loop sending: each planned request leaves at its arrival time, bounded by concurrency.

    t0 ─┬─ sleep to t0 + arrival_s ─▶ wait for a slot (≤ max_concurrency in flight) ─▶ send
        ├─ ...                                                      (one task per request)
        └─ all records ─▶ wall_s = last completion - t0

Arrivals do not wait for earlier responses (open loop, like ``vllm bench serve``); only the
concurrency cap can delay a send, and the record keeps both times (``planned_s``, ``sent_s``).
Every send is bounded by ``timeout_s`` (the sender's own deadline, plus a guard here that turns
an overrun into a FAILED record), so a run ends by ``last arrival + queueing + timeout_s``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from bench.load_record import RequestRecord, Status
from bench.load_workload import PlannedRequest

GUARD_S = 5.0


class Sender(Protocol):
    async def send(self, req: PlannedRequest, sent_s: float, timeout_s: float) -> RequestRecord:
        """Send one request; never raises for a request that failed (the record says so)."""
        ...

    async def close(self) -> None:
        ...


@dataclass(frozen=True)
class RunResult:
    records: tuple[RequestRecord, ...]     # in plan order
    wall_s: float                          # first planned send to last completion


class Progress:
    """tqdm on stderr when installed, else one ``\\r`` status line; ``enabled=False``: silent."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.enabled, self.done, self.counts = total, enabled, 0, {s: 0 for s in Status}
        self._bar, self._last = None, 0.0
        if enabled:
            try:
                from tqdm import tqdm
                self._bar = tqdm(total=total, unit="req", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, record: RequestRecord) -> None:
        self.done += 1
        self.counts[record.status] += 1
        if not self.enabled:
            return
        post = " ".join(f"{s.value}={n}" for s, n in self.counts.items())
        if self._bar is not None:
            self._bar.set_postfix_str(post, refresh=False)
            self._bar.update(1)
        elif time.monotonic() - self._last > 0.5 or self.done == self.total:
            self._last = time.monotonic()
            print(f"\r[load] {self.done}/{self.total} {post}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            print(file=sys.stderr, flush=True)


async def run_plan(plan: Sequence[PlannedRequest], sender: Sender, *, max_concurrency: int,
                   timeout_s: float, progress: Progress | None = None) -> RunResult:
    """Send ``plan`` open loop (see the module docstring); one record per planned request."""
    slots = asyncio.Semaphore(max_concurrency)
    progress = progress or Progress(len(plan), enabled=False)
    t0 = time.perf_counter()

    async def one(req: PlannedRequest) -> RequestRecord:
        await asyncio.sleep(max(0.0, t0 + req.arrival_s - time.perf_counter()))
        async with slots:
            sent = time.perf_counter() - t0
            try:
                record = await asyncio.wait_for(sender.send(req, sent, timeout_s), timeout_s + GUARD_S)
            except asyncio.TimeoutError:
                record = RequestRecord(req.index, req.lane, req.scenario, req.arrival_s, sent,
                                       Status.FAILED, time.perf_counter() - t0 - sent,
                                       error=f"no answer within {timeout_s + GUARD_S:g}s")
        progress.update(record)
        return record

    try:
        records = await asyncio.gather(*(one(r) for r in plan))
    finally:
        progress.close()
    return RunResult(tuple(records), time.perf_counter() - t0)
