"""The OpenAI-compatible HTTP front: a FastAPI app over any ``cluster.backend.Backend``.

    app = make_app(backend, tokenizer, metrics, auth)       # auth: deploy.auth.api_key_auth(keys)

Routes::

    POST /v1/completions, /v1/chat/completions   OpenAI bodies + Tandem's fields (deploy.openai_schema);
                                                 stream=true → SSE chunks, then ``data: [DONE]``
    GET  /v1/models                              the served model (every one behind a MultiBackend)
    POST /v1/requests/{id}/cancel                Tandem: cancel the caller's own running request
    GET  /health                                 liveness (the process answers)
    GET  /ready[?deep=1]                         backend.ready(); deep runs one token end to end
    GET  /metrics                                Prometheus text (stats refreshed per scrape)

A generation: authenticate (401) ─▶ read the body (413 over ``max_body_bytes``, 400 bad JSON) ─▶
validate (400) ─▶ tokenize + bound by the context window (400) ─▶ ``backend.generate``. The
status comes from the first stream item: a ``Failed`` first item becomes an error response with
``kind.http_status`` (REJECTED: 429 + ``Retry-After``); otherwise 200 and, when streaming, a
``Failed`` later on becomes an ``data: {"error": ...}`` event before ``[DONE]``.

Errors always have OpenAI's shape ``{"error": {"message", "type", "code", "param"}}``. The
request id is the response ``id`` (also the ``X-Request-Id`` header); a client may choose it by
sending ``X-Request-Id`` (behind Ray Serve's proxy, which sets that header on every request, the
id is Serve's request id unless the client sent one). The id is what
``/v1/requests/{id}/cancel`` takes. Several models (``deploy.multi_backend``): the body's ``model``
picks the served name (404 if unknown), its tokenizer (``tokenizers``) and the request's bounds
(``deploy.served_models.model_for``); chat completions need a model tagged "chat" (the router
moves them to the first one, 400 if none is). Every response body and SSE chunk names in
``model`` the model that served the request (the stream's ``Routed`` item: a lane rule, a
capability or the overload ladder may have moved it), else the one asked for. A client that
disconnects cancels its request (see
``deploy.front_stream``): streaming or not, the backend iterator is closed and the KV freed.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.api import ErrorKind, Failed, Finished, Routed
from cluster.backend import Backend
from deploy.front_stream import FrontStream, Labels
from deploy.grpc_request import InvalidRequest
from deploy.grpc_server import Authenticate
from deploy.metrics import ServingMetrics
from deploy.model_router import CHAT
from deploy.openai_request import chat_prompt_ids, prompt_ids, to_generate_request
from deploy.openai_response import DONE, Envelope, Outcome, Shape, error_body, sse
from deploy.openai_schema import ChatCompletionRequest, CompletionRequest, validation_message
from deploy.served_models import UnknownModel, model_for, served_models

DEFAULT_MAX_BODY_BYTES = 1 << 20
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class ApiError(Exception):
    """An error response: ``status``, OpenAI error body from ``kind`` and ``message``."""

    def __init__(self, status: int, kind: ErrorKind, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}

    @classmethod
    def from_failed(cls, failed: Failed) -> "ApiError":
        headers = {}
        if failed.kind is ErrorKind.REJECTED:
            headers["Retry-After"] = str(max(1, math.ceil(failed.retry_after_s or 1)))
        return cls(failed.kind.http_status, failed.kind, failed.message, headers)

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.kind, self.message), self.status, headers=self.headers)


class _ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that always closes its body generator (and so the backend stream),
    whether the body finished, the client went away mid-send, or the task was cancelled."""

    def __init__(self, content, stream: FrontStream, **kwargs):
        super().__init__(content, **kwargs)
        self._stream = stream

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            await self._stream.close()


