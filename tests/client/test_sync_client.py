"""TandemClient against a real grpc.aio server: streaming, deadlines, cancellation, retries."""

import threading
import time

import grpc
import pytest

from client import (Admitted, Chunk, Finished, RetryPolicy, Stage, StageDone, TandemClient,
                    TandemError)
from cluster.api import ErrorKind, Failed, TokenChunk
from router.request import Lane
from tests.client.conftest import HOLD


@pytest.fixture
def client(front):
    with TandemClient.connect(front.target, "key-a") as c:
        yield c


def test_stream_yields_typed_events_in_order(client, backend):
    events = list(client.generate("Hello", max_tokens=5, timeout=10))
    assert [type(e) for e in events] == [Admitted, Chunk, Chunk, StageDone, Finished]
    assert events[1].token_ids == (72, 101, 108) and events[1].text == "Hel"
    assert events[3].ttft_ms == pytest.approx(12.0) and events[3].tpot_ms == pytest.approx(4.0)
    assert events[4].completion_tokens == 5 and events[4].slo_met


def test_request_reaches_backend_validated_and_in_seconds(client, backend):
    stream = client.generate("Hi", max_tokens=7, temperature=0.0, stop=["\n"], lane="heavy",
                             scenario="coding", ttft_ms=500, tpot_ms=50, session_id="s1",
                             stages=[Stage(max_tokens=4, append_text="ok", tool_delay_ms=20,
                                           tpot_ms=80)])
    list(stream)
    (req,) = backend.requests
    assert req.request_id == stream.request_id and req.tenant == "tenant-a"
    assert req.prompt_token_ids == (72, 105) and req.lane is Lane.HEAVY
    assert req.params == {"max_tokens": 7, "temperature": 0.0, "stop": ["\n"]}
    assert (req.scenario, req.ttft_s, req.tpot_s, req.session_id) == ("coding", 0.5, 0.05, "s1")
    (stage,) = req.stages
    assert stage.append_token_ids == (111, 107) and stage.max_tokens == 4
    assert stage.tool_delay_s == pytest.approx(0.02) and stage.tpot_s == pytest.approx(0.08)
    assert stage.ttft_s is None


def test_complete_returns_text_and_summary(client, backend):
    result = client.complete([5, 6, 7], max_tokens=5)
    assert result.text == "Hello" and result.token_ids == (72, 101, 108, 108, 111)
    assert len(result.stages) == 1 and result.finished.finish_reason == "length"
    assert backend.requests[0].prompt_token_ids == (5, 6, 7)


def test_deadline_exceeded_raises_and_frees_the_request(client, backend):
    backend.script = lambda rid: [HOLD]
    start = time.monotonic()
    with pytest.raises(TandemError) as err:
        list(client.generate("Hello", timeout=0.3))
    assert err.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.25 <= time.monotonic() - start < 5
    assert backend.closed.wait(5)


def test_stream_cancel_stops_iteration_and_closes_the_backend_stream(client, backend):
    backend.script = lambda rid: [TokenChunk(rid, 0, (1,), "a"), HOLD]
    stream = client.generate("Hello", timeout=10)
    seen = []
    for event in stream:
        seen.append(event)
        stream.cancel()
    assert [e.text for e in seen] == ["a"]
    assert backend.closed.wait(5)


def test_client_cancel_by_id_ends_the_stream_with_cancelled(client, backend):
    backend.script = lambda rid: [TokenChunk(rid, 0, (1,), "a"), HOLD]
    stream = client.generate("Hello", timeout=10)
    errors = []

    def consume():
        try:
            list(stream)
        except TandemError as e:
            errors.append(e)

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert backend.started.wait(5)
    assert client.cancel(stream.request_id) is True
    consumer.join(5)
    assert backend.cancels == [(stream.request_id, "tenant-a")]
    assert [e.code for e in errors] == [grpc.StatusCode.CANCELLED]


def test_retry_after_resource_exhausted_waits_at_least_retry_after(front, backend):
    backend.reject_first, backend.retry_after_s = 2, 0.3
    with TandemClient.connect(front.target, "key-a") as client:
        start = time.monotonic()
        result = client.complete("Hello", timeout=10)
    assert time.monotonic() - start >= 0.6
    assert result.text == "Hello" and len(backend.requests) == 3
    gaps = [b - a for a, b in zip(backend.call_times, backend.call_times[1:])]
    assert all(g >= 0.3 for g in gaps)
    assert len({r.request_id for r in backend.requests}) == 1


def test_bounded_attempts_then_typed_error_with_retry_after(front, backend):
    backend.reject_first, backend.retry_after_s = 10, 0.05
    with TandemClient.connect(front.target, "key-a", retry=RetryPolicy(max_attempts=2)) as c:
        with pytest.raises(TandemError) as err:
            c.complete("Hello")
    assert err.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.value.retry_after == pytest.approx(0.05) and err.value.message == "overloaded"
    assert len(backend.requests) == 2


def test_no_retry_once_a_token_was_received(client, backend):
    backend.script = lambda rid: [TokenChunk(rid, 0, (1,), "a"),
                                  Failed(rid, ErrorKind.UNAVAILABLE, "decode worker died")]
    with pytest.raises(TandemError) as err:
        list(client.generate("Hello"))
    assert err.value.code is grpc.StatusCode.UNAVAILABLE
    assert err.value.message == "decode worker died" and len(backend.requests) == 1


def test_retry_gives_up_when_retry_after_passes_the_deadline(client, backend):
    backend.reject_first, backend.retry_after_s = 10, 5.0
    start = time.monotonic()
    with pytest.raises(TandemError) as err:
        client.complete("Hello", timeout=1.0)
    assert err.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert time.monotonic() - start < 1.0 and len(backend.requests) == 1
