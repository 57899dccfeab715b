"""Simulator fidelity against the live engine (issue 4, point 1, second half).

    python -m bench.sim_fidelity [--rate 0.5] [--duration 90] [--json OUT]

1. Start a live cluster with one colocated worker (the embedded default model, FCFS: no
   admission control, the engine's own chunked-prefill continuous batching) and calibrate its
   batch-time model on the worker (``tandem calibrate``'s procedure).
2. Replay a warm-up set, then the measured set of single-stage requests (Azure conversation lengths, scaled to the CPU budget, Poisson
   arrivals) and record each request's TTFT and TPOT as the controller measured them.
3. Simulate the same requests (same arrival times and lengths) on one modelled colocated worker
   with the same KV capacity, Sarathi-style chunked batching under the engine's token budget, and
   the batch-time model from step 1 ("startup") and the model the controller refitted on the
   steps of a warm-up run with other requests before the measured one ("online": held out,
   not fitted on the steps it predicts). Report p50 TTFT and TPOT, live vs simulated, and the
   relative error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import replace

import numpy as np

from cluster.builder import build_cluster
from cluster.config import ClusterConfig, WorkerResources
from cluster.demo import run_workload
from cluster.demo_workload import Planned, WorkloadSpec, build
from router.baselines import SarathiScheduler
from router.plan import WorkerRole, WorkerState
from router.request import SLO, Lane, Request, Stage
from sim.engine import Engine, EngineConfig


def planned_requests(spec: WorkloadSpec) -> list[Planned]:
    """The demo workload as single-stage interactive requests (no tool stages)."""
    return [Planned(p.at_s, replace(p.request, stages=(), lane=Lane.INTERACTIVE, scenario="chatbot",
                                    ttft_s=600.0, tpot_s=600.0)) for p in build(spec)]


def simulate(planned: list[Planned], perf, kv_tokens: int, token_budget: int) -> dict:
    loose = SLO(600.0, 600.0)
    reqs = tuple(Request(p.request.request_id, "t", Lane.INTERACTIVE, p.at_s,
                         (Stage(len(p.request.prompt_token_ids), p.request.params["max_tokens"], loose),))
                 for p in planned)
    workers = (WorkerState("c0", WorkerRole.COLOCATED, kv_tokens),)
    res = Engine(reqs, SarathiScheduler(token_budget=token_budget), perf, workers,
                 config=EngineConfig(plan_interval_s=0.02)).run()
    ttft = [r.ttft(0) for r in res.records if r.ttft(0) is not None]
    tpot = [r.tpot(0) for r in res.records if r.tpot(0) is not None]
    return {"ttft_p50": float(np.median(ttft)), "tpot_p50": float(np.median(tpot)), "n": len(ttft)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument("--duration", type=float, default=90.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model")
    ap.add_argument("--json")
    args = ap.parse_args()
    warm = planned_requests(WorkloadSpec(duration_s=args.duration, rate=args.rate, seed=7))
    planned = planned_requests(WorkloadSpec(duration_s=args.duration, rate=args.rate, seed=1))
    res = WorkerResources(num_cpus=args.threads, threads=args.threads)
    config = ClusterConfig(model=args.model, colocated_workers=1, colocated_resources=res, policy="fcfs",
                           num_blocks=2048, calibration_steps=96, max_num_batched_tokens=1024, ready_timeout_s=900)
    handle = build_cluster(config)
    try:
        startup = asyncio.run(handle._call("perf_model"))
        asyncio.run(run_workload(handle, [replace(p, request=replace(p.request, request_id="warm-" + p.request.request_id))
                                          for p in warm]))
        online = asyncio.run(handle._call("perf_model"))      # refitted on the warm-up run's steps only
        outcomes, wall = asyncio.run(run_workload(handle, planned))
        import ray

        kv_tokens = ray.get(handle.workers["c0"].stats.remote(), timeout=60).kv_capacity_tokens
    finally:
        handle.shutdown()
    ttft = [o.stages[0].ttft_s for o in outcomes if o.stages]
    tpot = [o.stages[0].tpot_s for o in outcomes if o.stages and o.stages[0].tpot_s is not None]
    live = {"ttft_p50": float(np.median(ttft)), "tpot_p50": float(np.median(tpot)), "n": len(ttft)}
    out = {"live": live, "requests": len(planned), "wall_s": wall, "rate": args.rate}
    for name, perf in (("startup", startup), ("online", online)):
        sim = simulate(planned, perf, kv_tokens, config.max_num_batched_tokens)
        sim["ttft_error"] = sim["ttft_p50"] / live["ttft_p50"] - 1
        sim["tpot_error"] = sim["tpot_p50"] / live["tpot_p50"] - 1
        out[f"sim_{name}"] = sim
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
