"""One sent request's outcome, measured by the client, and the stream timer both protocols use.

    send ──▶ first token of stage 0 ─ ─ ─ ▶ last token
    │◀─ ttft_s ─▶│◀── decode intervals ──▶│          tpot_s = Σ decode time / Σ (tokens - 1)
    │◀──────────────── e2e_s ────────────────────▶│

Decode intervals are counted inside each stage when the stream says which stage a token is in
(gRPC); otherwise (HTTP) over the whole stream, less the tool delays the client asked for. A
request meets its SLO when it completed, its TTFT <= the TTFT SLO and its mean TPOT <= the TPOT
SLO (the tightest stage's; a one-token output has no TPOT and passes that half). SLOs are the
ones the client set, else the ones the server reported for the request; a completed request's
``slo_met`` is None when neither is known (a plain OpenAI server without ``--ttft-ms`` /
``--tpot-ms``). A rejected or failed request always misses (False).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum


class Status(str, Enum):
    OK = "ok"
    REJECTED = "rejected"        # 429 / RESOURCE_EXHAUSTED: admission said no
    FAILED = "failed"            # any other error, timeouts included


@dataclass(frozen=True)
class RequestRecord:
    """Times are seconds; ``sent_s`` is from the start of the run (``planned_s`` when planned)."""

    index: int
    lane: str
    scenario: str | None
    planned_s: float
    sent_s: float
    status: Status
    e2e_s: float
    ttft_s: float | None = None
    tpot_s: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int = 0
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    server_slo_met: bool | None = None
    admission: str | None = None
    retry_after_s: float | None = None
    error: str | None = None

    @property
    def slo_met(self) -> bool | None:
        """See the module docstring; rejected and failed requests miss (False)."""
        if self.status is not Status.OK:
            return False
        if self.ttft_slo_s is None and self.tpot_slo_s is None:
            return None
        if self.ttft_s is None:
            return False
        if self.ttft_slo_s is not None and self.ttft_s > self.ttft_slo_s:
            return False
        return not (self.tpot_slo_s is not None and self.tpot_s is not None
                    and self.tpot_s > self.tpot_slo_s)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["status"] = self.status.value
        d["slo_met"] = self.slo_met
        return d


class StreamTimer:
    """Token arrival bookkeeping of one stream (``perf_counter`` seconds); owned by one sender."""

    def __init__(self, sent: float):
        self.sent = sent
        self.first: float | None = None
        self._stages: dict[int, list] = {}      # stage -> [first time, last time, tokens]

    def tokens(self, now: float, count: int, stage: int = 0) -> None:
        """``count`` (>= 1) tokens of ``stage`` arrived at ``now``."""
        if count < 1:
            return
        if self.first is None:
            self.first = now
        s = self._stages.setdefault(stage, [now, now, 0])
        s[1], s[2] = now, s[2] + count

    @property
    def counted(self) -> int:
        """Tokens counted so far (HTTP: chunks with text, one token each)."""
        return sum(n for _, _, n in self._stages.values())

    @property
    def ttft_s(self) -> float | None:
        return None if self.first is None else self.first - self.sent

    def tpot_s(self, total_tokens: int | None = None, idle_s: float = 0.0) -> float | None:
        """Mean decode time per token. ``total_tokens`` (the server's count) replaces the counted
        tokens of a single-stage stream whose chunks may carry several tokens; ``idle_s`` is
        subtracted from the decode time (tool delays of a stream without stage marks)."""
        if not self._stages:
            return None
        span = sum(last - first for first, last, _ in self._stages.values())
        if total_tokens is not None and len(self._stages) == 1:
            intervals = total_tokens - 1
        else:
            intervals = sum(n - 1 for _, _, n in self._stages.values())
        if intervals < 1:
            return None
        return max(0.0, span - idle_s) / intervals
