"""Per-request trace spans with OpenTelemetry, when an exporter is configured.

    provider = configure_tracing("console" | "otlp" | None)   # None: $OTEL_TRACES_EXPORTER, else off
    backend = TracedBackend(backend, provider.get_tracer("tandem")) if provider else backend

One trace per request, built from its stream items (so HTTP and gRPC get the same spans)::

    tandem.request  [arrival ........................................ end]
      queue         [arrival .. decision]
      prefill                   [decision .. first token]
      handoff                                [first token .. + KV transfer time]
      decode                                 [first token ............ stage 0 end]
      stage N                                                       [.. stage N end]

Times come from the items (``Admitted.queue_s``, ``Finished.handoff_s``) and the front's
monotonic clock, mapped onto the wall clock OpenTelemetry expects. Attributes: request id,
lane, tenant, admission, SLO met, token counts, error kind, and the served model, version and
route reason (multi-model apps).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator

from cluster.api import (Admitted, Failed, Finished, GenerateRequest, Routed, StageDone, StreamItem,
                         TokenChunk)


def configure_tracing(exporter: str | None = None):
    """A ``TracerProvider`` exporting spans, or None when tracing is off.

    ``exporter``: ``console`` (stdout), ``otlp`` (needs ``opentelemetry-exporter-otlp``; endpoint
    from ``$OTEL_EXPORTER_OTLP_ENDPOINT``), ``none``; None reads ``$OTEL_TRACES_EXPORTER``.
    Raises ValueError for an unknown exporter or a missing OTLP package.
    """
    name = (exporter or os.environ.get("OTEL_TRACES_EXPORTER") or "none").lower()
    if name == "none":
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if name == "console":
        span_exporter = ConsoleSpanExporter()
    elif name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ValueError("the otlp trace exporter needs `pip install opentelemetry-exporter-otlp`") from None
        span_exporter = OTLPSpanExporter()
    else:
        raise ValueError(f"unknown trace exporter {name!r}; expected console, otlp or none")
    provider = TracerProvider(resource=Resource.create({"service.name": "tandem"}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    return provider


def _ns(mono: float, offset: float) -> int:
    return int((mono + offset) * 1e9)


class RequestSpans:
    """Spans of one request, fed its stream items in order (``observe``); ends with the stream."""

    def __init__(self, tracer, req: GenerateRequest, clock=time.monotonic):
        self.tracer, self.req, self.clock = tracer, req, clock
        self.offset = time.time() - clock()               # monotonic → wall clock
        self.start = clock()
        self.decided = self.first = None
        self.stages: list[tuple[int, float]] = []     # (stage, when its StageDone arrived)
        self.attrs = {"tandem.request_id": req.request_id, "tandem.lane": req.lane.value,
                      "tandem.tenant": req.tenant}

    def _span(self, name: str, start: float, end: float, parent=None, **attrs) -> None:
        from opentelemetry import trace

        ctx = trace.set_span_in_context(parent) if parent is not None else None
        span = self.tracer.start_span(name, context=ctx, start_time=_ns(start, self.offset))
        for k, v in attrs.items():
            span.set_attribute(k, v)
        span.end(end_time=_ns(max(end, start), self.offset))

    def observe(self, item: StreamItem) -> None:
        now = self.clock()
        if isinstance(item, Routed):
            self.attrs.update({"tandem.model": item.model, "tandem.model_version": item.version,
                               "tandem.route_reason": item.reason})
        elif isinstance(item, Admitted):
            self.start = min(self.start, now - item.queue_s)
            self.decided = now
            self.attrs["tandem.admission"] = item.admission
        elif isinstance(item, TokenChunk) and self.first is None:
            self.first = now
        elif isinstance(item, StageDone):
            self.attrs[f"tandem.stage{item.stage}.slo_met"] = item.slo_met
            self.stages.append((item.stage, now))
        elif isinstance(item, (Finished, Failed)):
            self._finish(item, now)

    def _finish(self, item: Finished | Failed, now: float) -> None:
        from opentelemetry import trace

        if isinstance(item, Finished):
            self.attrs.update({"tandem.slo_met": item.slo_met, "tandem.completion_tokens": item.completion_tokens,
                               "tandem.retries": item.retries})
        else:
            self.attrs["tandem.error"] = item.kind.value
        root = self.tracer.start_span("tandem.request", start_time=_ns(self.start, self.offset))
        for k, v in self.attrs.items():
            root.set_attribute(k, v)
        decided = self.decided if self.decided is not None else now
        self._span("queue", self.start, decided, root)
        if self.first is not None:
            self._span("prefill", decided, self.first, root)
            handoff = item.handoff_s if isinstance(item, Finished) else 0.0
            if handoff > 0:
                self._span("handoff", self.first, self.first + handoff, root)
            prev = self.first
            for stage, end in self.stages:
                self._span("decode" if stage == 0 else f"stage {stage}", prev, end, root)
                prev = end
        if isinstance(item, Failed):
            root.set_status(trace.Status(trace.StatusCode.ERROR, item.message))
        root.end(end_time=_ns(now, self.offset))


class TracedBackend:
    """A ``Backend`` whose ``generate`` also records each request's spans; the rest is forwarded."""

    def __init__(self, backend, tracer):
        self._backend, self._tracer = backend, tracer

    def __getattr__(self, name):
        return getattr(self._backend, name)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[StreamItem]:
        spans = RequestSpans(self._tracer, request)
        async for item in self._backend.generate(request):
            spans.observe(item)
            yield item
