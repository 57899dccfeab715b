"""Decision time of the SLO scheduler for 64, 256 and 1024 pending requests over 2 TPOT tiers.

    python -m bench.scheduler_overhead [--trials N] [--seed S]

Setup: one colocated H100 worker with the Llama-3-8B KV capacity, the performance model fitted
on ../shared/profiles, 32 admitted requests already decoding, and N new pending requests that
arrived in the last 20 ms (prompts 64-2048 tokens, outputs 32-512, TPOT 50 ms or 100 ms,
TTFT 5x the predicted prefill time). Every trial builds a fresh random snapshot (nothing cached
between trials) and times one `schedule()` call with time.perf_counter.
Prints one JSON line per size: {"pending": N, "p50_ms": x, "p99_ms": y}.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time

import numpy as np

from router.config import SchedulerConfig
from router.kv_model import LLAMA3_8B, kv_capacity_tokens
from router.perf_model import fit_and_report
from router.plan import Snapshot, WorkerRole, WorkerState
from router.profiles import load_points
from router.request import SLO, Admission, Lane, Phase, Request, RequestState, Stage
from router.scheduler import SloScheduler

TIERS = (0.050, 0.100)


def _snapshot(rng: random.Random, model, pending: int, running: int, worker: WorkerState) -> Snapshot:
    now = 100.0
    states = []
    for i in range(running):
        p, o = rng.randint(64, 2048), rng.randint(32, 512)
        req = Request(f"run{i}", f"t{i % 4}", Lane.INTERACTIVE, now - 5.0,
                      (Stage(p, o, SLO(5 * model.prefill_time(p), TIERS[i % 2])),))
        states.append(RequestState(req, phase=Phase.DECODING, prefilled=p, decoded=rng.randint(1, o - 1),
                                   context_tokens=p + 10, admission=Admission.ADMITTED,
                                   prefill_worker=worker.id, decode_worker=worker.id))
    for i in range(pending):
        p, o = rng.randint(64, 2048), rng.randint(32, 512)
        req = Request(f"new{i}", f"t{i % 4}", rng.choice([Lane.INTERACTIVE, Lane.HEAVY]),
                      now - rng.uniform(0.0, 0.02),
                      (Stage(p, o, SLO(5 * model.prefill_time(p), rng.choice(TIERS))),))
        states.append(RequestState(req))
    return Snapshot(now, tuple(states), (worker,))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    pts = load_points("h100")
    model, _ = fit_and_report(pts.x, pts.y)
    worker = WorkerState("w0", WorkerRole.COLOCATED, kv_capacity_tokens(LLAMA3_8B, 80 * 2**30))
    rng = random.Random(args.seed)
    for n in (64, 256, 1024):
        sched = SloScheduler(model, SchedulerConfig())
        snaps = [_snapshot(rng, model, n, 32, worker) for _ in range(args.trials)]
        sched.schedule(snaps[0])  # warm-up (imports, first numpy calls)
        times = []
        gc.disable()
        for snap in snaps:
            sched = SloScheduler(model, SchedulerConfig())
            t0 = time.perf_counter()
            sched.schedule(snap)
            times.append((time.perf_counter() - t0) * 1e3)
        gc.enable()
        print(json.dumps({"pending": n, "p50_ms": round(float(np.percentile(times, 50)), 3),
                          "p99_ms": round(float(np.percentile(times, 99)), 3)}), flush=True)


if __name__ == "__main__":
    main()