class OpenAIFront:
    """The handlers; ``make_app`` routes to them. Holds only what it was given."""

    def __init__(self, backend: Backend, tokenizer: Any, metrics: ServingMetrics, auth: Authenticate,
                 max_body_bytes: int, default_max_tokens: int, disconnect_poll_s: float,
                 tokenizers: dict[str, Any] | None = None):
        self.backend, self.tokenizer, self.metrics, self.auth = backend, tokenizer, metrics, auth
        self.tokenizers = tokenizers or {}
        self.max_body_bytes, self.default_max_tokens = max_body_bytes, default_max_tokens
        self.poll_s = disconnect_poll_s

    # ── request edge ────────────────────────────────────────────────────────────────────────
    def tenant(self, request: Request) -> str:
        tenant = self.auth({"authorization": request.headers.get("authorization", "")})
        if tenant is None:
            raise ApiError(401, ErrorKind.UNAUTHENTICATED,
                           "missing or unknown API key (header 'Authorization: Bearer <key>')")
        return tenant

    async def json_body(self, request: Request) -> dict:
        limit = self.max_body_bytes
        too_big = ApiError(413, ErrorKind.INVALID, f"the request body is larger than {limit} bytes")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        try:
            data = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, ErrorKind.INVALID, f"the body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ApiError(400, ErrorKind.INVALID, "the body must be a JSON object")
        return data

    def _request_id(self, request: Request, shape: Shape) -> str:
        chosen = request.headers.get("x-request-id")
        if chosen is None:
            return shape.id_prefix + uuid.uuid4().hex
        if not _REQUEST_ID.fullmatch(chosen):
            raise ApiError(400, ErrorKind.INVALID,
                           "X-Request-Id must be 1-128 characters of letters, digits and ._:-")
        return chosen

    # ── generation ──────────────────────────────────────────────────────────────────────────
    async def generate(self, request: Request, kind: str) -> Response:
        tenant = self.tenant(request)
        data = await self.json_body(request)
        schema = ChatCompletionRequest if kind == "chat" else CompletionRequest
        try:
            body = schema.model_validate(data)
        except ValidationError as exc:
            raise ApiError(400, ErrorKind.INVALID, validation_message(exc)) from None
        info = self._model(body.model)
        tokenizer = self.tokenizers.get(info.name, self.tokenizer)
        shape = Shape(kind)
        rid = self._request_id(request, shape)
        try:
            if kind == "chat":
                prompt, limit = chat_prompt_ids(body, tokenizer), body.output_limit
            else:
                prompt, limit = prompt_ids(body, tokenizer, info), body.max_tokens
            req = to_generate_request(body, prompt, limit, rid, tenant, tokenizer, info,
                                      self.default_max_tokens,
                                      needs=frozenset({CHAT}) if kind == "chat" else frozenset())
        except InvalidRequest as exc:
            raise ApiError(400, ErrorKind.INVALID, str(exc)) from None
        stream = FrontStream(self.backend.generate(req), self.metrics,
                             Labels(rid, info.name, req.lane, tenant), request.is_disconnected,
                             self.poll_s)
        created, outcome = int(time.time()), Outcome(rid)
        handed_off = False
        try:
            first = await stream.next()
            while isinstance(first, Routed):    # which model serves it: before any other item
                outcome.add(first)
                first = await stream.next()
            if first is None:                   # the client left before the first item
                return Response(status_code=499)
            if isinstance(first, Failed):
                raise ApiError.from_failed(first)
            envelope = Envelope(rid, created, outcome.served_model or info.name, shape)
            outcome.add(first)
            headers = {"X-Request-Id": rid}
            if not body.stream:
                return await self._whole(stream, outcome, envelope, headers)
            events = self._events(stream, outcome, envelope, body.include_usage, first)
            handed_off = True
            return _ClosingStreamingResponse(events, stream, media_type="text/event-stream",
                                             headers={**headers, "Cache-Control": "no-cache"})
        finally:
            if not handed_off:
                await stream.close()

    def _model(self, name: str | None):
        """The ``ModelInfo`` a request for ``name`` is checked against; 404 if not served."""
        try:
            return model_for(self.backend, name)
        except UnknownModel as exc:
            raise ApiError(404, ErrorKind.NOT_FOUND, exc.message) from None

    async def _whole(self, stream: FrontStream, outcome: Outcome, envelope: Envelope,
                     headers: dict) -> Response:
        while outcome.finished is None:
            item = await stream.next()
            if item is None:
                return Response(status_code=499)
            if isinstance(item, Failed):
                raise ApiError.from_failed(item)
            outcome.add(item)
        return JSONResponse(envelope.response(outcome), headers=headers)

    async def _events(self, stream: FrontStream, outcome: Outcome, envelope: Envelope,
                      include_usage: bool, first):
        """SSE chunks after ``first`` (already in ``outcome``); closes ``stream`` however it ends."""
        shape = envelope.shape
        try:
            opening = shape.first_delta()
            if opening is not None:
                yield sse(envelope.chunk(opening, include_usage))
            if outcome.text:                     # the first item already carried text
                yield sse(envelope.chunk(shape.delta(outcome.text), include_usage))
            item = first
            while not isinstance(item, Finished):
                item = await stream.next()
                if item is None:                 # the client is gone
                    return
                if isinstance(item, Failed):
                    yield sse(error_body(item.kind, item.message))
                    yield DONE
                    return
                text = outcome.add(item)
                if text:
                    yield sse(envelope.chunk(shape.delta(text), include_usage))
            yield sse(envelope.chunk(shape.delta("", outcome.finish_reason), include_usage,
                                     tandem=outcome.tandem()))
            if include_usage:
                yield sse(envelope.chunk(None, False, usage=outcome.usage()))
            yield DONE
        finally:
            await stream.close()

    # ── the rest ────────────────────────────────────────────────────────────────────────────
    async def cancel(self, request: Request, request_id: str) -> Response:
        tenant = self.tenant(request)
        if not await self.backend.cancel(request_id, tenant):
            raise ApiError(404, ErrorKind.NOT_FOUND, f"no running request {request_id!r} of this tenant")
        return JSONResponse({"id": request_id, "object": "tandem.cancel", "cancelled": True})

    def models(self, request: Request) -> Response:
        self.tenant(request)
        infos = served_models(self.backend)
        return JSONResponse({"object": "list", "data": [
            {"id": info.name, "object": "model", "created": 0, "owned_by": "tandem",
             "max_model_len": info.max_model_len} for info in infos]})

    async def ready(self, deep: bool) -> Response:
        try:
            ok = await self.backend.ready(deep=deep)
        except Exception:  # noqa: BLE001 - a backend that cannot answer is not ready
            ok = False
        return JSONResponse({"ready": ok, "deep": deep}, 200 if ok else 503)

    async def metrics_text(self) -> Response:
        try:
            self.metrics.update_from_stats(await self.backend.stats())
        except Exception:  # noqa: BLE001 - still serve the per-request series
            pass
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)


def make_app(backend: Backend, tokenizer: Any, metrics: ServingMetrics, auth: Authenticate, *,
             max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, default_max_tokens: int = 256,
             disconnect_poll_s: float = 0.25, tokenizers: dict[str, Any] | None = None) -> FastAPI:
    """The FastAPI app of the front (see the module docstring). ``tokenizer`` is a Hugging Face
    tokenizer (``encode``, ``chat_template``, ``apply_chat_template``); ``tokenizers`` (served
    name → tokenizer) overrides it per model."""
    front = OpenAIFront(backend, tokenizer, metrics, auth, max_body_bytes, default_max_tokens,
                        disconnect_poll_s, tokenizers)
    app = FastAPI(title="Tandem", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.front = front

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = ErrorKind.NOT_FOUND if exc.status_code == 404 else ErrorKind.INVALID
        return ApiError(exc.status_code, kind, str(exc.detail)).response()

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await front.generate(request, "completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await front.generate(request, "chat")

    @app.post("/v1/requests/{request_id}/cancel")
    async def cancel(request: Request, request_id: str):
        return await front.cancel(request, request_id)

    @app.get("/v1/models")
    async def models(request: Request):
        return front.models(request)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(deep: bool = False):
        return await front.ready(deep)

    @app.get("/metrics")
    async def metrics_text():
        return await front.metrics_text()

    return app
