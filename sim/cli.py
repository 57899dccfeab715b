"""`tandem sim`: the command line of issue 4 (stable; scripts depend on it).

    tandem sim --trace FILE [--format azure|vidur|burstgpt|lengths] [--rate R] [--duration S]
               --scenario NAME --policy slo|fcfs|sarathi|priority|edf|distserve --prefill N
               --decode M [--colocated K] --hardware h100|a100 --model llama3-8b|llama2-7b
               [--capacity] [--seed S] --json OUT.json [--plot DIR]

Extra (optional) flags: --arrival-cv (gamma arrivals for lengths-only files; 1 = Poisson),
--ttft-slowdown / --tpot-ms (override the scenario's SLOs), --gpu-hour-usd (default: h100 2.50,
a100 1.50), --plan-interval-ms (how often the scheduler may re-plan; default 20),
--scheduler-config FILE (JSON or YAML of router.config.SchedulerConfig for the slo policy, e.g.
`{"later_stage_reserve": 0.5}`; default: its defaults).

Wiring: `sim.cli.add_parser(subparsers)` adds the `sim` subcommand; `sim.cli.run(args)` runs it
and returns the exit status (0 ok, 2 bad input, with a one-line `error: ...` on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from sim.capacity import CAPACITY_ENGINE, capacity
from sim.cluster import ClusterSpec
from sim.engine import EngineConfig
from sim.errors import SimInputError
from sim.run import POLICIES, RunSpec, Workload, prepare, simulate
from sim.trace import FORMATS
from sim.workload import SCENARIOS, SloOverride


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `sim` to an argparse subparsers object; returns the new parser."""
    p = subparsers.add_parser("sim", help="simulate a cluster on a trace (capacity planning)",
                              description=__doc__.split("\n\n")[0])
    configure(p)
    return p


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", required=True, help="trace CSV (see ../shared/traces/README.md)")
    p.add_argument("--format", choices=FORMATS, default=None, help="default: detected from the header")
    p.add_argument("--rate", type=float, default=None,
                   help="requests/s: rescales a replayed trace's time; required for lengths-only files")
    p.add_argument("--duration", type=float, default=None, help="seconds of arrivals to simulate")
    p.add_argument("--scenario", required=True, choices=SCENARIOS)
    p.add_argument("--policy", required=True, choices=POLICIES)
    p.add_argument("--prefill", type=int, default=0)
    p.add_argument("--decode", type=int, default=0)
    p.add_argument("--colocated", type=int, default=0)
    p.add_argument("--hardware", choices=("h100", "a100"), default="h100")
    p.add_argument("--model", choices=("llama3-8b", "llama2-7b"), default="llama3-8b")
    p.add_argument("--capacity", action="store_true", help="search the highest rate with >= 90%% attainment")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True, help="write the results here")
    p.add_argument("--plot", default=None, help="write PNG plots to this directory (needs matplotlib)")
    p.add_argument("--arrival-cv", type=float, default=1.0)
    p.add_argument("--ttft-slowdown", type=float, default=None)
    p.add_argument("--tpot-ms", type=float, default=None)
    p.add_argument("--gpu-hour-usd", type=float, default=None)
    p.add_argument("--plan-interval-ms", type=float, default=20.0)
    p.add_argument("--scheduler-config", default=None, help="JSON or YAML file of SchedulerConfig (slo policy)")


def _scheduler_config(path: str | None):
    if path is None:
        return None
    import yaml

    from router.config import SchedulerConfig
    try:
        text = Path(path).read_text()
        data = yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text)
        return SchedulerConfig.model_validate(data or {})
    except OSError as e:
        raise SimInputError(f"--scheduler-config: cannot read {path}: {e.strerror}") from None
    except (ValueError, yaml.YAMLError) as e:          # bad JSON / YAML, or pydantic's ValidationError
        raise SimInputError(f"--scheduler-config {path}: {e}") from None


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    if args.tpot_ms is not None and args.tpot_ms <= 0:
        raise SimInputError(f"impossible SLO: --tpot-ms must be positive, got {args.tpot_ms}")
    if args.ttft_slowdown is not None and args.ttft_slowdown <= 0:
        raise SimInputError(f"impossible SLO: --ttft-slowdown must be positive, got {args.ttft_slowdown}")
    if args.plan_interval_ms < 0:
        raise SimInputError("--plan-interval-ms must be >= 0")
    slo = SloOverride(args.ttft_slowdown, None if args.tpot_ms is None else args.tpot_ms / 1e3)
    sched = _scheduler_config(getattr(args, "scheduler_config", None))
    if sched is not None and args.policy != "slo":
        raise SimInputError(f"--scheduler-config applies to --policy slo only, not {args.policy}")
    return RunSpec(Workload(args.trace, args.format, args.rate, args.duration, args.arrival_cv, args.seed),
                   args.scenario, args.policy,
                   ClusterSpec(args.prefill, args.decode, args.colocated, args.hardware, args.model),
                   slo, args.gpu_hour_usd, EngineConfig(plan_interval_s=args.plan_interval_ms / 1e3),
                   scheduler=sched)


def run(args: argparse.Namespace) -> int:
    """Run `tandem sim` from parsed args. Returns 0, or 2 on bad input (message on stderr)."""
    try:
        spec = spec_from_args(args)
        prepared = prepare(spec)
        result = simulate(spec, prepared)
        out = result.as_json()
        if args.capacity:
            rows = prepared[2]
            start = args.rate or (rows.native_rate if spec.workload.rate is None else spec.workload.rate) or 1.0
            cap = capacity(replace(spec, engine=replace(CAPACITY_ENGINE,
                                                        plan_interval_s=spec.engine.plan_interval_s)),
                           start_rate=start)
            out.update(capacity_rps=cap.rate, capacity_rps_per_gpu=cap.per_gpu,
                       capacity_probes=[p.__dict__ for p in cap.probes])
        if args.plot:
            from sim.report import attainment_plot, plots
            plots(result, Path(args.plot))
            if args.capacity:
                attainment_plot({spec.policy: [(p["rate"], p["attainment"]) for p in out["capacity_probes"]]},
                                Path(args.plot) / "attainment_vs_rate.png", f"{spec.scenario}, {spec.policy}")
    except SimInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2, sort_keys=True))
    keys = ("attainment", "requests", "goodput_rps", "ttft_p99", "tpot_p99", "sim_wall_s")
    print(" ".join(f"{k}={out[k]:.4g}" if isinstance(out[k], float) else f"{k}={out[k]}" for k in keys)
          + (f" capacity_rps={out['capacity_rps']:.4g}" if "capacity_rps" in out else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m sim.cli ...` (the same flags as `tandem sim`)."""
    p = argparse.ArgumentParser(prog="tandem sim")
    configure(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
