"""The gRPC front: ``tandem.v1.Tandem`` over any ``cluster.backend.Backend``, plus grpc health.

    Generate:  authenticate ─▶ the model (``model``; empty: the default; unknown: NOT_FOUND
               naming the served ones) ─▶ validate + tokenize with that model's tokenizer and
               limits ─▶ backend.generate ─▶ write each item
               Failed(kind) ends the call with status ``kind.grpc_code`` and its message
               (REJECTED also sets trailing metadata ``retry-after``: seconds, decimal).
               Admitted and Finished name the served model (a ``Routed`` item's, else the
               model asked for).
    Cancel:    backend.cancel(request_id, caller's tenant); False → NOT_FOUND.

Contracts:
- ``authenticate(metadata) -> tenant | None`` gets the call's metadata as a ``dict`` (lower-case
  keys); ``None`` ends the call with UNAUTHENTICATED before the backend sees anything.
  ``bearer_auth({key: tenant})`` builds one for ``authorization: Bearer <key>``.
- The backend iterator is always closed when the call ends, however it ends: client cancel,
  deadline, a failed write or normal completion. Closing it cancels the request in the cluster.
- A backend that raises or ends its stream without ``Finished``/``Failed`` breaks its contract;
  the call then ends with INTERNAL.
- The tokenizer's ``encode(text) -> list[int]`` runs on the event loop (prompts are short next to
  prefill; a front with huge prompts should pass an encode that offloads). ``tokenizers``
  (served name → tokenizer) overrides it per model, as in the HTTP front.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from client.proto import tandem_pb2 as pb
from client.proto import tandem_pb2_grpc as pb_grpc
from cluster.api import ErrorKind, Failed, Finished, GenerateRequest, Routed, StreamItem
from cluster.backend import Backend, ModelInfo
from deploy.grpc_request import InvalidRequest, to_generate_request, to_response
from deploy.served_models import UnknownModel, model_for

SERVICE_NAME = "tandem.v1.Tandem"
Authenticate = Callable[[Mapping[str, str]], "str | None"]


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]:
        ...


def bearer_auth(keys: Mapping[str, str]) -> Authenticate:
    """An ``authenticate`` that maps ``authorization: Bearer <key>`` to ``keys[key]`` (a tenant)."""
    def authenticate(metadata: Mapping[str, str]) -> str | None:
        scheme, _, key = metadata.get("authorization", "").partition(" ")
        return keys.get(key.strip()) if scheme.lower() == "bearer" else None
    return authenticate


def retry_after_value(seconds: float) -> str:
    """The ``retry-after`` trailing metadata value: non-negative decimal seconds."""
    return f"{max(seconds, 0.0):.3f}".rstrip("0").rstrip(".")


async def _close(stream: AsyncIterator[StreamItem]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


class TandemServicer(pb_grpc.TandemServicer):
    """``tandem.v1.Tandem`` on a ``Backend``; see the module docstring for the contracts."""

    def __init__(self, backend: Backend, tokenizer: Tokenizer, authenticate: Authenticate,
                 tokenizers: Mapping[str, Tokenizer] | None = None):
        self._backend, self._tokenizer, self._authenticate = backend, tokenizer, authenticate
        self._tokenizers = dict(tokenizers or {})

    async def _tenant(self, context: grpc.aio.ServicerContext) -> str:
        metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ())
                    if isinstance(v, str)}
        tenant = self._authenticate(metadata)
        if tenant is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or unknown API key "
                                "(metadata 'authorization: Bearer <key>')")
        return tenant

    async def _model(self, name: str, context: grpc.aio.ServicerContext) -> ModelInfo | None:
        """The model ``name`` names (empty: the default); aborts NOT_FOUND for an unknown one.
        None when the backend cannot tell yet (the cluster then checks the request itself)."""
        try:
            return model_for(self._backend, name)
        except UnknownModel as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, e.message)
        except Exception:  # noqa: BLE001 - not known yet: the cluster checks the request itself
            return None

    async def _request(self, msg: pb.GenerateRequest, tenant: str,
                       context: grpc.aio.ServicerContext) -> GenerateRequest:
        rid = msg.request_id or uuid.uuid4().hex
        model = await self._model(msg.model, context)
        tokenizer = self._tokenizers.get(model.name, self._tokenizer) if model else self._tokenizer
        try:
            return to_generate_request(msg, rid, tenant, tokenizer.encode, model)
        except InvalidRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    async def _stream(self, request: GenerateRequest,
                      context: grpc.aio.ServicerContext) -> Failed | None:
        """Write the backend's items; return the ``Failed`` that ended it (None: Finished)."""
        stream = self._backend.generate(request)
        served = request.model or ""
        try:
            while True:
                try:
                    item = await anext(stream)
                except StopAsyncIteration:
                    return Failed(request.request_id, ErrorKind.INTERNAL,
                                  "stream ended without Finished or Failed")
                except Exception as e:  # noqa: BLE001 - a backend bug becomes INTERNAL
                    return Failed(request.request_id, ErrorKind.INTERNAL,
                                  f"backend error: {type(e).__name__}: {e}")
                if isinstance(item, Failed):
                    return item
                if isinstance(item, Routed):
                    served = item.model
                msg = to_response(item, served)
                if msg is not None:
                    await context.write(msg)
                if isinstance(item, Finished):
                    return None
        finally:
            await _close(stream)

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        tenant = await self._tenant(context)
        req = await self._request(request, tenant, context)
        await context.send_initial_metadata((("x-request-id", req.request_id),))
        failed = await self._stream(req, context)
        if failed is not None:
            trailing = ()
            if failed.kind is ErrorKind.REJECTED and failed.retry_after_s is not None:
                trailing = (("retry-after", retry_after_value(failed.retry_after_s)),)
            await context.abort(getattr(grpc.StatusCode, failed.kind.grpc_code),
                                failed.message, trailing)

    async def Cancel(self, request: pb.CancelRequest,
                     context: grpc.aio.ServicerContext) -> pb.CancelResponse:
        tenant = await self._tenant(context)
        if not request.request_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request_id is required")
        if not await self._backend.cancel(request.request_id, tenant):
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no running request {request.request_id!r} of this tenant")
        return pb.CancelResponse(cancelled=True)


