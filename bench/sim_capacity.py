"""Issue 4, acceptance 2: capacity of the SLO policy vs every baseline, six scenarios, Azure 2023
traces, H100, Llama-3-8B, the same total GPUs. Prints a markdown table (req/s at >= 90% SLO
attainment, per GPU) and the geometric mean of SLO / best baseline.

    .venv/bin/python bench/sim_capacity.py [--gpus 2] [--trace-minutes 10] [--jobs 2] [--json out.json]
    .venv/bin/python bench/sim_capacity.py --slo-only --scheduler-config '{"batch_time_fractions": []}'   # ablation

Requests: the first `--trace-minutes` minutes of the trace (a fixed set of requests, bursts
included), time-rescaled so its mean rate is the probed rate: every probe replays the same
requests. `--trace-minutes 0` keeps the earlier method (the first `--duration` seconds of the
rescaled trace, so a higher rate also brings in later requests).

Baselines get their best configuration: sarathi, priority and edf run with every chunk size
(token budget) in `--chunks` and the best is reported. `ceiling` is `sim.capacity.ceiling`, an
upper bound on any policy's capacity on the same GPUs (a fluid bound, no simulation); `kv ceiling`
the same bound with KV memory, for policies that never evict a started request.

Layouts: fcfs, sarathi, priority, edf on G colocated GPUs; distserve on every P:D split of G;
slo on G colocated GPUs and on every P:D split (it plans both). For the policies with several
layouts the best one is reported, with its layout. Scenario → trace: coding and summarization use the Azure code
trace, the others the Azure conv trace.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
TRACE_OF = {"chatbot": "conv", "coding": "code", "summarization": "code", "reasoning": "conv",
            "tool_calling": "conv", "mixed": "conv"}
BASELINES = ("fcfs", "sarathi", "priority", "edf", "distserve")
CHUNKED = ("sarathi", "priority", "edf")


def segment(trace: str, minutes: float, out_dir: Path) -> str:
    """The trace's rows that arrive in its first `minutes` minutes, as a file of the same format."""
    from sim.trace import load_rows
    rows = load_rows(trace)
    keep = int((rows.arrival_s < minutes * 60.0).sum())
    lines = Path(trace).read_text().splitlines()
    out = out_dir / f"{Path(trace).stem}_{minutes:g}min.csv"
    out.write_text("\n".join(lines[:keep + 1]) + "\n")
    return str(out)


def _spec(scenario: str, policy: str, layout: tuple, duration: float | None, trace: str,
          config: dict | None = None):
    from router.config import SchedulerConfig
    from sim.capacity import CAPACITY_ENGINE
    from sim.cluster import ClusterSpec
    from sim.run import RunSpec, Workload
    return RunSpec(Workload(trace, duration_s=duration), scenario, policy,
                   ClusterSpec(*layout, hardware="h100", model="llama3-8b"), engine=CAPACITY_ENGINE,
                   scheduler=SchedulerConfig(**config) if config and policy == "slo" else None)


