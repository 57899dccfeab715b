"""``python -m bench.load``: replay a trace or a synthetic mix against a Tandem (or any
OpenAI-compatible) server and report per-lane TTFT / TPOT percentiles, SLO attainment and goodput.

    python -m bench.load --target grpc://127.0.0.1:50051 --synthetic --rate 2 --duration 30 \\
        --input-len 128 --output-len 64 --scenario chatbot --json out.json --plot plots/
    python -m bench.load --target http://127.0.0.1:8000 --trace AzureLLMInferenceTrace_conv.csv \\
        --format azure --time-scale 4 --duration 60 --lanes interactive=0.8,heavy=0.2

    args ──LoadArgs (pydantic)──▶ build_plan ──▶ run_plan (open loop, GrpcSender | HttpSender)
         ──▶ report (JSON: --json) ──▶ write_plots (PNGs: --plot) ──▶ a table on stdout

Runs the same way as a Ray job (``bench/LOAD.md``). Exit status: 0 when at least one request
completed, 1 when none did (the server is unreachable or refused everything), 2 for bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bench.load_plots import write_plots
from bench.load_report import report, table
from bench.load_runner import Progress, RunResult, run_plan
from bench.load_workload import LANES, WorkloadSpec, build_plan, parse_lanes
from sim.errors import SimInputError
from sim.trace import FORMATS
from sim.workload import SCENARIOS


class LoadArgs(BaseModel):
    """The CLI's options, validated (cross-field rules in ``_consistent``)."""

    model_config = ConfigDict(extra="forbid")

    target: str
    api_key: str | None = None
    trace: str | None = None
    format: str | None = None
    synthetic: bool = False
    rate: float | None = Field(None, gt=0)
    time_scale: float = Field(1.0, gt=0)
    cv: float = Field(1.0, gt=0)
    input_len: int = Field(128, ge=1)
    output_len: int = Field(64, ge=1)
    len_spread: float = Field(0.0, ge=0, lt=1)
    duration: float = Field(60.0, gt=0)
    max_requests: int | None = Field(None, ge=1)
    max_concurrency: int = Field(64, ge=1)
    scenario: str = "chatbot"
    lanes: str = "interactive"
    length_scale: float = Field(1.0, gt=0)
    context: int | None = Field(None, ge=2)
    max_output_tokens: int | None = Field(None, ge=1)
    ttft_ms: float | None = Field(None, gt=0)
    tpot_ms: float | None = Field(None, gt=0)
    timeout: float = Field(120.0, gt=0)
    vocab_size: int = Field(32000, ge=8)
    model: str | None = None
    plain_openai: bool = False
    seed: int = 0
    json_out: str | None = None
    plot: str | None = None
    progress: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> "LoadArgs":
        if bool(self.trace) == self.synthetic:
            raise ValueError("give exactly one of --trace FILE and --synthetic")
        if self.synthetic and self.rate is None:
            raise ValueError("--synthetic needs --rate (requests per second)")
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}")
        if self.scenario not in SCENARIOS:
            raise ValueError(f"--scenario must be one of {', '.join(SCENARIOS)}")
        if urlparse(self.target).scheme not in ("http", "https", "grpc"):
            raise ValueError("--target must be http://HOST:PORT, https://HOST:PORT or grpc://HOST:PORT")
        return self

    @property
    def protocol(self) -> str:
        return "grpc" if urlparse(self.target).scheme == "grpc" else "http"

    def workload(self) -> WorkloadSpec:
        return WorkloadSpec(
            trace=self.trace, fmt=self.format, synthetic=self.synthetic, rate=self.rate,
            time_scale=self.time_scale, cv=self.cv, input_len=self.input_len,
            output_len=self.output_len, len_spread=self.len_spread, duration_s=self.duration,
            max_requests=self.max_requests, scenario=self.scenario, lanes=parse_lanes(self.lanes),
            length_scale=self.length_scale, context=self.context,
            max_output_tokens=self.max_output_tokens, ttft_ms=self.ttft_ms, tpot_ms=self.tpot_ms,
            seed=self.seed)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, help="http://HOST:PORT (OpenAI SSE) or grpc://HOST:PORT")
    ap.add_argument("--api-key", default=os.environ.get("TANDEM_API_KEY"),
                    help="bearer key (default $TANDEM_API_KEY; none: an open server)")
    src = ap.add_argument_group("workload")
    src.add_argument("--trace", help="trace CSV to replay (formats of the simulator)")
    src.add_argument("--format", choices=FORMATS, help="trace format (default: from the header)")
    src.add_argument("--time-scale", type=float, default=1.0, help="replay speed-up: arrivals at t / X (default 1)")
    src.add_argument("--synthetic", action="store_true", help="generated arrivals and lengths")
    src.add_argument("--rate", type=float, help="req/s: synthetic / lengths files; rescales a trace")
    src.add_argument("--cv", type=float, default=1.0, help="generated arrivals: 1 Poisson, >1 bursty")
    src.add_argument("--input-len", type=int, default=128, help="synthetic prompt tokens (default 128)")
    src.add_argument("--output-len", type=int, default=64, help="synthetic output tokens (default 64)")
    src.add_argument("--len-spread", type=float, default=0.0, help="synthetic lengths ~ U[L(1-s), L(1+s)] (default 0)")
    src.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals (default 60)")
    src.add_argument("--max-requests", type=int, help="send at most N requests")
    src.add_argument("--scenario", default="chatbot", choices=SCENARIOS, help="SLO preset (default chatbot)")
    src.add_argument("--lanes", default="interactive",
                     help=f"lane mix, e.g. interactive=0.7,heavy=0.3 (lanes: {', '.join(LANES)}; default interactive)")
    src.add_argument("--length-scale", type=float, default=1.0, help="multiply trace lengths")
    src.add_argument("--context", type=int, help="clip requests to this many tokens")
    src.add_argument("--max-output-tokens", type=int, help="cap every stage's output")
    src.add_argument("--seed", type=int, default=0, help="arrivals, lengths, lanes, prompts (default 0)")
    slo = ap.add_argument_group("SLO (default: the server's scenario preset, as it reports it)")
    slo.add_argument("--ttft-ms", type=float, help="TTFT SLO of every stage (sent and checked)")
    slo.add_argument("--tpot-ms", type=float, help="TPOT SLO of every stage (sent and checked)")
    run = ap.add_argument_group("run")
    run.add_argument("--max-concurrency", type=int, default=64, help="requests in flight at most (default 64)")
    run.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, seconds (default 120)")
    run.add_argument("--vocab-size", type=int, default=32000, help="gRPC: random prompt ids < this (default 32000)")
    run.add_argument("--model", help="HTTP: the model field (must match the served name)")
    run.add_argument("--plain-openai", action="store_true",
                     help="HTTP: send no Tandem fields (lane, scenario, SLOs, stages)")
    run.add_argument("--no-progress", dest="progress", action="store_false")
    out = ap.add_argument_group("output")
    out.add_argument("--json", dest="json_out", help="write the report JSON here")
    out.add_argument("--plot", help="write ttft_cdf.png, tpot_cdf.png, attainment.png into this folder")
    return ap