class ReadyHealth(HealthServicer):
    """grpc.health.v1 whose ``Check``/``Watch`` first refresh from ``backend.ready()``:
    SERVING for "" and ``tandem.v1.Tandem`` while ready, NOT_SERVING otherwise."""

    def __init__(self, backend: Backend):
        super().__init__()
        self._backend = backend

    async def refresh(self) -> None:
        try:
            ready = await self._backend.ready()
        except Exception:  # noqa: BLE001 - a backend that cannot answer is not ready
            ready = False
        status = (health_pb2.HealthCheckResponse.SERVING if ready
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in ("", SERVICE_NAME):
            await self.set(service, status)

    async def Check(self, request, context):
        await self.refresh()
        return await super().Check(request, context)

    async def Watch(self, request, context):
        await self.refresh()
        return await super().Watch(request, context)


async def serve_grpc(backend: Backend, tokenizer: Tokenizer, auth: Authenticate,
                     host: str = "127.0.0.1", port: int = 50051,
                     tokenizers: Mapping[str, Tokenizer] | None = None) -> grpc.aio.Server:
    """Start a grpc.aio server with the Tandem and health services on ``host:port``; the caller
    stops it (``await server.stop(grace)``). Raises ``RuntimeError`` if the port cannot be bound.
    ``tokenizers`` (served name → tokenizer) override ``tokenizer`` per model."""
    server = grpc.aio.server()
    pb_grpc.add_TandemServicer_to_server(TandemServicer(backend, tokenizer, auth, tokenizers),
                                         server)
    health = ReadyHealth(backend)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise RuntimeError(f"could not bind {host}:{port}")
    await server.start()
    await health.refresh()
    return server
