"""Per-request records the engine fills in, and the SLO check on them.

A request meets its SLO only if it finished and every stage met both objectives:
    TTFT_k = first token of stage k − arrival of stage k           ≤ slo.ttft_s
    TPOT_k = (last token − first token) / (tokens − 1)             ≤ slo.tpot_s   (tokens ≥ 2)
TPOT is the mean inter-token time of the stage (as DistServe and vLLM's benchmarks report it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from router.plan import DecisionKind
from router.request import Lane, Request

EPS = 1e-9


class Outcome(str, Enum):
    UNFINISHED = "unfinished"    # still running when the clock stopped
    DONE = "done"
    REJECTED = "rejected"


@dataclass
class RequestRecord:
    """Mutable while the engine runs; read-only afterwards (metrics only read it)."""

    request: Request
    decision: DecisionKind | None = None
    lane: Lane | None = None
    outcome: Outcome = Outcome.UNFINISHED
    preempted: int = 0
    promoted: bool = False          # best effort admitted later (Plan.promote)
    stage_arrival: dict[int, float] = field(default_factory=dict)
    first: dict[int, float] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)
    count: dict[int, int] = field(default_factory=dict)
    stage_end: dict[int, float] = field(default_factory=dict)

    def tokens(self, stage: int, t_first: float, t_last: float, n: int) -> None:
        """`n` tokens of `stage`, the first at `t_first`, the last at `t_last`."""
        if stage not in self.first:
            self.first[stage] = t_first
        self.last[stage] = t_last
        self.count[stage] = self.count.get(stage, 0) + n

    def ttft(self, stage: int) -> float | None:
        if stage not in self.first or stage not in self.stage_arrival:
            return None
        return self.first[stage] - self.stage_arrival[stage]

    def tpot(self, stage: int) -> float | None:
        n = self.count.get(stage, 0)
        if n < 2:
            return None
        return (self.last[stage] - self.first[stage]) / (n - 1)

    def stage_met(self, stage: int) -> bool:
        slo = self.request.stages[stage].slo
        t = self.ttft(stage)
        if t is None or t > slo.ttft_s + EPS or stage not in self.stage_end:
            return False
        p = self.tpot(stage)
        return p is None or p <= slo.tpot_s + EPS

    def met_slo(self) -> bool:
        return self.outcome is Outcome.DONE and all(self.stage_met(k) for k in range(len(self.request.stages)))

    @property
    def output_tokens(self) -> int:
        return sum(self.count.values()) if self.outcome is Outcome.DONE else 0