def job(args: tuple) -> dict:
    scenario, policy, layout, duration, start, trace, chunk, config = args
    from router.baselines import BASELINES as CLASSES
    from sim.capacity import capacity, ceiling
    spec = _spec(scenario, policy, layout, duration, trace, config)
    t0 = time.perf_counter()
    if policy == "ceiling":
        rate = ceiling(spec, start_rate=start)
        kv_rate = ceiling(spec, start_rate=start, kv_resident=True)
        return {"scenario": scenario, "policy": policy, "layout": layout, "capacity_rps": rate,
                "kv_resident_rps": kv_rate, "per_gpu": rate / sum(layout),
                "wall_s": time.perf_counter() - t0, "probes": [], "chunk": None}
    make = None
    if chunk is not None:
        cls = CLASSES[policy]
        make = lambda cluster: cls(token_budget=chunk, max_prompt_tokens=cluster.context_tokens)  # noqa: E731
    cap = capacity(spec, start_rate=start, make=make)
    return {"scenario": scenario, "policy": policy, "layout": layout, "capacity_rps": cap.rate,
            "per_gpu": cap.per_gpu, "wall_s": time.perf_counter() - t0, "chunk": chunk,
            "probes": [(p.rate, p.attainment, p.requests, p.stopped_early) for p in cap.probes]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--duration", type=float, default=45.0, help="with --trace-minutes 0 only")
    ap.add_argument("--trace-minutes", type=float, default=10.0)
    ap.add_argument("--chunks", default="512,2048,8192", help="token budgets tried for sarathi, priority, edf")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--start-rate", type=float, default=8.0)
    ap.add_argument("--scenarios", default=",".join(TRACE_OF))
    ap.add_argument("--json", default=None)
    ap.add_argument("--slo-colocated-only", action="store_true",
                    help="measure the slo policy on colocated GPUs only (the earlier table)")
    ap.add_argument("--plot", default=None, help="directory for attainment-vs-rate PNGs (matplotlib)")
    ap.add_argument("--slo-only", action="store_true",
                    help="the slo policy alone on colocated GPUs (ablations; prints its capacities)")
    ap.add_argument("--scheduler-config", default=None,
                    help="JSON object of SchedulerConfig fields for the slo policy, e.g. '{\"batch_time_fractions\": []}'")
    a = ap.parse_args()
    config = json.loads(a.scheduler_config) if a.scheduler_config else None
    g = a.gpus
    import tempfile
    tmp = Path(tempfile.mkdtemp(prefix="sim_capacity_"))
    traces = {}
    for name in set(TRACE_OF.values()):
        path = str(TRACES / f"AzureLLMInferenceTrace_{name}.csv")
        traces[name] = segment(path, a.trace_minutes, tmp) if a.trace_minutes > 0 else path
    duration = None if a.trace_minutes > 0 else a.duration
    chunks = [int(c) for c in a.chunks.split(",")]
    jobs = []
    if a.slo_only:
        jobs = [(sc, "slo", (0, 0, g), duration, a.start_rate, traces[TRACE_OF[sc]], None, config)
                for sc in a.scenarios.split(",")]
        with ProcessPoolExecutor(a.jobs) as ex:
            results = list(ex.map(job, jobs))
        print(f"slo on {g} colocated GPUs, config {config or 'default'}: capacity (req/s)")
        print(" ".join(f"{r['scenario']} {r['capacity_rps']:.2f}" for r in results))
        if a.json:
            Path(a.json).write_text(json.dumps({"results": results, "config": config}, indent=1))
        return
    for sc in a.scenarios.split(","):
        tr = traces[TRACE_OF[sc]]
        jobs.append((sc, "ceiling", (0, 0, g), duration, a.start_rate, tr, None, None))
        for pol in ("slo", "fcfs"):
            jobs.append((sc, pol, (0, 0, g), duration, a.start_rate, tr, None, config))
        for pol in CHUNKED:
            for c in chunks:
                jobs.append((sc, pol, (0, 0, g), duration, a.start_rate, tr, c, None))
        for p in range(1, g):
            jobs.append((sc, "distserve", (p, g - p, 0), duration, a.start_rate, tr, None, None))
            if not a.slo_colocated_only:
                jobs.append((sc, "slo", (p, g - p, 0), duration, a.start_rate, tr, None, config))
    t0 = time.perf_counter()
    with ProcessPoolExecutor(a.jobs) as ex:
        results = list(ex.map(job, jobs))
    best: dict[tuple[str, str], dict] = {}
    for r in results:
        k = (r["scenario"], r["policy"])
        if k not in best or r["capacity_rps"] > best[k]["capacity_rps"]:
            best[k] = r
    header = ["scenario", "slo"] + list(BASELINES) + ["best baseline", "slo / best", "ceiling", "ceiling / best",
                                                      "kv ceiling", "kv ceiling / best"]
    rows, ratios, ceilings, kv_ceilings, never_below = [], [], [], [], True
    for sc in a.scenarios.split(","):
        slo = best[(sc, "slo")]["capacity_rps"]
        base = {p: best[(sc, p)]["capacity_rps"] for p in BASELINES}
        top = max(base, key=base.get)
        ratio = slo / base[top] if base[top] > 0 else math.inf
        ratios.append(ratio)
        never_below &= all(slo >= v for v in base.values())
        ds = best[(sc, "distserve")]["layout"]
        sl = best[(sc, "slo")]["layout"]
        cells = [f"{slo:.2f}" + (f" ({sl[0]}P+{sl[1]}D)" if sl[0] else f" ({sl[2]}C)")]
        cells += [f"{base[p]:.2f}" + (f" ({ds[0]}P+{ds[1]}D)" if p == "distserve" else "")
                  + (f" (c{best[(sc, p)]['chunk']})" if best[(sc, p)].get("chunk") else "") for p in BASELINES]
        ceil = best[(sc, "ceiling")]["capacity_rps"]
        kv_ceil = best[(sc, "ceiling")]["kv_resident_rps"]
        ceilings.append(ceil / base[top] if base[top] > 0 else math.inf)
        kv_ceilings.append(kv_ceil / base[top] if base[top] > 0 else math.inf)
        rows.append([sc] + cells + [top, f"{ratio:.2f}x", f"{ceil:.1f}", f"{ceilings[-1]:.2f}x",
                                    f"{kv_ceil:.1f}", f"{kv_ceilings[-1]:.2f}x"])
    from sim.report import markdown_table
    window = (f"first {a.trace_minutes:g} min of the trace" if a.trace_minutes > 0
              else f"first {a.duration:.0f} s of the rescaled trace")
    print(f"H100, Llama-3-8B, {g} GPUs, capacity in req/s at >= 90% SLO attainment "
          f"({window}, rescaled); wall {time.perf_counter() - t0:.0f} s")
    print()
    print(markdown_table(header, rows))
    finite = [r for r in ratios if math.isfinite(r) and r > 0]
    gm = math.exp(sum(map(math.log, finite)) / len(finite)) if finite else float("nan")
    print()
    print(f"geometric mean slo / best baseline: {gm:.2f}x (target 2.2x); never below any baseline: {never_below}")
    for name, values in (("ceiling", ceilings), ("kv ceiling", kv_ceilings)):
        cf = [r for r in values if math.isfinite(r) and r > 0]
        if cf:
            print(f"geometric mean {name} / best baseline: {math.exp(sum(map(math.log, cf)) / len(cf)):.2f}x")
    print("(ceiling: no policy can exceed it; kv ceiling: no policy that keeps a started request's KV "
          "until it finishes can exceed it)")
    if a.plot:
        from sim.report import attainment_plot
        for sc in a.scenarios.split(","):
            curves = {}
            for (s2, pol), r in best.items():
                if s2 == sc:
                    curves[pol] = [(p[0], p[1]) for p in r["probes"] if not p[3]]
            attainment_plot(curves, Path(a.plot) / f"attainment_{sc}.png", f"{sc}, H100, {g} GPUs")
    if a.json:
        Path(a.json).write_text(json.dumps({"results": results, "geomean": gm}, indent=1))


if __name__ == "__main__":
    main()
