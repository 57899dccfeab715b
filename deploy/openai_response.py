"""Response bodies of the OpenAI-compatible front, built from the cluster's stream items.

    Outcome.add(item)  per item: collects text, the admission, stage results, the finish
    Shape              completion vs chat: how one choice looks whole and as a stream delta
    sse(obj), DONE     server-sent event framing: ``data: {json}\\n\\n`` ... ``data: [DONE]\\n\\n``

Every response (and the last streamed chunk) carries Tandem's own object::

    "tandem": {"request_id", "admission": "admitted" | "best_effort", "queue_s", "max_tokens_cap",
               "route": {"model", "version", "reason"} | null (set by a multi-model backend),
               "prefill_worker", "decode_worker", "slo_met", "e2e_s", "retries",
               "stages": [{"stage", "ttft_s", "tpot_s", "ttft_slo_s", "tpot_slo_s", "slo_met",
                           "prompt_tokens", "completion_tokens", "finish_reason"}]}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from cluster.api import Admitted, ErrorKind, Finished, Routed, StageDone, StreamItem, TokenChunk

DONE = b"data: [DONE]\n\n"

_ERROR_TYPES = {ErrorKind.INVALID: "invalid_request_error", ErrorKind.UNAUTHENTICATED: "authentication_error",
                ErrorKind.FORBIDDEN: "permission_error",
                ErrorKind.NOT_FOUND: "not_found_error", ErrorKind.REJECTED: "rate_limit_error",
                ErrorKind.UNAVAILABLE: "service_unavailable_error", ErrorKind.TIMEOUT: "timeout_error",
                ErrorKind.CANCELLED: "cancelled_error", ErrorKind.INTERNAL: "server_error"}


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def error_body(kind: ErrorKind, message: str) -> dict:
    """OpenAI's error object: ``{"error": {"message", "type", "code"}}``."""
    return {"error": {"message": message, "type": _ERROR_TYPES[kind], "code": kind.value, "param": None}}


@dataclass
class Outcome:
    """What one request produced so far (mutable; owned by the response that streams it)."""

    request_id: str
    routed: Routed | None = None
    admitted: Admitted | None = None
    parts: list[str] = field(default_factory=list)
    stages: list[StageDone] = field(default_factory=list)
    finished: Finished | None = None

    def add(self, item: StreamItem) -> str:
        """Record ``item``; return the text it adds ("" for non-token items)."""
        if isinstance(item, TokenChunk):
            self.parts.append(item.text)
            return item.text
        if isinstance(item, Routed):
            self.routed = item
        elif isinstance(item, Admitted):
            self.admitted = item
        elif isinstance(item, StageDone):
            self.stages.append(item)
        elif isinstance(item, Finished):
            self.finished = item
        return ""

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def served_model(self) -> str | None:
        """The model that serves the request, when a multi-model backend said (else None)."""
        return self.routed.model if self.routed else None

    @property
    def finish_reason(self) -> str | None:
        return self.finished.finish_reason if self.finished else None

    def usage(self) -> dict:
        f = self.finished
        prompt, completion = (f.prompt_tokens, f.completion_tokens) if f else (0, 0)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    def tandem(self) -> dict:
        a, f = self.admitted, self.finished
        return {"request_id": self.request_id,
                "admission": (f.admission if f else a.admission if a else None),
                "queue_s": a.queue_s if a else None,
                "max_tokens_cap": a.max_tokens_cap if a else None,
                "route": ({"model": r.model, "version": r.version, "reason": r.reason}
                          if (r := self.routed) else None),
                "prefill_worker": a.prefill_worker if a else None,
                "decode_worker": a.decode_worker if a else None,
                "slo_met": f.slo_met if f else None,
                "e2e_s": f.e2e_s if f else None,
                "retries": f.retries if f else 0,
                "stages": [{k: v for k, v in asdict(s).items() if k != "request_id"} for s in self.stages]}


class Shape:
    """How the choices of one endpoint look. ``kind``: "completion" or "chat"."""

    def __init__(self, kind: str):
        self.chat = kind == "chat"
        self.object = "chat.completion" if self.chat else "text_completion"
        self.chunk_object = "chat.completion.chunk" if self.chat else "text_completion"
        self.id_prefix = "chatcmpl-" if self.chat else "cmpl-"

    def whole(self, text: str, finish_reason: str | None) -> dict:
        if self.chat:
            return {"index": 0, "message": {"role": "assistant", "content": text},
                    "logprobs": None, "finish_reason": finish_reason}
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}

    def first_delta(self) -> dict | None:
        """The chunk sent before any text (chat announces the role), or None."""
        if self.chat:
            return {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                    "finish_reason": None}
        return None

    def delta(self, text: str, finish_reason: str | None = None) -> dict:
        if self.chat:
            return {"index": 0, "delta": {"content": text} if text else {}, "logprobs": None,
                    "finish_reason": finish_reason}
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}


@dataclass(frozen=True)
class Envelope:
    """The fields every body of one response shares."""

    id: str
    created: int
    model: str
    shape: Shape

    def response(self, outcome: Outcome) -> dict:
        return {"id": self.id, "object": self.shape.object, "created": self.created, "model": self.model,
                "choices": [self.shape.whole(outcome.text, outcome.finish_reason)],
                "usage": outcome.usage(), "tandem": outcome.tandem()}

    def chunk(self, choice: dict | None, include_usage: bool, **extra: Any) -> dict:
        body = {"id": self.id, "object": self.shape.chunk_object, "created": self.created,
                "model": self.model, "choices": [choice] if choice is not None else []}
        if include_usage:
            body["usage"] = None
        body.update(extra)
        return body
