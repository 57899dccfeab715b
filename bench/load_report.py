"""The load report: per-lane latency percentiles, SLO attainment, goodput (JSON-ready dicts).

For each lane (and ``"all"``)::

    requests        sent (every planned request is sent)
    completed / rejected / failed      status counts (rejected: 429 / RESOURCE_EXHAUSTED)
    slo_met         completed requests within their TTFT and mean-TPOT SLO (load_record)
    attainment      slo_met / requests: rejected and failed requests count as misses
    goodput_rps     slo_met / wall_s (like ``vllm bench serve --goodput``)
    throughput_rps  completed / wall_s;  output_tokens_per_s: completed output tokens / wall_s
    ttft_ms, tpot_ms, e2e_ms: {mean, p50, p90, p99} over completed requests, client-measured
    server_slo_met  completed requests the server itself reported within SLO
    send_lag_ms     sent - planned (queueing behind --max-concurrency): {mean, p50, p90, p99}

Percentiles interpolate linearly between order statistics (numpy's default). A value that cannot
be computed is ``None`` (JSON ``null``): percentiles without a completed request; ``slo_met``,
``attainment`` and ``goodput_rps`` when no request of the group has a known SLO (none given with
``--ttft-ms``/``--tpot-ms`` and none reported by the server).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from bench.load_record import RequestRecord, Status
from bench.load_workload import LANES

QUANTILES = (50, 90, 99)
SCHEMA = "tandem.bench.load/1"


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated ``q``-th percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def distribution_ms(values_s: Iterable[float | None]) -> dict:
    """``{mean, p50, p90, p99}`` in milliseconds of the non-None values (seconds in)."""
    xs = [v * 1e3 for v in values_s if v is not None]
    out = {"mean": sum(xs) / len(xs) if xs else None}
    out.update({f"p{q}": percentile(xs, q) for q in QUANTILES})
    return out


def _rate(n: float, wall_s: float) -> float | None:
    return n / wall_s if wall_s > 0 else None


def summarize(records: Sequence[RequestRecord], wall_s: float) -> dict:
    """The summary of one group of records (a lane, or all); see the module docstring."""
    ok = [r for r in records if r.status is Status.OK]
    known = any(r.ttft_slo_s is not None or r.tpot_slo_s is not None for r in records)
    slo_met = sum(1 for r in records if r.slo_met)
    out_tokens = sum(r.output_tokens for r in ok)
    errors = [r.error for r in records if r.error]
    return {
        "requests": len(records),
        "completed": len(ok),
        "rejected": sum(1 for r in records if r.status is Status.REJECTED),
        "failed": sum(1 for r in records if r.status is Status.FAILED),
        "slo_met": slo_met if known else None,
        "attainment": slo_met / len(records) if known and records else None,
        "goodput_rps": _rate(slo_met, wall_s) if known else None,
        "throughput_rps": _rate(len(ok), wall_s),
        "output_tokens": out_tokens,
        "output_tokens_per_s": _rate(out_tokens, wall_s),
        "ttft_ms": distribution_ms(r.ttft_s for r in ok),
        "tpot_ms": distribution_ms(r.tpot_s for r in ok),
        "e2e_ms": distribution_ms(r.e2e_s for r in ok),
        "send_lag_ms": distribution_ms(max(0.0, r.sent_s - r.planned_s) for r in records),
        "server_slo_met": sum(1 for r in ok if r.server_slo_met),
        "first_error": errors[0] if errors else None,
    }


def report(records: Sequence[RequestRecord], wall_s: float, config: dict) -> dict:
    """The whole JSON document: schema, config, wall time, ``overall``, ``lanes`` (those that
    had requests, in lane order) and every request's record."""
    by_lane = {lane: [r for r in records if r.lane == lane] for lane in LANES}
    return {
        "schema": SCHEMA,
        "config": config,
        "wall_s": wall_s,
        "overall": summarize(records, wall_s),
        "lanes": {lane: summarize(rs, wall_s) for lane, rs in by_lane.items() if rs},
        "requests": [r.as_dict() for r in records],
    }


def _fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def table(doc: dict) -> str:
    """A short text table of the report (one row per lane, then all)."""
    head = (f"{'lane':<12}{'req':>5}{'ok':>5}{'rej':>5}{'fail':>5}{'attain':>8}{'goodput':>9}"
            f"{'tok/s':>8}{'ttft p50':>10}{'p99':>9}{'tpot p50':>10}{'p99':>8}")
    rows = [head]
    for name, s in [*doc["lanes"].items(), ("all", doc["overall"])]:
        rows.append(f"{name:<12}{s['requests']:>5}{s['completed']:>5}{s['rejected']:>5}{s['failed']:>5}"
                    f"{_fmt(s['attainment'], '.1%'):>8}{_fmt(s['goodput_rps'], '.2f'):>9}"
                    f"{_fmt(s['output_tokens_per_s']):>8}{_fmt(s['ttft_ms']['p50']):>10}"
                    f"{_fmt(s['ttft_ms']['p99']):>9}{_fmt(s['tpot_ms']['p50']):>10}"
                    f"{_fmt(s['tpot_ms']['p99']):>8}")
    rows.append(f"wall {doc['wall_s']:.1f} s; times in ms; goodput in SLO-meeting req/s")
    return "\n".join(rows)
