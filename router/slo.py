"""SLO specifications and the SLOs-Serve scenario presets.

A TTFT objective is either absolute (seconds) or relative: a slowdown factor over the predicted
no-load prefill time of the stage's input (`perf.prefill_time(tokens)`). TPOT is always absolute.

    preset        stages                                  TTFT       TPOT
    chatbot       answer                                  5x         100 ms
    coding        answer                                  5x          50 ms
    summarization answer                                  3x         100 ms
    reasoning     thinking → answer                       3x          50 ms thinking, 100 ms answer
    tool_calling  intermediate stages → final stage       3x          50 ms, final 100 ms
    mixed         one of the above per request (by `kind`)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

from router.request import SLO


class Scenario(str, Enum):
    CHATBOT = "chatbot"
    CODING = "coding"
    SUMMARIZATION = "summarization"
    REASONING = "reasoning"
    TOOL_CALLING = "tool_calling"
    MIXED = "mixed"


@dataclass(frozen=True)
class SloSpec:
    """One stage's objective before resolution: exactly one of ttft_slowdown / ttft_s is set."""

    tpot_s: float
    ttft_slowdown: float | None = None
    ttft_s: float | None = None

    def __post_init__(self) -> None:
        if (self.ttft_slowdown is None) == (self.ttft_s is None):
            raise ValueError("set exactly one of ttft_slowdown (relative) and ttft_s (absolute)")
        if self.tpot_s <= 0 or (self.ttft_slowdown or 1) <= 0 or (self.ttft_s or 1) <= 0:
            raise ValueError(f"SLO values must be positive: {self}")

    def resolve(self, input_tokens: int, prefill_time: Callable[[int], float],
                min_ttft_s: float = 0.0) -> SLO:
        """Absolute SLO for a stage with `input_tokens` (relative TTFT uses `prefill_time`).

        `min_ttft_s` floors a relative TTFT (a 1-token stage still needs a batch slot).
        """
        if self.ttft_s is not None:
            return SLO(self.ttft_s, self.tpot_s)
        base = prefill_time(max(1, input_tokens))
        return SLO(max(min_ttft_s, self.ttft_slowdown * base), self.tpot_s)


@dataclass(frozen=True)
class ScenarioPreset:
    """Stage SLO specs: `first` for every stage but the last, `last` for the last one."""

    first: SloSpec
    last: SloSpec

    def for_stage(self, index: int, num_stages: int) -> SloSpec:
        return self.last if index == num_stages - 1 else self.first


PRESETS: dict[Scenario, ScenarioPreset] = {
    Scenario.CHATBOT: ScenarioPreset(SloSpec(0.100, ttft_slowdown=5), SloSpec(0.100, ttft_slowdown=5)),
    Scenario.CODING: ScenarioPreset(SloSpec(0.050, ttft_slowdown=5), SloSpec(0.050, ttft_slowdown=5)),
    Scenario.SUMMARIZATION: ScenarioPreset(SloSpec(0.100, ttft_slowdown=3),
                                           SloSpec(0.100, ttft_slowdown=3)),
    Scenario.REASONING: ScenarioPreset(SloSpec(0.050, ttft_slowdown=3), SloSpec(0.100, ttft_slowdown=3)),
    Scenario.TOOL_CALLING: ScenarioPreset(SloSpec(0.050, ttft_slowdown=3),
                                          SloSpec(0.100, ttft_slowdown=3)),
}
MIXED_KINDS = (Scenario.CHATBOT, Scenario.CODING, Scenario.SUMMARIZATION, Scenario.REASONING,
               Scenario.TOOL_CALLING)


def preset(scenario: Scenario | str, kind: Scenario | str | None = None) -> ScenarioPreset:
    """The preset of a scenario; `mixed` needs the request's `kind` (one of the other five)."""
    scenario = Scenario(scenario)
    if scenario is Scenario.MIXED:
        if kind is None or Scenario(kind) is Scenario.MIXED:
            raise ValueError("the mixed scenario needs a per-request kind (chatbot, coding, ...)")
        return PRESETS[Scenario(kind)]
    return PRESETS[scenario]


def stage_slos(scenario: Scenario | str, input_tokens: list[int], prefill_time: Callable[[int], float],
               kind: Scenario | str | None = None, min_ttft_s: float = 0.0) -> list[SLO]:
    """Resolved SLOs for the stages of one request with the given per-stage input tokens."""
    p = preset(scenario, kind)
    n = len(input_tokens)
    return [p.for_stage(i, n).resolve(t, prefill_time, min_ttft_s) for i, t in enumerate(input_tokens)]
