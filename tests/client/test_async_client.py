"""AsyncTandemClient against a real grpc.aio server (each test runs its own event loop)."""

import asyncio
import time

import grpc
import pytest

from client import Admitted, AsyncTandemClient, Chunk, Finished, StageDone, TandemError
from cluster.api import TokenChunk
from tests.client.conftest import HOLD


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_stream_yields_typed_events_in_order(front, backend):
    async def main():
        async with AsyncTandemClient.connect(front.target, "key-a") as client:
            return [e async for e in client.generate("Hello", max_tokens=5, timeout=10)]
    events = run(main())
    assert [type(e) for e in events] == [Admitted, Chunk, Chunk, StageDone, Finished]
    assert "".join(e.text for e in events if isinstance(e, Chunk)) == "Hello"


def test_complete_returns_text_and_summary(front, backend):
    async def main():
        async with AsyncTandemClient.connect(front.target, "key-b") as client:
            return await client.complete("Hello", max_tokens=5)
    result = run(main())
    assert result.text == "Hello" and result.finished.prompt_tokens == 3
    assert backend.requests[0].tenant == "tenant-b"


def test_deadline_exceeded_raises_and_frees_the_request(front, backend):
    backend.script = lambda rid: [HOLD]

    async def main():
        async with AsyncTandemClient.connect(front.target, "key-a") as client:
            return await client.complete("Hello", timeout=0.3)
    with pytest.raises(TandemError) as err:
        run(main())
    assert err.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert backend.closed.wait(5)


def test_stream_cancel_stops_iteration_and_closes_the_backend_stream(front, backend):
    backend.script = lambda rid: [TokenChunk(rid, 0, (1,), "a"), HOLD]

    async def main():
        async with AsyncTandemClient.connect(front.target, "key-a") as client:
            stream, seen = client.generate("Hello", timeout=10), []
            async for event in stream:
                seen.append(event.text)
                stream.cancel()
            return seen
    assert run(main()) == ["a"]
    assert backend.closed.wait(5)


def test_client_cancel_by_id_ends_the_stream_with_cancelled(front, backend):
    backend.script = lambda rid: [TokenChunk(rid, 0, (1,), "a"), HOLD]

    async def main():
        async with AsyncTandemClient.connect(front.target, "key-a") as client:
            stream = client.generate("Hello", timeout=10)
            events = aiter(stream)
            assert (await anext(events)).text == "a"
            assert await client.cancel(stream.request_id) is True
            with pytest.raises(TandemError) as err:
                await anext(events)
            return stream.request_id, err.value.code
    rid, code = run(main())
    assert code is grpc.StatusCode.CANCELLED and backend.cancels == [(rid, "tenant-a")]


def test_retry_after_resource_exhausted_waits_at_least_retry_after(front, backend):
    backend.reject_first, backend.retry_after_s = 1, 0.4

    async def main():
        async with AsyncTandemClient.connect(front.target, "key-a") as client:
            return await client.complete("Hello", timeout=10)
    start = time.monotonic()
    assert run(main()).text == "Hello"
    assert time.monotonic() - start >= 0.4 and len(backend.requests) == 2
    assert backend.call_times[1] - backend.call_times[0] >= 0.4


def test_unauthenticated_invalid_and_not_found(front, backend):
    async def main():
        codes = []
        async with AsyncTandemClient.connect(front.target) as anonymous, \
                AsyncTandemClient.connect(front.target, "key-a") as client:
            for call in (anonymous.complete("Hello"), client.complete("", max_tokens=3),
                         client.complete("Hello", max_tokens=-2), client.cancel("nope")):
                with pytest.raises(TandemError) as err:
                    await call
                codes.append(err.value.code)
            return codes, await client.health()
    codes, health = run(main())
    assert codes == [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT,
                     grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND]
    assert health == "SERVING" and backend.requests == []
