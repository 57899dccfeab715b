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

ceiling(spec): an upper bound on the capacity of any policy on the same GPUs (`met_bound`: a
fluid bound on the work that must fit between arrivals and deadlines); loose, but a ratio the
bound rules out is out of reach for every scheduler. `ceiling(spec, kv_resident=True)` adds KV
memory (requests left unfinished at a window's end must fit in KV), valid for every policy that
keeps a started request's KV until it finishes.

placement(spec, rate): the fewest GPUs (P + D, P, D >= 1, up to `max_gpus`) whose attainment at
`rate` is >= target, as DistServe searches its placements; ties go to the higher attainment.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from router.perf_model import attention_pairs
from router.scheduler import Scheduler
from sim.cluster import GPU_HOUR_USD, Cluster
from sim.engine import Engine, EngineConfig
from sim.metrics import summarize
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


def _probe(spec: RunSpec, rate: float, target: float,
           make: Callable[[Cluster], Scheduler] | None = None) -> tuple[Probe, SimResult]:
    s = with_rate(spec, rate)
    cluster, reqs, rows = prepare(s)
    budget = int(math.floor((1.0 - target) * len(reqs)))
    s = replace(s, engine=replace(s.engine, fail_budget=budget))
    if make is None:
        res = simulate(s, (cluster, reqs, rows))
    else:                       # the same run as `simulate`, with the caller's scheduler
        t0 = time.perf_counter()
        eng = Engine(reqs, make(cluster), cluster.perf, cluster.workers, cluster.transfer_s, s.engine).run()
        price = s.gpu_hour_usd if s.gpu_hour_usd is not None else GPU_HOUR_USD[s.cluster.hardware]
        summary = summarize(eng.records, cluster.spec.gpus, eng.end_s, price, cluster.kv_tokens)
        res = SimResult(s, summary, eng, time.perf_counter() - t0, rows.dropped, rows.clipped)
    return Probe(rate, res.summary.attainment, res.summary.requests, res.engine.stopped_early), res


def capacity(spec: RunSpec, start_rate: float = 1.0, target: float = 0.9, rel_tol: float = 0.05,
             max_doublings: int = 12, max_bisections: int = 8,
             make: Callable[[Cluster], Scheduler] | None = None) -> Capacity:
    """Highest rate with attainment >= target (module docstring). Deterministic for the spec.
    `make(cluster)`: a fresh scheduler per probe instead of the spec's policy defaults (e.g. a
    baseline with another chunk size); None uses `sim.run.make_scheduler`."""
    if not 0 < target <= 1 or start_rate <= 0:
        raise ValueError(f"need 0 < target <= 1 and start_rate > 0, got {target}, {start_rate}")
    probes: list[Probe] = []
    best: SimResult | None = None
    lo, hi = 0.0, math.inf
    r = start_rate

    def ok(rate: float) -> bool:
        nonlocal best
        p, res = _probe(spec, rate, target, make)
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


# ---- the fluid ceiling: an upper bound on any policy's capacity ----------------------------------
def _work(reqs, model) -> tuple[np.ndarray, np.ndarray]:
    """Per affine piece k (rows) and request (columns): the piece's slope terms summed over the
    request's first prefill (`pre`) and over its whole service (`full`), intercepts dropped.
    Any schedule's busy time is >= Σ_batches piece_k(batch) >= Σ_requests full_k for each k."""
    rows = np.zeros((len(reqs), 5, 2))          # (prefill-only features, all features)
    for i, r in enumerate(reqs):
        prior = 0
        for k, st in enumerate(r.stages):
            x = np.zeros(5)
            if st.input_tokens:
                x += (st.input_tokens, 0, 0, attention_pairs(st.input_tokens, prior), 1)
            prior += st.input_tokens
            if k == 0:
                rows[i, :, 0] = x
            d = st.max_output_tokens - 1
            x += (0, d, d * prior + d * (d + 1) / 2, 0, d)
            prior += st.max_output_tokens
            rows[i, :, 1] += x
    coef = np.array([p.coef for p in model.pieces])            # pieces × 5
    return np.einsum("kf,nf->kn", coef, rows[:, :, 0]), np.einsum("kf,nf->kn", coef, rows[:, :, 1])


def _deadlines(reqs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrival, first-token deadline of stage 0, and the latest time the request can finish while
    meeting its SLO (each stage: arrival + TTFT + (tokens − 1)·TPOT, then the tool delay)."""
    arr = np.array([r.arrival_s for r in reqs])
    first = arr + np.array([r.stages[0].slo.ttft_s for r in reqs])
    end = arr + np.array([sum(s.tool_delay_s + s.slo.ttft_s + (s.max_output_tokens - 1) * s.slo.tpot_s
                              for s in r.stages) for r in reqs])
    return arr, first, end


LAMBDA_FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0)   # memory prices tried, relative to the median (below)


def met_bound(reqs, model, gpus: int, lengths: tuple[float, ...] = (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
              kv_tokens: float | None = None, kv_min_window_s: float = 4.0) -> int:
    """Upper bound on how many of `reqs` any policy on `gpus` GPUs can serve within their SLOs.

    Rule: for disjoint windows [t1, t2), the requests that arrive at or after t1 and whose first
    token is due by t2 need (at least) their first prefill inside the window, and all of their
    work if they must also finish by t2; at most G·(t2 − t1) seconds of work fit, so at most the
    cheapest ones that fit can be met. Requests outside every window count as met. Each partition
    (a grid of one window length and offset, or the single window [0, t2)) and each affine piece
    gives a valid bound; the smallest is returned.

    With `kv_tokens` (the KV capacity of all GPUs together) the bound also uses memory, for
    policies that keep a started request's KV until it finishes (no evict-and-recompute, no
    offload: true of the SLO policy's admitted requests, which are never preempted). A request of
    a window that is not finished at t2 holds at least its first stage's input in KV then, and all
    of those fit in `kv_tokens`. Both constraints hold, so for any price λ ≥ 0 (seconds per
    token) their sum does: Σ cost_i ≤ G·(t2 − t1) + λ·kv_tokens with cost_i = full work, or
    prefill + λ·input for a request left unfinished at t2 (the cheaper, when its deadline allows).
    Every λ gives a valid bound (the fewest that fit under the summed constraint); λ = 0 and
    `LAMBDA_FACTORS` × the median over requests of (work after the first prefill) / (input held)
    are tried and the smallest bound kept. Memory is priced only in windows of at least
    `kv_min_window_s`."""
    pre, full = _work(reqs, model)
    arr, first, end = _deadlines(reqs)
    held = np.array([r.stages[0].input_tokens for r in reqs], dtype=float)
    n, best = len(reqs), len(reqs)
    t_max = float(end.max())
    t2s = np.union1d(np.geomspace(1.0, t_max + 1.0, 24), np.quantile(first, np.linspace(0, 1, 33)))
    parts = [[(0.0, float(t2))] for t2 in t2s]
    for L in lengths:
        for off in (0.0, L / 4, L / 2, 3 * L / 4):
            edges = np.arange(-off, t_max + L, L)
            parts.append(list(zip(edges[:-1], edges[1:])))
    use_kv = kv_tokens is not None and math.isfinite(kv_tokens)
    for part in parts:
        long_enough = use_kv and part[0][1] - part[0][0] >= kv_min_window_s
        for k in range(len(model.pieces)):
            lams = [0.0]
            if long_enough:
                unit = float(np.median((full[k] - pre[k]) / np.maximum(held, 1.0)))
                lams += [unit * f for f in LAMBDA_FACTORS if unit > 0]
            for lam in lams:
                met = n
                for t1, t2 in part:
                    inside = (arr >= t1) & (first <= t2)
                    if not inside.any():
                        continue
                    done = end[inside] <= t2
                    open_cost = np.minimum(full[k, inside], pre[k, inside] + lam * held[inside]) \
                        if lam > 0 else pre[k, inside]
                    cost = np.sort(np.where(done, full[k, inside], open_cost))
                    room = gpus * (t2 - t1) + (lam * kv_tokens if lam > 0 else 0.0)
                    fit = int(np.searchsorted(np.cumsum(cost), room * (1 + 1e-9), side="right"))
                    met -= int(inside.sum()) - fit
                best = min(best, met)
    return best


def ceiling(spec: RunSpec, start_rate: float = 1.0, target: float = 0.9, rel_tol: float = 0.05,
            max_steps: int = 12, kv_resident: bool = False) -> float:
    """The highest rate whose `met_bound` fraction is >= target, searched like `capacity`: no
    policy on these GPUs can pass a rate that fails this bound (the bound ignores intercepts,
    batching and TP1 placement, so the true frontier is lower). `kv_resident`: also bound by KV
    memory, valid for policies that never evict a started request (see `met_bound`); without it
    the bound ignores memory and holds for every policy."""
    def ok(rate: float) -> bool:
        cluster, reqs, _ = prepare(with_rate(spec, rate))
        kv = cluster.kv_tokens * spec.cluster.gpus if kv_resident else None
        return met_bound(reqs, cluster.perf, spec.cluster.gpus, kv_tokens=kv) >= target * len(reqs)

    lo, hi, r = 0.0, math.inf, start_rate
    for _ in range(max_steps):
        if ok(r):
            lo, r = r, r * 2
        else:
            hi = r
            break
    if lo == 0.0:
        for _ in range(max_steps):
            r /= 2
            if ok(r):
                lo = r
                break
            hi = r
    while lo > 0 and math.isfinite(hi) and hi / lo - 1 > rel_tol:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo
