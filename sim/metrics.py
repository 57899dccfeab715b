"""From request records to the report: attainment, latency percentiles, goodput, counts, cost.

    attainment   SLO-meeting requests / all requests (rejected and unfinished count as misses)
    ttft_*       percentiles over every stage that emitted a first token (seconds)
    tpot_*       percentiles over every stage with >= 2 tokens (mean inter-token time, seconds)
    goodput_rps  attainment × offered rate (requests / arrival window)
    gpu_seconds  GPUs × simulated span (first arrival to the last event)
    cost         gpu_seconds / 3600 × the GPU-hour price; per million output tokens of finished
                 requests, and per SLO-meeting request
    little       mean concurrency L = λ·W (W: mean end-to-end latency of finished requests), the
                 KV it needs (L × mean reserved tokens) and that as a fraction of the cluster's KV
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from router.plan import DecisionKind
from sim.records import Outcome, RequestRecord


@dataclass(frozen=True)
class Latency:
    ttft_p50: float | None
    ttft_p90: float | None
    ttft_p99: float | None
    tpot_p50: float | None
    tpot_p90: float | None
    tpot_p99: float | None


@dataclass(frozen=True)
class Group:
    """Metrics of one slice of requests (a lane, or a stage index)."""

    requests: int
    met: int
    attainment: float
    latency: Latency


@dataclass(frozen=True)
class Summary:
    requests: int
    met: int
    attainment: float
    latency: Latency
    goodput_rps: float
    offered_rps: float
    admitted: int
    best_effort: int
    rejected: int
    unfinished: int
    preempted: int
    output_tokens: int
    gpus: int
    span_s: float
    gpu_seconds: float
    gpu_hour_usd: float
    cost_usd: float
    cost_per_million_tokens: float | None
    cost_per_successful_request: float | None
    mean_concurrency: float
    kv_needed_tokens: float
    kv_needed_fraction: float
    lanes: dict[str, Group]
    stages: dict[str, Group]

    def as_json(self) -> dict:
        """The flat JSON of the issue's contract (latency keys at the top level)."""
        d = asdict(self)
        d.update(d.pop("latency"))
        for part in ("lanes", "stages"):
            for g in d[part].values():
                g.update(g.pop("latency"))
        return d


def _pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


def _latency(recs: list[RequestRecord], stage: int | None = None) -> Latency:
    ttft, tpot = [], []
    for r in recs:
        for k in (range(len(r.request.stages)) if stage is None else [stage]):
            if k >= len(r.request.stages):
                continue
            t = r.ttft(k)
            if t is not None:
                ttft.append(t)
            p = r.tpot(k)
            if p is not None:
                tpot.append(p)
    return Latency(*(_pct(ttft, q) for q in (50, 90, 99)), *(_pct(tpot, q) for q in (50, 90, 99)))


def _group(recs: list[RequestRecord], met: set[int], stage: int | None = None) -> Group:
    if stage is None:
        n_met = sum(1 for r in recs if id(r) in met)
    else:
        n_met = sum(1 for r in recs if r.outcome is Outcome.DONE and r.stage_met(stage))
    return Group(len(recs), n_met, n_met / len(recs) if recs else 0.0, _latency(recs, stage))


def summarize(records: tuple[RequestRecord, ...], gpus: int, end_s: float, gpu_hour_usd: float,
              kv_capacity_tokens: int) -> Summary:
    if not records:
        raise ValueError("no requests to summarize")
    met = {id(r) for r in records if r.met_slo()}
    arr = np.array([r.request.arrival_s for r in records])
    start, window = float(arr.min()), float(arr.max() - arr.min())
    offered = len(records) / window if window > 0 else float(len(records))
    span = max(end_s - start, 1e-9)
    gpu_s = gpus * span
    cost = gpu_s / 3600.0 * gpu_hour_usd
    out_tokens = sum(r.output_tokens for r in records)
    done = [r for r in records if r.outcome is Outcome.DONE]
    e2e = [max(r.stage_end.values()) - r.request.arrival_s for r in done if r.stage_end]
    conc = offered * float(np.mean(e2e)) if e2e else 0.0
    kv_need = conc * float(np.mean([r.request.total_tokens for r in records]))
    lanes: dict[str, list[RequestRecord]] = {}
    for r in records:
        lanes.setdefault((r.lane or r.request.lane).value, []).append(r)
    n_stages = max(len(r.request.stages) for r in records)
    stages = {str(k): _group([r for r in records if len(r.request.stages) > k], met, k) for k in range(n_stages)}
    kinds = [r.decision for r in records]
    return Summary(
        requests=len(records), met=len(met), attainment=len(met) / len(records), latency=_latency(list(records)),
        goodput_rps=offered * len(met) / len(records), offered_rps=offered,
        admitted=kinds.count(DecisionKind.ADMIT), best_effort=kinds.count(DecisionKind.BEST_EFFORT),
        rejected=kinds.count(DecisionKind.REJECT),
        unfinished=sum(1 for r in records if r.outcome is Outcome.UNFINISHED),
        preempted=sum(r.preempted for r in records), output_tokens=out_tokens, gpus=gpus, span_s=span,
        gpu_seconds=gpu_s, gpu_hour_usd=gpu_hour_usd, cost_usd=cost,
        cost_per_million_tokens=cost / out_tokens * 1e6 if out_tokens else None,
        cost_per_successful_request=cost / len(met) if met else None,
        mean_concurrency=conc, kv_needed_tokens=kv_need,
        kv_needed_fraction=kv_need / (kv_capacity_tokens * gpus) if kv_capacity_tokens else 0.0,
        lanes={k: _group(v, met) for k, v in sorted(lanes.items())}, stages=stages)
