"""``AsyncTandemClient``: the asyncio SDK over a ``grpc.aio`` channel; same rules as
``client.sync_client`` (lazy streams, retries only before the first event, one deadline across
attempts, ``TandemError`` otherwise)::

    async with AsyncTandemClient.connect("127.0.0.1:50051", api_key) as client:
        async for event in client.generate("Hello", max_tokens=32, timeout=10):
            ...
        result = await client.complete("Hello", max_tokens=32)

Create it inside the event loop that uses it (grpc.aio channels belong to one loop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.errors import TandemError
from client.events import Completion, CompletionBuilder, Event, event_from_proto
from client.proto import tandem_pb2 as pb
from client.proto import tandem_pb2_grpc as pb_grpc
from client.request import build_request
from client.retry import RetryPolicy
from client.sync_client import auth_metadata


class AsyncGenerateStream:
    """Async iterator of ``Event``s of one request; ``cancel()`` stops it quietly."""

    def __init__(self, stub: pb_grpc.TandemStub, request: pb.GenerateRequest,
                 metadata: Sequence[tuple[str, str]], timeout: float | None, retry: RetryPolicy):
        self.request_id = request.request_id
        self._stub, self._request, self._metadata, self._retry = stub, request, metadata, retry
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._cancelled = asyncio.Event()
        self._call = None
        self._iterator: AsyncIterator[Event] | None = None

    def _remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def cancel(self) -> None:
        """Cancel the request (the server closes it in the cluster); iteration stops."""
        self._cancelled.set()
        if self._call is not None:
            self._call.cancel()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._cancelled.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _events(self) -> AsyncIterator[Event]:
        attempts, yielded = 0, False
        while not self._cancelled.is_set():
            remaining = self._remaining()
            if remaining is not None and remaining <= 0:
                raise TandemError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded",
                                  request_id=self.request_id)
            attempts += 1
            self._call = self._stub.Generate(self._request, timeout=remaining,
                                             metadata=self._metadata)
            try:
                async for msg in self._call:
                    event = event_from_proto(msg)
                    if event is not None:
                        yielded = True
                        yield event
                return
            except (grpc.RpcError, asyncio.CancelledError) as e:
                if self._cancelled.is_set():
                    return
                if isinstance(e, asyncio.CancelledError):
                    raise
                error = TandemError.from_rpc(e, e.trailing_metadata(), self.request_id)
                wait = None if yielded else self._retry.wait(error, attempts, self._remaining())
                if wait is None:
                    raise error from None
                await self._sleep(wait)
            finally:
                self._call.cancel()        # no-op once done; frees the call on early exit

    def __aiter__(self) -> AsyncIterator[Event]:
        if self._iterator is not None:
            raise RuntimeError("an AsyncGenerateStream can be iterated once")
        self._iterator = self._events()
        return self._iterator

    async def __aenter__(self) -> "AsyncGenerateStream":
        return self

    async def __aexit__(self, *exc) -> None:
        self.cancel()
        if self._iterator is not None:
            await self._iterator.aclose()


class AsyncTandemClient:
    """asyncio client; ``await close()`` (or ``async with``) releases the channel."""

    def __init__(self, target: str, api_key: str | None = None, *,
                 retry: RetryPolicy | None = None, channel: grpc.aio.Channel | None = None):
        self._channel = channel or grpc.aio.insecure_channel(target)
        self._stub = pb_grpc.TandemStub(self._channel)
        self._metadata = auth_metadata(api_key)
        self._retry = retry or RetryPolicy()

    @classmethod
    def connect(cls, target: str, api_key: str | None = None, **kwargs) -> "AsyncTandemClient":
        return cls(target, api_key, **kwargs)

    def generate(self, prompt: str | Sequence[int], *, timeout: float | None = None,
                 **options) -> AsyncGenerateStream:
        """A lazy async stream of events; ``options`` as ``client.request.build_request``."""
        request = build_request(prompt, **options)
        return AsyncGenerateStream(self._stub, request, self._metadata, timeout, self._retry)

    async def complete(self, prompt: str | Sequence[int], *, timeout: float | None = None,
                       **options) -> Completion:
        """Run a request to the end; the full text, token ids, stages, summary and the
        served model (``Completion.model``)."""
        async with self.generate(prompt, timeout=timeout, **options) as stream:
            builder = CompletionBuilder(stream.request_id)
            async for event in stream:
                builder.add(event)
        return builder.build()

    async def cancel(self, request_id: str, *, timeout: float | None = 10.0) -> bool:
        """Cancel a running request of this API key's tenant; ``TandemError(NOT_FOUND)`` if
        there is none."""
        try:
            reply = await self._stub.Cancel(pb.CancelRequest(request_id=request_id),
                                            timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise TandemError.from_rpc(e, e.trailing_metadata(), request_id) from None
        return reply.cancelled

    async def health(self, service: str = "", *, timeout: float | None = 10.0) -> str:
        """The grpc.health.v1 status name ("SERVING", "NOT_SERVING", ...)."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service),
                                     timeout=timeout)
        except grpc.RpcError as e:
            raise TandemError.from_rpc(e, e.trailing_metadata()) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncTandemClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
