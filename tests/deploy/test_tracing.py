"""Per-request OpenTelemetry spans from stream items (in-memory exporter)."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from cluster.api import (Admitted, ErrorKind, Failed, Finished, GenerateRequest, StageDone,  # noqa: E402
                         TokenChunk)
from deploy.tracing import TracedBackend, configure_tracing  # noqa: E402
from router.request import Lane  # noqa: E402


class Scripted:
    def __init__(self, items):
        self.items = items

    async def generate(self, request):
        for item in self.items:
            await asyncio.sleep(0.01)
            yield item

    def model_info(self):
        return "info"


def run(items, req):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    backend = TracedBackend(Scripted(items), provider.get_tracer("test"))

    async def main():
        return [i async for i in backend.generate(req)]

    out = asyncio.run(main())
    assert out == items and backend.model_info() == "info"        # items and other calls pass through
    return {s.name: s for s in exporter.get_finished_spans()}


def test_a_two_stage_request_gets_queue_prefill_handoff_decode_and_stage_spans():
    req = GenerateRequest("r1", (1, 2), {"max_tokens": 2}, lane=Lane.HEAVY, tenant="t")
    done0 = StageDone("r1", 0, 2, 2, 0.1, 0.01, 1.0, 0.1, True, "length")
    done1 = StageDone("r1", 1, 3, 1, 0.1, None, 1.0, 0.1, True, "length")
    items = [Admitted("r1", "admitted", "p0", "d0", None, 0.05), TokenChunk("r1", 0, (5,), "a"),
             TokenChunk("r1", 0, (6,), "b"), done0, TokenChunk("r1", 1, (7,), "c"), done1,
             Finished("r1", "admitted", 2, 3, "length", True, 0.3, 0, handoff_s=0.004)]
    spans = run(items, req)
    assert set(spans) == {"tandem.request", "queue", "prefill", "handoff", "decode", "stage 1"}
    root = spans["tandem.request"]
    assert root.attributes["tandem.lane"] == "heavy" and root.attributes["tandem.slo_met"] is True
    for name in ("queue", "prefill", "handoff", "decode", "stage 1"):
        s = spans[name]
        assert s.parent.span_id == root.context.span_id
        assert root.start_time <= s.start_time <= s.end_time <= root.end_time
    assert spans["queue"].end_time - spans["queue"].start_time >= 0.05e9 * 0.99
    assert abs((spans["handoff"].end_time - spans["handoff"].start_time) - 4e6) < 1e5


def test_a_failed_request_marks_its_root_span():
    req = GenerateRequest("r2", (1,), {})
    spans = run([Failed("r2", ErrorKind.REJECTED, "rejected: interactive_only", 5.0)], req)
    root = spans["tandem.request"]
    assert root.attributes["tandem.error"] == "rejected" and not root.status.is_ok


def test_configure_tracing(monkeypatch):
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    assert configure_tracing() is None
    assert configure_tracing("console") is not None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert configure_tracing() is not None
    with pytest.raises(ValueError, match="unknown trace exporter"):
        configure_tracing("zipkin2")