def _sender(args: LoadArgs):
    if args.protocol == "grpc":
        from bench.load_grpc import GrpcSender
        return GrpcSender(urlparse(args.target).netloc, args.api_key, args.vocab_size, args.seed)
    from bench.load_http import HttpSender
    return HttpSender(args.target, args.api_key, args.seed, args.max_concurrency, args.timeout,
                      args.model, tandem_fields=not args.plain_openai)


async def run(args: LoadArgs, plan) -> RunResult:
    sender = _sender(args)
    try:
        result = await run_plan(plan, sender, max_concurrency=args.max_concurrency,
                                timeout_s=args.timeout, progress=Progress(len(plan), args.progress))
    finally:
        await sender.close()
    return result


def main(argv: list[str] | None = None) -> int:
    try:
        args = LoadArgs.model_validate(vars(parser().parse_args(argv)))
        plan = build_plan(args.workload())
    except (ValidationError, SimInputError) as e:
        print(f"bench.load: {e}", file=sys.stderr)
        return 2
    print(f"[load] {len(plan)} requests over {plan[-1].arrival_s:.1f} s to {args.target} "
          f"({args.protocol}, scenario {args.scenario})", file=sys.stderr, flush=True)
    result = asyncio.run(run(args, plan))
    config = args.model_dump(exclude={"api_key"})
    config.update(protocol=args.protocol, planned_requests=len(plan))
    doc = report(result.records, result.wall_s, config)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(doc, indent=1))
    if args.plot:
        for path in write_plots(doc, result.records, args.plot):
            print(f"[load] wrote {path}", file=sys.stderr)
    print(table(doc))
    if doc["overall"]["completed"] == 0:
        print(f"bench.load: no request completed; first error: {doc['overall']['first_error']}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
