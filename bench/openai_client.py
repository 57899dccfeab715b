"""Asyncio load client for OpenAI-compatible ``POST /v1/completions`` with token-id prompts.

Works against any server that streams SSE completions (vLLM, Tandem). Each request sends
``{"model", "prompt": [ids], "max_tokens", "temperature": 0, "ignore_eos": true, "stream": true,
"stream_options": {"include_usage": true}}``. Every wait is bounded: each request (including
connect and the whole stream) has ``timeout_s``; the sync wrapper bounds the batch as a whole.
"""
from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import dataclass

try:
    import httpx
except ImportError:  # the project venv ships httpx2 (the same API, a renamed module)
    import httpx2 as httpx  # type: ignore[no-redef]


@dataclass(frozen=True)
class RequestResult:
    """One request's outcome. Times are seconds from just before the request was sent.

    ``ttft_s``: first chunk carrying non-empty text (None if none came). ``output_tokens``: the
    final usage chunk's ``completion_tokens``, else the number of chunks with a choice.
    ``error``: None on success, else a short description (HTTP status/body, exception, timeout).
    """

    index: int
    prompt_tokens: int
    max_tokens: int
    ttft_s: float | None
    e2e_s: float
    output_tokens: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


async def sse_objects(resp):
    """The JSON objects of an OpenAI-style SSE response (``data: {...}`` lines), up to ``[DONE]``."""
    async for line in resp.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def random_requests(n: int, prompt_len: int, max_tokens: int, *, lo: int = 100,
                    hi: int = 40000, seed: int = 0) -> list[tuple[list[int], int]]:
    """``n`` (prompt ids uniform in [lo, hi), max_tokens) pairs; deterministic for ``seed``."""
    rng = random.Random(seed)
    return [([rng.randrange(lo, hi) for _ in range(prompt_len)], max_tokens) for _ in range(n)]


async def _one(client: httpx.AsyncClient, url: str, i: int, prompt: list[int], max_tokens: int,
               model: str, timeout_s: float) -> RequestResult:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft: float | None = None
    first_choice: float | None = None
    chunks, usage_tokens, error = 0, None, None

    async def consume() -> None:
        nonlocal ttft, first_choice, chunks, usage_tokens, error
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                error = f"HTTP {resp.status_code}: {text[:300]}"
                return
            async for obj in sse_objects(resp):
                if "error" in obj:
                    error = f"stream error: {str(obj['error'])[:300]}"
                    return
                choices = obj.get("choices") or []
                if choices:
                    chunks += 1
                    now = time.perf_counter() - t0
                    first_choice = now if first_choice is None else first_choice
                    if ttft is None and any(c.get("text") for c in choices):
                        ttft = now
                if obj.get("usage"):
                    usage_tokens = obj["usage"].get("completion_tokens")

    try:
        await asyncio.wait_for(consume(), timeout_s)
    except asyncio.TimeoutError:
        error = f"timeout after {timeout_s:.0f}s"
    except Exception as e:  # noqa: BLE001 -- any failure is this request's error, not the run's
        error = f"{type(e).__name__}: {e}"[:300]
    e2e = time.perf_counter() - t0
    if error is None and chunks == 0:
        error = "no completion chunks received"
    return RequestResult(i, len(prompt), max_tokens, ttft if ttft is not None else first_choice,
                         e2e, usage_tokens if usage_tokens is not None else chunks, error)


async def run_completions(base_url: str, requests: list[tuple[list[int], int]], *,
                          concurrency: int, model: str = "model",
                          timeout_s: float) -> list[RequestResult]:
    """Send every (prompt ids, max_tokens) pair, at most ``concurrency`` in flight at a time.

    Returns one ``RequestResult`` per request, in input order; never raises for a failed
    request (see ``error``). Each request is bounded by ``timeout_s`` once it starts.
    """
    url = base_url.rstrip("/") + "/v1/completions"
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:

        async def guarded(i: int, prompt: list[int], n: int) -> RequestResult:
            async with sem:
                return await _one(client, url, i, prompt, n, model, timeout_s)

        return list(await asyncio.gather(*(guarded(i, p, n) for i, (p, n) in enumerate(requests))))


def run_completions_sync(base_url: str, requests: list[tuple[list[int], int]], *,
                         concurrency: int, model: str = "model",
                         timeout_s: float) -> list[RequestResult]:
    """``run_completions`` in a fresh event loop; the whole batch is bounded by
    ``timeout_s * ceil(len(requests) / concurrency) + 30`` (raises ``TimeoutError`` past it)."""
    waves = math.ceil(len(requests) / max(concurrency, 1))

    async def bounded() -> list[RequestResult]:
        return await asyncio.wait_for(
            run_completions(base_url, requests, concurrency=concurrency, model=model,
                            timeout_s=timeout_s), timeout_s * waves + 30)

    return asyncio.run(bounded())


def _pct(xs: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]; None when empty."""
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(results: list[RequestResult], wall_s: float) -> dict:
    """Aggregate: requests, errors, output_tokens (successful requests), output_tokens_per_s
    (over ``wall_s``), ttft_p50/ttft_p99/e2e_p50 in seconds over successful requests (None if
    none), wall_s, and the first error message (None if none)."""
    ok = [r for r in results if r.ok]
    out = sum(r.output_tokens for r in ok)
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    errs = [r.error for r in results if not r.ok]
    return {"requests": len(results), "errors": len(errs), "output_tokens": out,
            "output_tokens_per_s": out / wall_s if wall_s > 0 else None,
            "ttft_p50": _pct(ttfts, 50), "ttft_p99": _pct(ttfts, 99),
            "e2e_p50": _pct([r.e2e_s for r in ok], 50), "wall_s": wall_s,
            "first_error": errs[0] if errs else None}
