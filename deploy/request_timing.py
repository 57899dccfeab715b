"""Per-request latencies as the serving front sees them, measured on its own monotonic clock.

    first item seen ─(− Admitted.queue_s)─▶ arrival
    arrival ──────────────────────────────▶ first token of stage 0          = TTFT
    token ─▶ token within one stage                                          = inter-token gaps
    arrival ──────────────────────────────▶ Finished                         = end-to-end
    sum of in-stage gaps / tokens they cover                                 = time per output token

Contract:
- the arrival is the time the first item of a request is seen, less the ``queue_s`` an
  ``Admitted`` reports (the controller's arrival → decision time), so TTFT and end-to-end include
  the scheduling wait even though the front only hears of the request at the decision;
- a chunk of ``n`` tokens arriving ``dt`` after the previous one counts as ``n`` gaps of ``dt/n``;
  the first chunk of each stage produces no gap (a later stage starts after a tool delay, which
  is no decode time) and only stage 0's first chunk produces a TTFT;
- ``end`` or ``discard`` must be called once per request (the stream's ``Finished``/``Failed``, or
  the client went away); until then the request's state stays here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Timing:
    arrival_s: float
    stage: int = -1
    first_token_s: float | None = None
    last_token_s: float | None = None
    decode_s: float = 0.0
    decode_tokens: int = 0


@dataclass(frozen=True)
class TokenTiming:
    ttft_s: float | None            # set on the request's first token only
    gaps_s: tuple[float, ...]       # one per token after the first chunk of its stage


@dataclass(frozen=True)
class EndTiming:
    e2e_s: float
    tpot_s: float | None            # None: no token followed another within a stage


class RequestTimer:
    """Tracks open requests by id; ``clock`` is injectable (default ``time.monotonic``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._open: dict[str, _Timing] = {}

    def __len__(self) -> int:
        return len(self._open)

    def admitted(self, request_id: str, queue_s: float) -> None:
        if request_id not in self._open:
            self._open[request_id] = _Timing(arrival_s=self._clock() - max(queue_s, 0.0))

    def tokens(self, request_id: str, stage: int, n: int) -> TokenTiming:
        now = self._clock()
        t = self._open.setdefault(request_id, _Timing(arrival_s=now))
        if n <= 0:
            return TokenTiming(None, ())
        ttft = None
        gaps: tuple[float, ...] = ()
        if t.first_token_s is None:
            t.first_token_s = now
            ttft = now - t.arrival_s
        elif stage == t.stage and t.last_token_s is not None:
            dt = now - t.last_token_s
            gaps = (dt / n,) * n
            t.decode_s += dt
            t.decode_tokens += n
        t.stage, t.last_token_s = stage, now
        return TokenTiming(ttft, gaps)

    def end(self, request_id: str) -> EndTiming | None:
        """Close a request; None if it was never seen (no item before its last one)."""
        t = self._open.pop(request_id, None)
        if t is None:
            return None
        tpot = t.decode_s / t.decode_tokens if t.decode_tokens else None
        return EndTiming(e2e_s=self._clock() - t.arrival_s, tpot_s=tpot)

    def discard(self, request_id: str) -> None:
        self._open.pop(request_id, None)
