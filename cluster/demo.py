"""``tandem demo``: a local cluster on the default model, a slice of a real trace, a report.

    build_cluster(1 prefill + 1 decode on CPU, or GPUs where present)
    replay cluster.demo_workload (Azure conversation trace, time-scaled, mixed lanes) open loop
    print the per-lane table; write the JSON report and the plot

``run_workload`` is shared with ``bench/disagg_vs_colocated.py``. Every wait has a deadline:
requests that have not ended ``drain_s`` after the last arrival are cancelled and count as failed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from cluster.api import ErrorKind, Failed
from cluster.config import ClusterConfig, WorkerResources
from cluster.demo_report import Outcome, plot, summarize, table
from cluster.demo_workload import Planned, WorkloadSpec, build


async def run_workload(handle, planned: list[Planned], drain_s: float = 120.0) -> tuple[list[Outcome], float]:
    """Send ``planned`` at their offsets (open loop); returns outcomes and the wall time."""
    start = time.monotonic()
    outcomes = [Outcome(p.request.request_id, p.request.lane.value) for p in planned]

    async def one(p: Planned, o: Outcome) -> None:
        await asyncio.sleep(max(0.0, start + p.at_s - time.monotonic()))
        async for item in handle.generate(p.request):
            o.add(item)

    tasks = [asyncio.ensure_future(one(p, o)) for p, o in zip(planned, outcomes)]
    last = max((p.at_s for p in planned), default=0.0)
    done, pending = await asyncio.wait(tasks, timeout=last + drain_s)
    for t in pending:
        t.cancel()                              # closing a stream cancels the request
    await asyncio.gather(*pending, return_exceptions=True)
    for o in outcomes:
        if not o.finished and o.error is None:
            o.add(Failed(o.request_id, ErrorKind.TIMEOUT, f"not done {drain_s} s after the last arrival"))
    return outcomes, time.monotonic() - start


def demo_config(model: str | None = None, colocated: bool = False, policy: str = "slo",
                threads: int = 1) -> ClusterConfig:
    """The demo cluster: one prefill and one decode worker (or two colocated), one CPU each."""
    import torch

    gpu = torch.cuda.is_available()
    res = WorkerResources(num_cpus=1, num_gpus=0.5 if gpu else 0, threads=threads)
    return ClusterConfig(model=model, prefill_resources=res, decode_resources=res, colocated_resources=res,
                         colocated_workers=2 if colocated else 0, policy=policy, num_blocks=None if gpu else 2048,
                         slo_scale=1.0 if gpu else 4.0, min_ttft_s=0.1 if gpu else 1.0, calibration_steps=40,
                         max_num_batched_tokens=1024, prefill_batch_tokens=1024)


def main(args) -> int:
    from cluster.builder import build_cluster

    spec = WorkloadSpec(duration_s=args.duration, rate=args.rate, seed=args.seed, trace=args.trace)
    planned = build(spec)
    config = demo_config(args.model, args.colocated, args.policy)
    print(f"[tandem] starting a local cluster ({'2 colocated' if args.colocated else '1 prefill + 1 decode'} "
          f"workers) ...", file=sys.stderr)
    t0 = time.monotonic()
    handle = build_cluster(config)
    try:
        print(f"[tandem] cluster up in {time.monotonic() - t0:.0f} s; replaying {len(planned)} requests of "
              f"{spec.duration_s:.0f} s of the Azure conversation trace ...", file=sys.stderr)
        outcomes, wall = asyncio.run(run_workload(handle, planned))
        stats = asyncio.run(handle.stats())
    finally:
        handle.shutdown()
    summary = summarize(outcomes, wall)
    summary.update({"kv_transfer_bytes": stats.kv_transfer_bytes, "kv_transfers": stats.kv_transfers,
                    "model": handle.info.name, "workload": spec.__dict__, "cluster": config.model_dump(mode="json")})
    print(table(summary))
    print(f"\n{summary['completed']}/{summary['requests']} completed, attainment {summary['attainment']:.0%}, "
          f"goodput {summary['goodput_rps']:.2f} req/s, {summary['kv_transfers']} KV handoffs "
          f"({summary['kv_transfer_bytes'] / 2**20:.1f} MiB), wall {wall:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
        print(f"[tandem] report: {args.json}", file=sys.stderr)
    if args.plot:
        plot(outcomes, summary, args.plot)
        print(f"[tandem] plot: {args.plot}", file=sys.stderr)
    return 0 if summary["completed"] > 0 else 1
