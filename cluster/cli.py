"""The ``tandem`` command line.

    tandem generate [--model PATH] [--max-tokens N] [--temperature T] [--seed S] PROMPT
    tandem calibrate [--model PATH] [--steps N] [--json OUT]
    tandem sim --trace FILE --scenario NAME --policy P --prefill N --decode M ... --json OUT
    tandem model fetch | path
    tandem serve [--config FILE] [--http-port N] [--grpc-port N]   (see cluster.serve_cmd)

``generate`` streams the generated text to stdout as it is produced; everything else (load
times, throughput, errors) goes to stderr. Without ``--model`` it uses the embedded default
model, fetching and converting it on first use. Bad input exits with status 2 and one line
saying what is wrong.
"""

from __future__ import annotations

import argparse
import sys
import time


def _eprint(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tandem", description="Tandem: SLO-aware disaggregated LLM serving.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="stream a completion from a local model")
    gen.add_argument("prompt", help="the prompt text")
    gen.add_argument("--model", help="local Hugging Face model folder (default: the embedded SmolLM2-135M-Instruct)")
    gen.add_argument("--max-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--chat", choices=["auto", "on", "off"], default="auto",
                     help="wrap the prompt in the model's chat template (auto: when it has one)")
    gen.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    gen.add_argument("--kernels", choices=["auto", "torch", "triton"], default="auto")
    gen.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                     help="auto: bfloat16 on CUDA and AMX CPUs, float32 elsewhere")

    cal = sub.add_parser("calibrate", help="time real batches on the engine and fit the scheduler's performance model")
    cal.add_argument("--model", help="local Hugging Face model folder (default: the embedded model)")
    cal.add_argument("--steps", type=int, default=160)
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    cal.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    cal.add_argument("--json", help="write the fitted model and its report to this file")

    from sim import cli as sim_cli

    sim_cli.add_parser(sub)

    from cluster import serve_cmd

    serve_cmd.add_parser(sub)

    demo = sub.add_parser("demo", help="a local cluster on the default model replaying a slice of a real trace")
    demo.add_argument("--duration", type=float, default=60.0, help="seconds of trace to replay (arrivals)")
    demo.add_argument("--rate", type=float, default=1.0, help="requests per second after time scaling")
    demo.add_argument("--json", help="write the report here")
    demo.add_argument("--plot", help="write the TTFT CDF / attainment plot (PNG) here")
    demo.add_argument("--model", help="local Hugging Face model folder (default: the embedded model)")
    demo.add_argument("--trace", help="an Azure-format trace file (default: the shipped conversation excerpt)")
    demo.add_argument("--policy", choices=["slo", "fcfs"], default="slo")
    demo.add_argument("--colocated", action="store_true", help="two colocated workers instead of 1P + 1D")
    demo.add_argument("--seed", type=int, default=0)

    model = sub.add_parser("model", help="manage the embedded default model")
    model.add_argument("action", choices=["fetch", "path"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "calibrate":
            return _calibrate(args)
        if args.command == "sim":
            from sim import cli as sim_cli

            return sim_cli.run(args)
        if args.command == "demo":
            from cluster import demo

            if args.duration <= 0 or args.rate <= 0:
                raise ValueError("--duration and --rate must be positive")
            return demo.main(args)
        if args.command == "serve":
            from cluster import serve_cmd

            return serve_cmd.run(args)
        return _model(args)
    except (ValueError, FileNotFoundError) as exc:  # bad input: one clear line, status 2
        _eprint(f"tandem: error: {_one_line(exc)}")
        return 2
    except KeyboardInterrupt:
        return 130


def _one_line(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return str(exc)


def _model(args) -> int:
    from engine.default_model import default_model_path, ensure_default_model

    if args.action == "fetch":
        ensure_default_model(log=_eprint)
    else:
        print(default_model_path())
    return 0


def _default_model_if_missing(args) -> None:
    if args.model is None:
        from engine.default_model import ensure_default_model

        args.model = str(ensure_default_model(log=_eprint))


def _calibrate(args) -> int:
    import json

    from engine.calibrate import calibrate
    from engine.config import EngineConfig
    from engine.engine import LLMEngine

    _default_model_if_missing(args)
    engine = LLMEngine(EngineConfig(model=args.model, device=args.device, dtype=args.dtype))
    result = calibrate(engine, steps=args.steps, seed=args.seed)
    line = {"model": args.model, "device": str(engine.device), "dtype": str(engine.dtype).removeprefix("torch."),
            "steps": result.steps, **result.report.as_dict()}
    print(json.dumps(line))
    if args.json:
        with open(args.json, "w") as f:
            pieces = [{"intercept": p.intercept, "coef": list(p.coef)} for p in result.model.pieces]
            json.dump({**line, "perf_model": {"pieces": pieces, "margin": result.model.margin}}, f, indent=2)
    return 0


def _generate(args) -> int:
    from engine.config import EngineConfig
    from engine.sampling import SamplingParams

    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, stop=tuple(args.stop))
    _default_model_if_missing(args)
    config = EngineConfig(model=args.model, device=args.device, kernels=args.kernels, dtype=args.dtype)
    from engine.engine import LLMEngine

    t0 = time.perf_counter()
    engine = LLMEngine(config)
    _eprint(f"[tandem] loaded {engine.spec.architecture} from {args.model} on {engine.device} "
            f"({engine.dtype}, {engine.ops.name} kernels, {engine.kv_cache.num_blocks} KV blocks) "
            f"in {time.perf_counter() - t0:.1f} s")
    prompt = args.prompt
    template = getattr(engine.tokenizer, "chat_template", None)
    if args.chat == "on" and not template:
        raise ValueError("--chat on: this model's tokenizer has no chat template")
    if args.chat == "on" or (args.chat == "auto" and template):
        prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                                      add_generation_prompt=True, return_dict=False)
    t1, n, first = time.perf_counter(), 0, None
    for out in engine.stream(prompt, params):
        if first is None:
            first = time.perf_counter() - t1
        n += 1
        sys.stdout.write(out.new_text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    dt = time.perf_counter() - t1
    _eprint(f"[tandem] {n} tokens in {dt:.2f} s (first token {first or 0:.3f} s, {n / max(dt, 1e-9):.1f} tokens/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
