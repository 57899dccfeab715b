"""Sending planned requests over gRPC (``tandem.v1`` through ``client.AsyncTandemClient``).

Prompts are random token ids (``prompt_token_ids``), so the server tokenizes nothing and the
prompt length is exact; ``vocab_size`` bounds the ids. Every request: greedy, ``ignore_eos``
(the planned output length is produced), one attempt (no SDK retries: a rejection is a
measurement, not something to hide), a deadline of ``timeout_s``. Never raises for a failed
request: the record says what happened.
"""

from __future__ import annotations

import time

import grpc

from bench.load_record import RequestRecord, Status, StreamTimer
from bench.load_workload import PlannedRequest, prompt_ids
from client import Admitted, AsyncTandemClient, Chunk, Finished, RetryPolicy, Stage, StageDone, TandemError


class GrpcSender:
    """Create inside the event loop that sends (grpc.aio channels belong to one loop)."""

    def __init__(self, target: str, api_key: str | None, vocab_size: int, seed: int):
        self._client = AsyncTandemClient.connect(target, api_key, retry=RetryPolicy(max_attempts=1))
        self._vocab, self._seed = vocab_size, seed

    async def close(self) -> None:
        await self._client.close()

    def _stages(self, req: PlannedRequest) -> list[Stage]:
        return [Stage(max_tokens=s.max_tokens,
                      append_token_ids=tuple(prompt_ids(s.append_tokens, self._vocab, self._seed,
                                                        req.index, part=i + 1)),
                      tool_delay_ms=s.tool_delay_s * 1e3, ttft_ms=req.ttft_ms, tpot_ms=req.tpot_ms)
                for i, s in enumerate(req.stages)]

    async def send(self, req: PlannedRequest, sent_s: float, timeout_s: float) -> RequestRecord:
        prompt = prompt_ids(req.prompt_tokens, self._vocab, self._seed, req.index)
        stream = self._client.generate(
            prompt, timeout=timeout_s, max_tokens=req.max_tokens, temperature=0.0, ignore_eos=True,
            lane=req.lane, scenario=req.scenario, ttft_ms=req.ttft_ms, tpot_ms=req.tpot_ms,
            stages=self._stages(req))
        timer = StreamTimer(time.perf_counter())
        done: list[StageDone] = []
        admission = finished = None
        base = dict(index=req.index, lane=req.lane, scenario=req.scenario, planned_s=req.arrival_s,
                    sent_s=sent_s)
        try:
            async with stream:
                async for event in stream:
                    if isinstance(event, Chunk):
                        timer.tokens(time.perf_counter(), len(event.token_ids), event.stage)
                    elif isinstance(event, Admitted):
                        admission = event.admission
                    elif isinstance(event, StageDone):
                        done.append(event)
                    elif isinstance(event, Finished):
                        finished = event
        except TandemError as e:
            rejected = e.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            return RequestRecord(**base, status=Status.REJECTED if rejected else Status.FAILED,
                                 e2e_s=time.perf_counter() - timer.sent, ttft_s=timer.ttft_s,
                                 admission=admission, retry_after_s=e.retry_after,
                                 error=f"{e.code.name}: {e.message}"[:300],
                                 **_slos(req, done))
        e2e = time.perf_counter() - timer.sent
        if finished is None:
            return RequestRecord(**base, status=Status.FAILED, e2e_s=e2e, ttft_s=timer.ttft_s,
                                 error="stream ended without Finished", **_slos(req, done))
        return RequestRecord(**base, status=Status.OK, e2e_s=e2e, ttft_s=timer.ttft_s,
                             tpot_s=timer.tpot_s(), prompt_tokens=finished.prompt_tokens,
                             output_tokens=finished.completion_tokens, server_slo_met=finished.slo_met,
                             admission=finished.admission, **_slos(req, done))


def _slos(req: PlannedRequest, done: list[StageDone]) -> dict:
    """The client's SLO when it set one, else the server's (stage 0 TTFT, tightest TPOT)."""
    ttft = req.ttft_ms / 1e3 if req.ttft_ms else (done[0].ttft_slo_ms / 1e3 if done else None)
    tpot = req.tpot_ms / 1e3 if req.tpot_ms else (
        min(d.tpot_slo_ms for d in done) / 1e3 if done else None)
    return {"ttft_slo_s": ttft, "tpot_slo_s": tpot}
