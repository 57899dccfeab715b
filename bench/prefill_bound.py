"""An optimistic reference for admission on prompt-heavy traces: the share of requests whose
prompt a fluid, preemptive scheduler could prefill before the TTFT deadline.

    .venv/bin/python bench/prefill_bound.py --trace code --slowdown 5 --rates 6,8,10

Model (a diagnostic, not a policy and not a proven bound): all GPUs act as one machine that is
`--gpus` times as fast as one (perfect sharing), prefill of a prompt of n tokens costs
`PerfModel.prefill_time(n)` on one GPU, decode costs nothing, and the machine preempts at
arrivals and runs the shortest remaining prompt first (or the earliest deadline first with
`--order edf`), dropping a request the moment it can no longer meet its TTFT
(max(0.25 s, slowdown × prefill time), the scenario presets' rule). Requests: the first
`--trace-minutes` of the Azure 2023 trace, time-rescaled to each mean rate, as in
bench/sim_capacity.py. Prints the met share per rate.
"""

from __future__ import annotations

import argparse
import heapq
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"


def met_share(arrival: np.ndarray, work: np.ndarray, deadline: np.ndarray, order: str) -> float:
    """Preemptive single machine; `work` in seconds; ready jobs keyed by remaining work or deadline."""
    idx = np.argsort(arrival, kind="stable")
    left = work.copy()
    t, i, n, met, ready = 0.0, 0, len(arrival), 0, []
    while i < n or ready:
        if not ready and t < arrival[idx[i]]:
            t = float(arrival[idx[i]])
        while i < n and arrival[idx[i]] <= t + 1e-12:
            j = int(idx[i])
            heapq.heappush(ready, (left[j] if order == "sjf" else deadline[j], j))
            i += 1
        ready = [(k, j) for k, j in ready if t + left[j] <= deadline[j] + 1e-12]
        heapq.heapify(ready)
        if not ready:
            continue
        k, j = heapq.heappop(ready)
        nxt = arrival[idx[i]] if i < n else np.inf
        run = min(left[j], nxt - t)
        t += run
        left[j] -= run
        if left[j] <= 1e-12:
            met += 1
        else:
            heapq.heappush(ready, (left[j] if order == "sjf" else k, j))
    return met / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", choices=("code", "conv"), default="code")
    ap.add_argument("--trace-minutes", type=float, default=10.0)
    ap.add_argument("--slowdown", type=float, default=5.0, help="TTFT = max(0.25 s, slowdown x prefill)")
    ap.add_argument("--rates", default="4,6,8,10")
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--order", choices=("sjf", "edf"), default="sjf")
    a = ap.parse_args()
    from bench.sim_capacity import segment
    from sim.cluster import ClusterSpec, build
    from sim.trace import load_rows
    import tempfile
    path = segment(str(TRACES / f"AzureLLMInferenceTrace_{a.trace}.csv"), a.trace_minutes,
                   Path(tempfile.mkdtemp(prefix="prefill_bound_")))
    rows = load_rows(path)
    cluster = build(ClusterSpec(0, 0, a.gpus, hardware="h100", model="llama3-8b"))
    tokens = np.minimum(rows.input_tokens, cluster.context_tokens)
    pt = np.array([cluster.perf.prefill_time(int(n)) for n in tokens])
    ttft = np.maximum(0.25, a.slowdown * pt)
    native = len(rows.arrival_s) / float(rows.arrival_s[-1])
    for rate in (float(r) for r in a.rates.split(",")):
        arr = rows.arrival_s * native / rate
        share = met_share(arr, pt / a.gpus, arr + ttft, a.order)
        print(f"rate {rate:g} req/s: met {share:.3f}")


if __name__ == "__main__":
    main()
