"""Scenario presets: turn trace rows into `router.request.Request`s with SLOs, lanes, tenants
and stages. Deterministic for a seed.

    scenario       stages built from one trace row (input I, output O)          tenant
    chatbot        (I → O)                                                       chat
    coding         (I → O)                                                       code
    summarization  (I → O)                                                       summ
    reasoning      (I → think O) then (0 → answer max(8, O//2)), no tool delay   reason
    tool_calling   (I → call max(4, O//4)) then tool result T ~ U[50, 400] tokens
                   after a tool delay ~ Exp(mean 0.5 s) → (T → O)                tools
    mixed          each row draws one of the five kinds (uniform, seeded)        = its kind

SLOs come from router.slo (relative TTFT: a slowdown over the no-load prefill time of the stage,
floored at `min_ttft_s`; absolute TPOT). All requests ask for the interactive lane; the
scheduler's cost score demotes long ones. Optional overrides (`SloOverride`) replace the
preset's numbers for every stage and are checked for feasibility (`check_feasible`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from router.perf_model import BatchShape, PerfModel
from router.request import SLO, Lane, Request, Stage
from router.slo import MIXED_KINDS, Scenario, stage_slos
from sim.errors import SimInputError
from sim.trace import TraceRows

SCENARIOS = tuple(s.value for s in Scenario)
MIN_TTFT_S = 0.25
_TENANT = {Scenario.CHATBOT: "chat", Scenario.CODING: "code", Scenario.SUMMARIZATION: "summ",
           Scenario.REASONING: "reason", Scenario.TOOL_CALLING: "tools"}


@dataclass(frozen=True)
class SloOverride:
    """Replace the preset: TTFT as a slowdown over no-load prefill, TPOT in seconds."""

    ttft_slowdown: float | None = None
    tpot_s: float | None = None


def check_feasible(model: PerfModel, override: SloOverride, context_tokens: int) -> None:
    """Raise SimInputError when no request could meet the SLO even alone on an idle GPU."""
    if override.ttft_slowdown is not None and override.ttft_slowdown < 1.0:
        raise SimInputError(f"impossible SLO: TTFT slowdown {override.ttft_slowdown} < 1 is faster than "
                            f"a prefill on an idle GPU")
    if override.tpot_s is not None:
        one = model.time(BatchShape(decode_tokens=1, decode_context=1, num_seqs=1))
        if override.tpot_s < one:
            raise SimInputError(f"impossible SLO: TPOT {override.tpot_s * 1e3:.2f} ms is below one decode "
                                f"step of a single sequence ({one * 1e3:.2f} ms) on this hardware")


def _stages(kind: Scenario, i: int, o: int, rng: np.random.Generator) -> list[tuple[int, int, float]]:
    if kind is Scenario.REASONING:
        return [(i, o, 0.0), (0, max(8, o // 2), 0.0)]
    if kind is Scenario.TOOL_CALLING:
        return [(i, max(4, o // 4), 0.0), (int(rng.integers(50, 401)), o, float(rng.exponential(0.5)))]
    return [(i, o, 0.0)]


def build_requests(rows: TraceRows, scenario: str, model: PerfModel, seed: int = 0,
                   override: SloOverride = SloOverride(), min_ttft_s: float = MIN_TTFT_S,
                   context_tokens: int = 8192) -> tuple[Request, ...]:
    """One request per row (rows must have arrival times), ids r0, r1, ... in arrival order."""
    if scenario not in SCENARIOS:
        raise SimInputError(f"unknown scenario {scenario!r}; expected one of {', '.join(SCENARIOS)}")
    if rows.arrival_s is None:
        raise SimInputError("rows need arrival times (replay or generate them first)")
    if len(rows) == 0:
        raise SimInputError(f"trace {rows.source} has no requests to simulate")
    check_feasible(model, override, context_tokens)
    sc = Scenario(scenario)
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, len(MIXED_KINDS), size=len(rows)) if sc is Scenario.MIXED else None
    cache: dict[int, float] = {}

    def prefill_time(tokens: int) -> float:
        t = cache.get(tokens)
        if t is None:
            t = cache[tokens] = model.prefill_time(tokens)
        return t

    out = []
    arr, inp, outp = rows.arrival_s.tolist(), rows.input_tokens.tolist(), rows.output_tokens.tolist()
    for n in range(len(rows)):
        kind = MIXED_KINDS[int(kinds[n])] if kinds is not None else sc
        parts = _stages(kind, inp[n], outp[n], rng)
        slos = stage_slos(sc, [p[0] for p in parts], prefill_time, kind=kind if kinds is not None else None,
                          min_ttft_s=min_ttft_s)
        if override.ttft_slowdown is not None or override.tpot_s is not None:
            slos = [SLO(max(min_ttft_s, override.ttft_slowdown * prefill_time(max(1, p[0])))
                        if override.ttft_slowdown is not None else s.ttft_s,
                        override.tpot_s if override.tpot_s is not None else s.tpot_s)
                    for s, p in zip(slos, parts)]
        stages = tuple(Stage(p[0], p[1], s, tool_delay_s=p[2]) for p, s in zip(parts, slos))
        out.append(Request(f"r{n}", _TENANT[kind], Lane.INTERACTIVE, arr[n], stages))
    return tuple(out)
