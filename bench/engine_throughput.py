"""Output tokens/s of Tandem's engine vs transformers' generate (and optionally vLLM-CPU).

    python -m bench.engine_throughput [--model PATH] [--requests 64] [--context 1024] [--vllm]

One run, one machine, the same 64 prompts (ShareGPT lengths scaled to ``--context``) for every
system, greedy, EOS ignored so every system produces exactly the requested output lengths:

- tandem: the engine with continuous batching, all requests submitted at once;
- hf_sequential: ``model.generate`` one prompt at a time (batch 1);
- hf_batched: ``model.generate`` on left-padded batches of ``--hf-batch`` prompts (16 and 64 by
  default); a batch runs until its longest request is done, only the requested tokens count;
- vllm (``--vllm``): vLLM's CPU build in its own venv, ``vllm serve`` on 127.0.0.1, all requests
  sent at once by the streaming OpenAI client in ``bench/openai_client.py``.

Prints one JSON line per system and a final line with the ratios; ``--json`` saves them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from bench.workload import BenchRequest, sharegpt_workload


def run_tandem(model: Path, reqs: list[BenchRequest], threads: int, dtype: str) -> dict:
    from engine.config import EngineConfig
    from engine.engine import LLMEngine
    from engine.sampling import SamplingParams

    engine = LLMEngine(EngineConfig(model=str(model), device="cpu", num_threads=threads, dtype=dtype,
                                    kv_cache_memory_gb=2, max_num_batched_tokens=1024,
                                    enable_prefix_caching=False))
    engine.generate([list(reqs[0].prompt_ids)], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    t0 = time.perf_counter()
    for r in reqs:
        engine.add_request(list(r.prompt_ids), SamplingParams(temperature=0, max_tokens=r.max_tokens, ignore_eos=True))
    tokens, first = 0, {}
    while engine.has_unfinished():
        for out in engine.step():
            tokens += len(out.new_token_ids)
            first.setdefault(out.request_id, time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    return {"system": "tandem", "output_tokens": tokens, "wall_s": wall, "output_tokens_per_s": tokens / wall,
            "preemptions": engine.stats().num_preemptions}


def _hf_model(model: Path, dtype: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).eval()


def run_hf_sequential(model: Path, reqs: list[BenchRequest], dtype: str) -> dict:
    hf = _hf_model(model, dtype)
    _hf_generate(hf, [reqs[0].prompt_ids], 4)
    t0 = time.perf_counter()
    tokens = sum(_hf_generate(hf, [r.prompt_ids], r.max_tokens)[0] for r in reqs)
    wall = time.perf_counter() - t0
    return {"system": "hf_sequential", "output_tokens": tokens, "wall_s": wall, "output_tokens_per_s": tokens / wall}


def run_hf_batched(model: Path, reqs: list[BenchRequest], batch: int, dtype: str) -> dict:
    hf = _hf_model(model, dtype)
    _hf_generate(hf, [reqs[0].prompt_ids], 4)
    t0, tokens = time.perf_counter(), 0
    for i in range(0, len(reqs), batch):
        group = reqs[i:i + batch]
        longest = max(r.max_tokens for r in group)
        produced = _hf_generate(hf, [r.prompt_ids for r in group], longest)
        tokens += sum(min(r.max_tokens, n) for r, n in zip(group, produced))
    wall = time.perf_counter() - t0
    return {"system": "hf_batched", "batch": batch, "output_tokens": tokens, "wall_s": wall,
            "output_tokens_per_s": tokens / wall}


@torch.inference_mode()
def _hf_generate(hf, prompts, max_new: int) -> list[int]:
    """Greedy, EOS ignored, left padding; returns new tokens per row."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=max_new, min_new_tokens=max_new,
                      do_sample=False, eos_token_id=None, pad_token_id=0)
    return [out.shape[1] - width] * len(prompts)


def run_vllm(model: Path, reqs: list[BenchRequest], context: int, port: int, dtype: str) -> dict:
    from bench.openai_client import run_completions_sync, summarize
    from bench.vllm_peer import ensure_vllm_venv, serve_vllm

    ensure_vllm_venv()
    work = [(list(r.prompt_ids), r.max_tokens) for r in reqs]
    with serve_vllm(model, port, max_model_len=context, dtype=dtype) as url:
        run_completions_sync(url, work[:1], concurrency=1, timeout_s=300)  # warm-up
        t0 = time.perf_counter()
        results = run_completions_sync(url, work, concurrency=len(work), timeout_s=1800)
        wall = time.perf_counter() - t0
    summary = summarize(results, wall)
    return {"system": "vllm_cpu", "dtype": dtype, **summary, "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="HF folder (default: the embedded SmolLM2-135M)")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--context", type=int, default=1024, help="ShareGPT lengths are scaled to this context")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--hf-batch", type=int, nargs="+", default=[16, 64],
                        help="padded batch sizes for transformers' batched generate (one run each)")
    parser.add_argument("--skip-hf-sequential", action="store_true")
    parser.add_argument("--vllm", action="store_true", help="also run vLLM-CPU (installs it once, ~2.5 GB)")
    parser.add_argument("--port", type=int, default=18431)
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="for tandem and transformers (auto: the engine's choice for this CPU)")
    parser.add_argument("--vllm-dtype", choices=["float32", "bfloat16"], default="float32",
                        help="vLLM-CPU's dtype (float32 measured fastest for it here)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model is None:
        from engine.default_model import ensure_default_model

        args.model = ensure_default_model(log=lambda m: print(m, file=sys.stderr))
    from engine.model_config import load_model_spec

    from engine.engine import _pick_dtype

    spec = load_model_spec(args.model)
    dtype = str(_pick_dtype(args.dtype, torch.device("cpu"))).removeprefix("torch.")
    reqs = sharegpt_workload(args.requests, min(args.context, spec.max_model_len), spec.vocab_size, args.seed)
    print(json.dumps({"workload": "sharegpt", "requests": len(reqs), "context": args.context,
                      "prompt_tokens": sum(len(r.prompt_ids) for r in reqs),
                      "output_tokens": sum(r.max_tokens for r in reqs), "threads": args.threads,
                      "dtype": dtype}), flush=True)
    results = [run_tandem(args.model, reqs, args.threads, dtype)]
    print(json.dumps(results[-1]), flush=True)
    runs = [lambda b=b: run_hf_batched(args.model, reqs, b, dtype) for b in args.hf_batch]
    if not args.skip_hf_sequential:
        runs.insert(0, lambda: run_hf_sequential(args.model, reqs, dtype))
    if args.vllm:
        runs.append(lambda: run_vllm(args.model, reqs, args.context, args.port, args.vllm_dtype))
    for run in runs:
        results.append(run())
        print(json.dumps(results[-1]), flush=True)
    base = results[0]["output_tokens_per_s"]
    ratios = {f"tandem_over_{r['system']}{r.get('batch', '')}": base / r["output_tokens_per_s"] for r in results[1:]}
    print(json.dumps({"ratios": ratios}), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
