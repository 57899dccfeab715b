"""Issue 4, acceptance 3: simulator speed.

    .venv/bin/python bench/sim_speed.py conv1h            # 1 h of Azure conv (19,366 req), 8P+8D
    .venv/bin/python bench/sim_speed.py scale [--requests N] [--workers 512]
        # the Azure conv lengths with Poisson arrivals at 32x the trace's rate per 16 GPUs
        # (the same per-GPU load as conv1h) on workers/2 P + workers/2 D; N requests
        # (default 1,000,000); prints wall time and the per-request rate, and the
        # extrapolation to 1M when N is a fraction.

Both print the 1-minute load average at the end ("load_1m"): on a shared 2-core machine other
processes slow the run down, so compare timings taken at similar loads (BENCHMARKS.md).

Policy: slo (the SLO scheduler, the slowest policy to simulate); chatbot scenario; H100.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
CONV = TRACES / "AzureLLMInferenceTrace_conv.csv"


def _report(name: str, res, wall: float, extra: dict) -> None:
    s = res.summary
    print(json.dumps({"bench": name, "requests": s.requests, "wall_s": round(wall, 2),
                      "engine_wall_s": round(res.sim_wall_s, 2), "attainment": round(s.attainment, 4),
                      "plans": res.engine.plans, "batches": res.engine.batches, "steps": res.engine.steps,
                      "simulated_s": round(s.span_s, 1), **extra, "load_1m": round(os.getloadavg()[0], 2)}))


def conv1h(policy: str) -> None:
    from sim.cluster import ClusterSpec
    from sim.run import RunSpec, Workload, simulate
    t0 = time.perf_counter()
    res = simulate(RunSpec(Workload(str(CONV)), "chatbot", policy, ClusterSpec(prefill=8, decode=8)))
    _report("conv1h_8p8d", res, time.perf_counter() - t0, {"policy": policy, "target_s": 20})


def scale(n: int, workers: int, policy: str) -> None:
    from sim.cluster import ClusterSpec
    from sim.run import RunSpec, Workload, prepare, simulate
    from sim.trace import load_rows
    native = load_rows(CONV).native_rate
    rate = native * workers / 16
    duration = n / rate
    spec = RunSpec(Workload(str(CONV), rate=rate, duration_s=duration, generate=True), "chatbot", policy,
                   ClusterSpec(prefill=workers // 2, decode=workers - workers // 2))
    t0 = time.perf_counter()
    prepared = prepare(spec)
    res = simulate(spec, prepared)
    wall = time.perf_counter() - t0
    per_m = wall / res.summary.requests * 1_000_000
    _report(f"scale_{workers}w", res, wall, {"policy": policy, "rate_rps": round(rate, 1),
                                             "extrapolated_1m_s": round(per_m, 1), "target_s": 600})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("which", choices=("conv1h", "scale"))
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=512)
    ap.add_argument("--policy", default="slo")
    a = ap.parse_args()
    if a.which == "conv1h":
        conv1h(a.policy)
    else:
        scale(a.requests, a.workers, a.policy)


if __name__ == "__main__":
    main()
