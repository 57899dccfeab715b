"""The servicer's status mapping: authentication, validation, Failed kinds, Cancel, health."""

import grpc
import pytest

from client import Stage, TandemClient, TandemError
from client.proto import tandem_pb2 as pb
from client.proto import tandem_pb2_grpc as pb_grpc
from cluster.api import ErrorKind, Failed, TokenChunk
from tests.client.conftest import HOLD


def _error(front, api_key, prompt="Hello", **options) -> TandemError:
    with TandemClient.connect(front.target, api_key) as client:
        with pytest.raises(TandemError) as err:
            list(client.generate(prompt, timeout=10, **options))
    return err.value


@pytest.mark.parametrize("api_key", [None, "wrong-key"])
def test_missing_or_unknown_key_is_unauthenticated(front, backend, api_key):
    assert _error(front, api_key).code is grpc.StatusCode.UNAUTHENTICATED
    assert backend.requests == []


def test_only_the_bearer_scheme_authenticates(front, backend):
    stub = pb_grpc.TandemStub(grpc.insecure_channel(front.target))
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(pb.GenerateRequest(prompt="Hi"), metadata=(("authorization", "key-a"),)))
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("prompt, options, words", [
    ("", {}, "prompt"),
    ("Hello", {"max_tokens": -1}, "max_tokens"),
    ("Hello", {"temperature": -0.5}, "temperature"),
    ("Hello", {"top_p": 0.0}, "top_p"),
    ("Hello", {"scenario": "poetry"}, "scenario"),
    ("Hello", {"ttft_ms": -3}, "ttft_ms"),
    ("Hello", {"request_id": "bad id with spaces"}, "request_id"),
    ([1, 2, 5000], {}, "prompt_token_ids"),
    ([1] * 2048, {}, "2048 tokens"),
])
def test_bad_input_is_invalid_argument_naming_the_field(front, backend, prompt, options, words):
    err = _error(front, "key-a", prompt, **options)
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT and words in err.message
    assert backend.requests == []


def test_bad_stage_is_invalid_argument(front, backend):
    err = _error(front, "key-a", stages=[Stage(max_tokens=0, append_text="x")])
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT and "stages[0].max_tokens" in err.message


@pytest.mark.parametrize("kind", [k for k in ErrorKind if k is not ErrorKind.REJECTED])
def test_failed_kind_maps_to_its_status_code_and_message(front, backend, kind):
    backend.script = lambda rid: [Failed(rid, kind, f"because {kind.value}")]
    err = _error(front, "key-a")
    assert err.code is getattr(grpc.StatusCode, kind.grpc_code)
    assert err.message == f"because {kind.value}" and err.retry_after is None


def test_rejected_sets_retry_after_trailing_metadata(front, backend):
    backend.reject_first, backend.retry_after_s = 1, 1.25
    stub = pb_grpc.TandemStub(grpc.insecure_channel(front.target))
    call = stub.Generate(pb.GenerateRequest(prompt="Hi"),
                         metadata=(("authorization", "Bearer key-a"),))
    with pytest.raises(grpc.RpcError):
        list(call)
    assert call.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ("retry-after", "1.25") in tuple(call.trailing_metadata())


def test_backend_stream_without_finished_is_internal(front, backend):
    backend.script = lambda rid: []
    assert _error(front, "key-a").code is grpc.StatusCode.INTERNAL


def test_cancelling_another_tenants_request_is_not_found(front, backend):
    backend.script = lambda rid: [TokenChunk(rid, 0, (1,), "a"), HOLD]
    with TandemClient.connect(front.target, "key-a") as owner, \
            TandemClient.connect(front.target, "key-b") as other:
        stream = owner.generate("Hello", timeout=10)
        events = iter(stream)
        assert next(events).text == "a"
        with pytest.raises(TandemError) as err:
            other.cancel(stream.request_id)
        assert err.value.code is grpc.StatusCode.NOT_FOUND
        assert backend.cancels == [(stream.request_id, "tenant-b")]
        assert stream.request_id in backend.running
        stream.cancel()
        assert list(events) == []


def test_cancelling_an_unknown_request_is_not_found(front, backend):
    with TandemClient.connect(front.target, "key-a") as client:
        with pytest.raises(TandemError) as err:
            client.cancel("nope")
    assert err.value.code is grpc.StatusCode.NOT_FOUND


def test_health_follows_backend_ready(front, backend):
    with TandemClient.connect(front.target) as client:
        assert client.health() == "SERVING"
        assert client.health("tandem.v1.Tandem") == "SERVING"
        backend.is_ready = False
        assert client.health() == "NOT_SERVING"
