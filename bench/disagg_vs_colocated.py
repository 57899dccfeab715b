"""Disaggregated (1 prefill + 1 decode) vs colocated (2 workers) on the same CPU budget.

    python -m bench.disagg_vs_colocated [--duration 60] [--rate 1.5] [--json OUT] [--rounds 1]

Both clusters get two workers of one CPU each, the embedded default model, the SLO scheduler,
and the same mixed workload (``cluster.demo_workload``: a time-scaled Azure conversation slice
with interactive, heavy two-stage and background lanes). Reported per layout: the interactive
lane's TTFT and TPOT p50/p99, overall SLO attainment and goodput (SLO-meeting requests per second), and
the ratios disaggregated / colocated. With ``--rounds > 1`` the layouts alternate (D, C, D, C ...)
so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from cluster.builder import build_cluster
from cluster.demo import demo_config, run_workload
from cluster.demo_report import summarize
from cluster.demo_workload import WorkloadSpec, build


def run_layout(colocated: bool, spec: WorkloadSpec, model: str | None) -> dict:
    handle = build_cluster(demo_config(model, colocated=colocated))
    try:
        outcomes, wall = asyncio.run(run_workload(handle, build(spec)))
        stats = asyncio.run(handle.stats())
    finally:
        handle.shutdown()
    s = summarize(outcomes, wall)
    inter = s["lanes"].get("interactive", {})
    return {"layout": "colocated 2" if colocated else "1P + 1D", "attainment": s["attainment"],
            "goodput_rps": s["goodput_rps"], "interactive_ttft_p50": inter.get("ttft_p50"),
            "interactive_ttft_p99": inter.get("ttft_p99"), "interactive_attainment": inter.get("attainment"),
            "interactive_tpot_p50": inter.get("tpot_p50"), "interactive_tpot_p99": inter.get("tpot_p99"),
            "completed": s["completed"], "requests": s["requests"], "kv_transfers": stats.kv_transfers,
            "wall_s": wall, "lanes": s["lanes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=1.5)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--model")
    ap.add_argument("--json")
    args = ap.parse_args()
    spec = WorkloadSpec(duration_s=args.duration, rate=args.rate)
    runs = []
    for _ in range(args.rounds):
        for colocated in (False, True):
            t0 = time.monotonic()
            runs.append(run_layout(colocated, spec, args.model))
            print(f"{runs[-1]['layout']}: {json.dumps({k: v for k, v in runs[-1].items() if k != 'lanes'})} "
                  f"({time.monotonic() - t0:.0f} s)", flush=True)
    dis = [r for r in runs if r["layout"] == "1P + 1D"]
    col = [r for r in runs if r["layout"] != "1P + 1D"]

    def mean(rs, k):
        vals = [r[k] for r in rs if r[k] is not None]
        return sum(vals) / len(vals) if vals else None

    summary = {k: {"disagg": mean(dis, k), "colocated": mean(col, k)}
               for k in ("interactive_ttft_p50", "interactive_ttft_p99", "interactive_tpot_p50", "interactive_tpot_p99",
                         "attainment", "goodput_rps")}
    for v in summary.values():
        v["ratio"] = v["disagg"] / v["colocated"] if v["disagg"] is not None and v["colocated"] else None
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": runs, "summary": summary, "workload": spec.__dict__}, f, indent=2)


if __name__ == "__main__":
    main()
