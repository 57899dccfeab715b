"""Sending planned requests over HTTP: OpenAI streaming ``POST /v1/completions`` (SSE).

Body: ``{"prompt": <words>, "max_tokens", "temperature": 0, "ignore_eos": true, "stream": true,
"stream_options": {"include_usage": true}}`` plus Tandem's fields ``lane``, ``scenario``,
``ttft_ms``, ``tpot_ms`` and ``stages`` (left out with ``tandem_fields=False`` for a plain
OpenAI server such as vLLM) and ``model`` when given. The stream is ``data: {json}`` lines ended
by ``data: [DONE]``; a chunk with non-empty choice text is a token arrival, the usage chunk gives
the token counts, and Tandem's last chunk carries ``"tandem": {"stages": [...ttft_slo_s,
tpot_slo_s...], "slo_met"}``. HTTP 429 or an ``{"error": {"code": "rejected"}}`` event is a
rejection; any other non-200 status, error event, transport error or timeout is a failure.
``httpx`` is imported here only (the gRPC path does not need it).
"""

from __future__ import annotations

import asyncio
import time

from bench.load_record import RequestRecord, Status, StreamTimer
from bench.openai_client import sse_objects
from bench.load_workload import PlannedRequest, prompt_words

try:
    import httpx
except ImportError:  # some venvs ship the same API under a renamed module
    import httpx2 as httpx  # type: ignore[no-redef]


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class HttpSender:
    """One ``httpx.AsyncClient`` (keep-alive pool of ``max_concurrency``) for a run."""

    def __init__(self, base_url: str, api_key: str | None, seed: int, max_concurrency: int,
                 timeout_s: float, model: str | None = None, tandem_fields: bool = True):
        self._url = base_url.rstrip("/") + "/v1/completions"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
        self._client = httpx.AsyncClient(headers=headers, limits=limits, trust_env=False,
                                         timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)))
        self._seed, self._model, self._tandem = seed, model, tandem_fields

    async def close(self) -> None:
        await self._client.aclose()

    def body(self, req: PlannedRequest) -> dict:
        body = {"prompt": prompt_words(req.prompt_tokens, self._seed, req.index),
                "max_tokens": req.max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        if self._model:
            body["model"] = self._model
        if self._tandem:
            body["lane"] = req.lane
            if req.scenario:
                body["scenario"] = req.scenario
            for key in ("ttft_ms", "tpot_ms"):
                if getattr(req, key) is not None:
                    body[key] = getattr(req, key)
            if req.stages:
                body["stages"] = [
                    {"append_text": prompt_words(max(1, s.append_tokens), self._seed, req.index, i + 1),
                     "max_tokens": s.max_tokens, "tool_delay_ms": s.tool_delay_s * 1e3,
                     **({"ttft_ms": req.ttft_ms} if req.ttft_ms else {}),
                     **({"tpot_ms": req.tpot_ms} if req.tpot_ms else {})}
                    for i, s in enumerate(req.stages)]
        return body

    async def send(self, req: PlannedRequest, sent_s: float, timeout_s: float) -> RequestRecord:
        timer = StreamTimer(time.perf_counter())
        state: dict = {"usage": None, "tandem": None}

        async def consume() -> tuple[Status, str | None, float | None]:
            async with self._client.stream("POST", self._url, json=self.body(req)) as resp:
                if resp.status_code != 200:
                    text = (await resp.aread()).decode(errors="replace")
                    status = Status.REJECTED if resp.status_code == 429 else Status.FAILED
                    return status, f"HTTP {resp.status_code}: {text[:300]}", _float(resp.headers.get("retry-after"))
                async for obj in sse_objects(resp):
                    if "error" in obj:
                        err = obj["error"] if isinstance(obj["error"], dict) else {"message": obj["error"]}
                        status = Status.REJECTED if err.get("code") == "rejected" else Status.FAILED
                        return status, f"stream error: {str(err.get('message'))[:300]}", None
                    if any(c.get("text") for c in obj.get("choices") or ()):
                        timer.tokens(time.perf_counter(), 1)
                    state["usage"] = obj.get("usage") or state["usage"]
                    state["tandem"] = obj.get("tandem") or state["tandem"]
            return Status.OK, None, None

        try:
            status, error, retry_after = await asyncio.wait_for(consume(), timeout_s)
        except asyncio.TimeoutError:
            status, error, retry_after = Status.FAILED, f"timeout after {timeout_s:g}s", None
        except Exception as e:  # noqa: BLE001 - any failure is this request's, not the run's
            status, error, retry_after = Status.FAILED, f"{type(e).__name__}: {e}"[:300], None
        e2e = time.perf_counter() - timer.sent
        usage, tandem = state["usage"] or {}, state["tandem"] or {}
        if status is Status.OK and timer.first is None:
            status, error = Status.FAILED, "no tokens received"
        out = usage.get("completion_tokens")
        return RequestRecord(
            index=req.index, lane=req.lane, scenario=req.scenario, planned_s=req.arrival_s,
            sent_s=sent_s, status=status, e2e_s=e2e, ttft_s=timer.ttft_s,
            tpot_s=timer.tpot_s(out, idle_s=req.tool_delay_s) if status is Status.OK else None,
            prompt_tokens=usage.get("prompt_tokens"),
            output_tokens=(out if out is not None else timer.counted) if status is Status.OK else 0,
            server_slo_met=tandem.get("slo_met"), admission=tandem.get("admission"),
            retry_after_s=retry_after, error=error, **_slos(req, tandem.get("stages") or []))


def _slos(req: PlannedRequest, stages: list[dict]) -> dict:
    """The client's SLO when it set one, else the server's (stage 0 TTFT, tightest TPOT)."""
    ttft = req.ttft_ms / 1e3 if req.ttft_ms else (_float(stages[0].get("ttft_slo_s")) if stages else None)
    tpots = [t for t in (_float(s.get("tpot_slo_s")) for s in stages) if t is not None]
    tpot = req.tpot_ms / 1e3 if req.tpot_ms else (min(tpots) if tpots else None)
    return {"ttft_slo_s": ttft, "tpot_slo_s": tpot}
