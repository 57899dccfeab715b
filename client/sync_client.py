"""``TandemClient``: the blocking SDK over a ``grpc`` channel.

    with TandemClient.connect("127.0.0.1:50051", api_key) as client:
        for event in client.generate("Hello", max_tokens=32, timeout=10):
            ...                                   # Admitted, Chunk ..., StageDone, Finished
        result = client.complete("Hello", max_tokens=32)   # Completion: text + summary

A stream is lazy: nothing is sent until it is iterated. It retries per ``RetryPolicy`` (only
before its first event), keeps one deadline (``timeout`` seconds from ``generate``) across
attempts, and raises ``TandemError`` for any other end than Finished. ``stream.cancel()`` (from
any thread) cancels the call; iteration then simply stops.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.errors import TandemError
from client.events import Completion, CompletionBuilder, Event, event_from_proto
from client.proto import tandem_pb2 as pb
from client.proto import tandem_pb2_grpc as pb_grpc
from client.request import build_request
from client.retry import RetryPolicy


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


class GenerateStream:
    """Iterator of ``Event``s of one request (see the module docstring)."""

    def __init__(self, stub: pb_grpc.TandemStub, request: pb.GenerateRequest,
                 metadata: Sequence[tuple[str, str]], timeout: float | None, retry: RetryPolicy):
        self.request_id = request.request_id
        self._stub, self._request, self._metadata, self._retry = stub, request, metadata, retry
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._cancelled = threading.Event()
        self._call = None
        self._started = False

    def _remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def cancel(self) -> None:
        """Cancel the request (the server closes it in the cluster); iteration stops."""
        self._cancelled.set()
        if self._call is not None:
            self._call.cancel()

    def __iter__(self) -> Iterator[Event]:
        if self._started:
            raise RuntimeError("a GenerateStream can be iterated once")
        self._started = True
        attempts, yielded = 0, False
        while not self._cancelled.is_set():
            remaining = self._remaining()
            if remaining is not None and remaining <= 0:
                raise TandemError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded",
                                  request_id=self.request_id)
            attempts += 1
            self._call = self._stub.Generate(self._request, timeout=remaining,
                                             metadata=self._metadata)
            if self._cancelled.is_set():
                self._call.cancel()
            try:
                for msg in self._call:
                    event = event_from_proto(msg)
                    if event is not None:
                        yielded = True
                        yield event
                return
            except grpc.RpcError as e:
                if self._cancelled.is_set():
                    return
                error = TandemError.from_rpc(e, e.trailing_metadata(), self.request_id)
                wait = None if yielded else self._retry.wait(error, attempts, self._remaining())
                if wait is None:
                    raise error from None
                self._cancelled.wait(wait)
            finally:
                self._call.cancel()        # no-op once done; frees the call on early exit

    def __enter__(self) -> "GenerateStream":
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()


class TandemClient:
    """Blocking client; ``close()`` (or ``with``) releases the channel."""

    def __init__(self, target: str, api_key: str | None = None, *,
                 retry: RetryPolicy | None = None, channel: grpc.Channel | None = None):
        self._channel = channel or grpc.insecure_channel(target)
        self._stub = pb_grpc.TandemStub(self._channel)
        self._metadata = auth_metadata(api_key)
        self._retry = retry or RetryPolicy()

    @classmethod
    def connect(cls, target: str, api_key: str | None = None, **kwargs) -> "TandemClient":
        return cls(target, api_key, **kwargs)

    def generate(self, prompt: str | Sequence[int], *, timeout: float | None = None,
                 **options) -> GenerateStream:
        """A lazy stream of events; ``options`` are ``client.request.build_request``'s
        (max_tokens, temperature, top_p, top_k, seed, stop, ignore_eos, lane, scenario,
        ttft_ms, tpot_ms, stages, session_id, request_id, model)."""
        request = build_request(prompt, **options)
        return GenerateStream(self._stub, request, self._metadata, timeout, self._retry)

    def complete(self, prompt: str | Sequence[int], *, timeout: float | None = None,
                 **options) -> Completion:
        """Run a request to the end; the full text, token ids, stages, summary and the
        served model (``Completion.model``)."""
        with self.generate(prompt, timeout=timeout, **options) as stream:
            builder = CompletionBuilder(stream.request_id)
            for event in stream:
                builder.add(event)
        return builder.build()

    def cancel(self, request_id: str, *, timeout: float | None = 10.0) -> bool:
        """Cancel a running request of this API key's tenant; ``TandemError(NOT_FOUND)`` if
        there is none."""
        try:
            reply = self._stub.Cancel(pb.CancelRequest(request_id=request_id), timeout=timeout,
                                      metadata=self._metadata)
        except grpc.RpcError as e:
            raise TandemError.from_rpc(e, e.trailing_metadata(), request_id) from None
        return reply.cancelled

    def health(self, service: str = "", *, timeout: float | None = 10.0) -> str:
        """The grpc.health.v1 status name ("SERVING", "NOT_SERVING", ...)."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            raise TandemError.from_rpc(e, e.trailing_metadata()) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "TandemClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
