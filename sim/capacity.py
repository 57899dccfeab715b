"""Capacity search and placement search.

capacity(spec): the highest request rate whose attainment is >= `target` (0.9), by bracketing
then bisection on the rate (the workload's `rate`, which rescales the trace's time or sets the
generated arrival rate):

    r = start; while attainment(r) >= target: lo = r; r *= 2        (≤ max_doublings)
               while attainment(r) <  target: hi = r; r /= 2        (≤ max_doublings)
    bisect [lo, hi] until hi/lo - 1 <= rel_tol                       (≤ max_bisections)

A run stops early once more than (1 - target) of its requests have failed (it cannot pass).
Attainment is not exactly monotone in the rate (a different time scale is a different trace),
so the result is the last passing rate the search saw, reported with every probe.

placement(spec, rate): the fewest GPUs (P + D, P, D >= 1, up to `max_gpus`) whose attainment at
`rate` is >= target, as DistServe searches its placements; ties go to the higher attainment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from sim.engine import EngineConfig
from sim.run import RunSpec, SimResult, prepare, simulate, with_rate


@dataclass(frozen=True)
class Probe:
    rate: float
    attainment: float
    requests: int
    stopped_early: bool


@dataclass(frozen=True)
class Capacity:
    """`rate`: the highest passing rate found (0.0 if none passed); per GPU: rate / GPUs."""

    rate: float
    per_gpu: float
    gpus: int
    probes: tuple[Probe, ...]
    best: SimResult | None


def _probe(spec: RunSpec, rate: float, target: float) -> tuple[Probe, SimResult]:
    s = with_rate(spec, rate)
    cluster, reqs, rows = prepare(s)
    budget = int(math.floor((1.0 - target) * len(reqs)))
    s = replace(s, engine=replace(s.engine, fail_budget=budget))
    res = simulate(s, (cluster, reqs, rows))
    return Probe(rate, res.summary.attainment, res.summary.requests, res.engine.stopped_early), res


def capacity(spec: RunSpec, start_rate: float = 1.0, target: float = 0.9, rel_tol: float = 0.05,
             max_doublings: int = 12, max_bisections: int = 8) -> Capacity:
    """Highest rate with attainment >= target (module docstring). Deterministic for the spec."""
    if not 0 < target <= 1 or start_rate <= 0:
        raise ValueError(f"need 0 < target <= 1 and start_rate > 0, got {target}, {start_rate}")
    probes: list[Probe] = []
    best: SimResult | None = None
    lo, hi = 0.0, math.inf
    r = start_rate

    def ok(rate: float) -> bool:
        nonlocal best
        p, res = _probe(spec, rate, target)
        probes.append(p)
        passed = p.attainment >= target and not p.stopped_early
        if passed and rate >= max([lo] + [0.0]):
            best = res
        return passed

    if ok(r):
        lo = r
        for _ in range(max_doublings):
            r *= 2
            if not ok(r):
                hi = r
                break
            lo = r
    else:
        hi = r
        for _ in range(max_doublings):
            r /= 2
            if ok(r):
                lo = r
                break
            hi = r
    if lo > 0 and math.isfinite(hi):
        for _ in range(max_bisections):
            if hi / lo - 1 <= rel_tol:
                break
            mid = math.sqrt(lo * hi)
            if ok(mid):
                lo = mid
            else:
                hi = mid
    gpus = spec.cluster.gpus
    return Capacity(lo, lo / gpus, gpus, tuple(probes), best)


@dataclass(frozen=True)
class Placement:
    prefill: int
    decode: int
    attainment: float
    tried: tuple[tuple[int, int, float], ...]


def placement(spec: RunSpec, rate: float, target: float = 0.9, max_gpus: int = 16) -> Placement | None:
    """The P:D split with the fewest GPUs meeting `target` at `rate` (None if none up to max_gpus)."""
    tried = []
    for g in range(2, max_gpus + 1):
        best = None
        for p in range(1, g):
            s = replace(spec, cluster=replace(spec.cluster, prefill=p, decode=g - p, colocated=0))
            att = _probe(s, rate, target)[0].attainment
            tried.append((p, g - p, att))
            if att >= target and (best is None or att > best[2]):
                best = (p, g - p, att)
        if best is not None:
            return Placement(best[0], best[1], best[2], tuple(tried))
    return None


CAPACITY_ENGINE = EngineConfig(drain_s=120.0)
