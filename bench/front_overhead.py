"""What the serving fronts add to a request: TTFT and streaming rate direct vs HTTP vs gRPC.

    python -m bench.front_overhead [--model PATH] [--requests 40] [--long-tokens 256]
                                   [--json bench/results/front_overhead.json]

One local cluster (``cluster.demo.demo_config``: the embedded default model unless ``--model``),
and in this process, on a server thread with its own event loop, both fronts over the same
``ClusterHandle``: the OpenAI HTTP app (uvicorn on 127.0.0.1) and the tandem.v1 gRPC server
(127.0.0.1). The client side runs on the main thread's loop::

    direct   handle.generate(GenerateRequest)        token ids built once, outside the timing
    http     POST /v1/completions, stream=true       httpx, SSE parsed line by line
    grpc     client.AsyncTandemClient.generate       the SDK over a grpc.aio channel

Short requests: ``--requests`` rounds, each one request per path, sequential, the order rotated
every round (round robin) so load noise hits the paths alike. TTFT = request sent → first token
that carries text, on every path (direct: TokenChunk; http: SSE chunk; grpc: Chunk): an SSE chunk
carries text only, and a first token whose text the detokenizer holds back ("" mid-character)
would otherwise cost HTTP one extra decode step; the first-token times of direct and gRPC are
kept in the JSON too. The fronts' validation, tokenization, encoding and transport all count as
overhead. Streaming: ``--long-trials`` rounds of one request of ``--long-tokens`` tokens per path
(EOS ignored); rate = (tokens − 1) / (last token − first text). Output: a table, ratios and ms
deltas vs direct, and a JSON file.
Every request has a deadline (``--timeout``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

PATHS = ("direct", "http", "grpc")
PROMPT = "Write one short sentence about the sea."


@dataclass(frozen=True)
class Sample:
    """One request, seconds from send: ``ttft_s`` to the first token with text (what all three
    paths can see: SSE chunks carry text only), ``last_s`` to the last token; ``first_token_s``
    to the first token even without text (the HTTP path sees only text: same as ttft_s)."""

    ttft_s: float
    last_s: float
    tokens: int
    first_token_s: float | None = None

    @property
    def stream_tok_s(self) -> float | None:
        span = self.last_s - self.ttft_s
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else None


# ── the math (pure; tests/bench/test_front_overhead.py) ────────────────────────────────────────
def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), ``q`` in [0, 100]."""
    xs = sorted(values)
    if not xs:
        raise ValueError("no values")
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def rotation(paths: tuple[str, ...], round_index: int) -> tuple[str, ...]:
    """The order of round ``round_index``: ``paths`` rotated left by the round number."""
    k = round_index % len(paths)
    return paths[k:] + paths[:k]


def summarize(ttft_s: dict[str, list[float]], tok_s: dict[str, list[float]],
              base: str = "direct") -> dict[str, dict]:
    """Per path: TTFT p50/p99/mean (ms) and median streaming tok/s, with deltas (ms) and ratios
    against ``base``. A ratio > 1 means slower TTFT (or, for tok/s, a faster stream)."""
    rows = {}
    for path, xs in ttft_s.items():
        rates = tok_s.get(path) or []
        rows[path] = {"n": len(xs), "ttft_p50_ms": 1e3 * percentile(xs, 50),
                      "ttft_p99_ms": 1e3 * percentile(xs, 99), "ttft_mean_ms": 1e3 * statistics.fmean(xs),
                      "stream_tok_s": statistics.median(rates) if rates else None}
    ref = rows[base]
    for row in rows.values():
        for key in ("ttft_p50_ms", "ttft_p99_ms", "ttft_mean_ms"):
            row[key.replace("_ms", "_delta_ms")] = row[key] - ref[key]
            row[key.replace("_ms", "_ratio")] = row[key] / ref[key]
        have = row["stream_tok_s"] is not None and ref["stream_tok_s"]
        row["stream_ratio"] = row["stream_tok_s"] / ref["stream_tok_s"] if have else None
    return rows


