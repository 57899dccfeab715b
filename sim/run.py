"""One simulation end to end: trace → requests → cluster → policy → engine → summary.

    spec = RunSpec(trace=..., scenario="chatbot", policy="slo", cluster=ClusterSpec(prefill=8, decode=8))
    result = simulate(spec)            # SimResult: summary, counters, wall time
    result.as_json()                   # the issue's JSON contract

Policies: "slo" (router.scheduler.SloScheduler, colocated or disaggregated) and the baselines
of router.baselines: fcfs, sarathi, priority, edf (colocated only), distserve (disaggregated only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from router.baselines import BASELINES
from router.config import SchedulerConfig
from router.request import Request
from router.scheduler import Scheduler, SloScheduler
from sim.cluster import GPU_HOUR_USD, Cluster, ClusterSpec, build
from sim.engine import Engine, EngineConfig, EngineResult
from sim.errors import SimInputError
from sim.metrics import Summary, summarize
from sim.trace import TraceRows, arrivals, clip, load_rows, replay
from sim.workload import SloOverride, build_requests

POLICIES = ("slo", "fcfs", "sarathi", "priority", "edf", "distserve")
COLOCATED_ONLY = ("fcfs", "sarathi", "priority", "edf")


@dataclass(frozen=True)
class Workload:
    """Where requests come from. Replay formats: `rate` rescales time (None: as recorded);
    lengths-only files need `rate` and `duration_s` and get Poisson (cv 1) or gamma arrivals;
    `generate` does the same for a timed trace (its recorded times are ignored, lengths cycle)."""

    trace: str
    fmt: str | None = None
    rate: float | None = None
    duration_s: float | None = None
    cv: float = 1.0
    seed: int = 0
    generate: bool = False


@dataclass(frozen=True)
class RunSpec:
    workload: Workload
    scenario: str
    policy: str
    cluster: ClusterSpec
    slo: SloOverride = SloOverride()
    gpu_hour_usd: float | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)
    scheduler: SchedulerConfig | None = None


@dataclass(frozen=True)
class SimResult:
    spec: RunSpec
    summary: Summary
    engine: EngineResult
    sim_wall_s: float
    rows_dropped: int
    rows_clipped: int

    def as_json(self) -> dict:
        c = self.spec.cluster
        out = self.summary.as_json()
        out.update(policy=self.spec.policy, scenario=self.spec.scenario, hardware=c.hardware, model=c.model,
                   prefill=c.prefill, decode=c.decode, colocated=c.colocated, sim_wall_s=self.sim_wall_s,
                   plans=self.engine.plans, batches=self.engine.batches, steps=self.engine.steps,
                   stopped_early=self.engine.stopped_early, peak_kv_fraction=self.engine.peak_kv_fraction,
                   rows_dropped=self.rows_dropped, rows_clipped=self.rows_clipped)
        return out


def load_workload(w: Workload, context_tokens: int) -> TraceRows:
    rows = load_rows(w.trace, w.fmt)
    if rows.arrival_s is None or w.generate:
        if w.rate is None or w.duration_s is None:
            raise SimInputError(f"{w.trace} has lengths only: give --rate and --duration for its arrivals")
        rows = arrivals(rows, w.rate, w.duration_s, w.seed, w.cv)
    else:
        rows = replay(rows, w.rate, w.duration_s)
    return clip(rows, context_tokens)


def make_scheduler(policy: str, cluster: Cluster, config: SchedulerConfig | None = None) -> Scheduler:
    """A fresh scheduler for `policy` on `cluster` (checks the policy fits the cluster's layout)."""
    if policy not in POLICIES:
        raise SimInputError(f"unknown policy {policy!r}; expected one of {', '.join(POLICIES)}")
    spec = cluster.spec
    if policy in COLOCATED_ONLY and spec.disaggregated:
        raise SimInputError(f"policy {policy} runs on colocated workers: use --colocated K")
    if policy == "distserve" and not spec.disaggregated:
        raise SimInputError("policy distserve needs --prefill N --decode M (N, M >= 1)")
    if policy == "slo":
        return SloScheduler(cluster.perf, config, transfer_s=cluster.transfer_s)
    return BASELINES[policy](max_prompt_tokens=cluster.context_tokens)


def prepare(spec: RunSpec) -> tuple[Cluster, tuple[Request, ...], TraceRows]:
    cluster = build(spec.cluster)
    rows = load_workload(spec.workload, cluster.context_tokens)
    reqs = build_requests(rows, spec.scenario, cluster.perf, spec.workload.seed, spec.slo,
                          context_tokens=cluster.context_tokens)
    return cluster, reqs, rows


def simulate(spec: RunSpec, prepared: tuple[Cluster, tuple[Request, ...], TraceRows] | None = None) -> SimResult:
    """Run one simulation. `prepared` (from `prepare`) skips reloading the trace."""
    cluster, reqs, rows = prepared or prepare(spec)
    sched = make_scheduler(spec.policy, cluster, spec.scheduler)
    t0 = time.perf_counter()
    res = Engine(reqs, sched, cluster.perf, cluster.workers, cluster.transfer_s, spec.engine).run()
    wall = time.perf_counter() - t0
    price = spec.gpu_hour_usd if spec.gpu_hour_usd is not None else GPU_HOUR_USD[spec.cluster.hardware]
    summary = summarize(res.records, cluster.spec.gpus, res.end_s, price, cluster.kv_tokens)
    return SimResult(spec, summary, res, wall, rows.dropped, rows.clipped)


def with_rate(spec: RunSpec, rate: float) -> RunSpec:
    return replace(spec, workload=replace(spec.workload, rate=rate))