def table(rows: dict[str, dict]) -> str:
    head = ("| path | n | TTFT p50 ms | Δp50 ms | ×p50 | TTFT p99 ms | Δp99 ms | ×p99 | stream tok/s | ×tok/s |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for path, r in rows.items():
        rate = "-" if r["stream_tok_s"] is None else f"{r['stream_tok_s']:.1f}"
        ratio = "-" if r["stream_ratio"] is None else f"{r['stream_ratio']:.2f}"
        lines.append(f"| {path} | {r['n']} | {r['ttft_p50_ms']:.1f} | {r['ttft_p50_delta_ms']:+.1f} | "
                     f"{r['ttft_p50_ratio']:.2f} | {r['ttft_p99_ms']:.1f} | {r['ttft_p99_delta_ms']:+.1f} | "
                     f"{r['ttft_p99_ratio']:.2f} | {rate} | {ratio} |")
    return "\n".join(lines)


class _Clock:
    """Times one stream from its creation: first token, first text, last token."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.first_token = self.first_text = self.last = None
        self.count = 0

    def tokens(self, n: int, text: str) -> None:
        now = time.perf_counter() - self.t0
        self.count += n
        self.last = now
        if self.first_token is None:
            self.first_token = now
        if text and self.first_text is None:
            self.first_text = now

    def sample(self, tokens: int | None = None) -> Sample:
        if self.first_text is None:
            raise RuntimeError("the stream ended without text")
        return Sample(self.first_text, self.last, self.count if tokens is None else tokens,
                      self.first_token)


# ── the three paths ────────────────────────────────────────────────────────────────────────────
class Paths:
    """Send one request down a path and time it; built inside the client's event loop."""

    def __init__(self, handle, tokenizer, http_url: str, grpc_target: str):
        import httpx

        from client import AsyncTandemClient

        self.handle, self.tokenizer = handle, tokenizer
        self.http = httpx.AsyncClient(base_url=http_url, trust_env=False, timeout=None)
        self.grpc = AsyncTandemClient.connect(grpc_target)

    async def close(self) -> None:
        await self.http.aclose()
        await self.grpc.close()

    def _request(self, prompt: str, max_tokens: int):
        from deploy.openai_request import prompt_ids, to_generate_request
        from deploy.openai_schema import CompletionRequest

        info = self.handle.model_info()
        body = CompletionRequest.model_validate({"prompt": prompt, "max_tokens": max_tokens,
                                                 "temperature": 0, "ignore_eos": True})
        return to_generate_request(body, prompt_ids(body, self.tokenizer, info), body.max_tokens,
                                   "bench-" + uuid.uuid4().hex, "default", self.tokenizer, info, max_tokens)

    async def run(self, path: str, prompt: str, max_tokens: int, timeout_s: float) -> Sample:
        go = {"direct": self._direct, "http": self._http, "grpc": self._grpc}[path]
        request = self._request(prompt, max_tokens) if path == "direct" else None
        return await asyncio.wait_for(go(prompt, max_tokens, request), timeout_s)

    async def _direct(self, prompt, max_tokens, request) -> Sample:
        from cluster.api import Failed, TokenChunk

        clock = _Clock()
        async for item in self.handle.generate(request):
            if isinstance(item, Failed):
                raise RuntimeError(f"direct: {item.kind.value}: {item.message}")
            if isinstance(item, TokenChunk) and item.token_ids:
                clock.tokens(len(item.token_ids), item.text)
        return clock.sample()

    async def _http(self, prompt, max_tokens, request) -> Sample:
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True}}
        clock, tokens = _Clock(), 0
        async with self.http.stream("POST", "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                raise RuntimeError(f"http {resp.status_code}: {(await resp.aread())[:200]!r}")
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                if "error" in obj:
                    raise RuntimeError(f"http stream error: {obj['error']}")
                text = "".join(c.get("text") or "" for c in obj.get("choices") or ())
                if text:
                    clock.tokens(0, text)           # SSE chunks carry text only
                if obj.get("usage"):
                    tokens = obj["usage"]["completion_tokens"]
        return clock.sample(tokens)

    async def _grpc(self, prompt, max_tokens, request) -> Sample:
        from client import Chunk

        clock = _Clock()
        async for event in self.grpc.generate(prompt, max_tokens=max_tokens, temperature=0, ignore_eos=True):
            if isinstance(event, Chunk) and event.token_ids:
                clock.tokens(len(event.token_ids), event.text)
        return clock.sample()


# ── the servers (own thread, own loop) ─────────────────────────────────────────────────────────
class Fronts:
    """uvicorn (HTTP) and grpc.aio (gRPC) over one handle, on a daemon thread's event loop."""

    def __init__(self, handle, tokenizer, http_port: int, grpc_port: int):
        self.handle, self.tokenizer, self.ports = handle, tokenizer, (http_port, grpc_port)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def _call(self, coro, timeout_s: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def start(self) -> "Fronts":
        self.thread.start()
        self._call(self._start())
        return self

    async def _start(self) -> None:
        import uvicorn

        from deploy.auth import api_key_auth
        from deploy.grpc_server import serve_grpc
        from deploy.metrics import ServingMetrics
        from deploy.openai_api import make_app

        auth = api_key_auth({})
        app = make_app(self.handle, self.tokenizer, ServingMetrics(self.handle.info.name), auth)
        self.uvicorn = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.ports[0],
                                                     log_level="warning", lifespan="off"))
        self.serving = self.loop.create_task(self.uvicorn.serve())
        self.grpc = await serve_grpc(self.handle, self.tokenizer, auth, "127.0.0.1", self.ports[1])
        for _ in range(600):
            if self.uvicorn.started:
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("uvicorn did not start within 30 s")

    def stop(self) -> None:
        async def _stop():
            self.uvicorn.should_exit = True
            await asyncio.wait({self.serving}, timeout=10)
            await self.grpc.stop(1.0)
        self._call(_stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def measure(paths: Paths, args) -> tuple[dict, dict, dict]:
    """Warm-up, then the interleaved short rounds and the long streams."""
    ttft = {p: [] for p in PATHS}
    rates = {p: [] for p in PATHS}
    first_token = {p: [] for p in PATHS}
    for p in PATHS:                                          # warm-up: connections, caches
        for _ in range(2):
            await paths.run(p, PROMPT, args.max_tokens, args.timeout)
    for i in range(args.requests):
        for p in rotation(PATHS, i):
            s = await paths.run(p, f"{PROMPT} ({i})", args.max_tokens, args.timeout)
            ttft[p].append(s.ttft_s)
            first_token[p].append(s.first_token_s)
    for i in range(args.long_trials):
        for p in rotation(PATHS, i):
            s = await paths.run(p, f"Tell a long story, part {i}.", args.long_tokens, args.timeout)
            if s.tokens != args.long_tokens:
                raise RuntimeError(f"{p}: {s.tokens} tokens, expected {args.long_tokens}")
            if s.stream_tok_s is not None:
                rates[p].append(s.stream_tok_s)
    return ttft, rates, first_token


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: the embedded default model)")
    ap.add_argument("--requests", type=int, default=40, help="short requests per path")
    ap.add_argument("--max-tokens", type=int, default=4, help="output tokens of a short request")
    ap.add_argument("--long-tokens", type=int, default=256)
    ap.add_argument("--long-trials", type=int, default=2, help="long streams per path")
    ap.add_argument("--timeout", type=float, default=120.0, help="deadline of one request, s")
    ap.add_argument("--json", default="bench/results/front_overhead.json")
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from cluster.builder import build_cluster
    from cluster.demo import demo_config

    load_before = os.getloadavg()
    t0 = time.monotonic()
    handle = build_cluster(demo_config(args.model))
    print(f"[front_overhead] cluster up in {time.monotonic() - t0:.0f} s ({handle.info.name})", file=sys.stderr)
    try:
        tokenizer = AutoTokenizer.from_pretrained(handle.info.path)
        fronts = Fronts(handle, tokenizer, free_port(), free_port()).start()
        try:
            async def run():
                paths = Paths(handle, tokenizer, f"http://127.0.0.1:{fronts.ports[0]}",
                              f"127.0.0.1:{fronts.ports[1]}")
                try:
                    return await measure(paths, args)
                finally:
                    await paths.close()
            ttft, rates, first_token = asyncio.run(run())
        finally:
            fronts.stop()
    finally:
        handle.shutdown()
    rows = summarize(ttft, rates)
    load_after = os.getloadavg()
    print(table(rows))
    print(f"load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
          f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}; {os.cpu_count()} cores")
    out = {"model": handle.info.name, "args": vars(args), "date": time.strftime("%Y-%m-%d"),
           "cpus": os.cpu_count(), "load_before": load_before, "load_after": load_after,
           "summary": rows, "ttft_s": ttft, "first_token_s": first_token, "stream_tok_s": rates}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
