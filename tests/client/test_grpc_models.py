"""gRPC ``GenerateRequest.model``: routed by the same model router as HTTP (a ``MultiBackend``),
validated with that model's tokenizer and limits, and answered with the model that served the
request on ``Admitted`` / ``Finished`` (the SDK's ``model=`` and ``.model``)."""

import asyncio

import grpc
import pytest

from client import Admitted, AsyncTandemClient, Finished, TandemClient, TandemError
from client.events import event_from_proto
from client.proto import tandem_pb2 as pb
from client.request import build_request
from deploy.model_router import ModelRouter, ModelRoutes
from deploy.multi_backend import MultiBackend
from tests.client.conftest import VOCAB, CharTokenizer, Front, ScriptedBackend

ROUTES = {"main": {"versions": {"v1": 1}, "fallback": "small"},
          "small": {"versions": {"v1": 1}, "max_context": 64}}
STATES: dict[str, str] = {}


class DoubledTokenizer:
    """``small``'s tokenizer: not ``main``'s, so a test can tell which one encoded a prompt."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) % VOCAB for c in text] * 2


@pytest.fixture(scope="module")
def multi_front():
    front = Front(tokenizers={"small": DoubledTokenizer()})
    yield front
    front.stop()


@pytest.fixture
def scripted(multi_front) -> dict:
    backends = {("main", "v1"): ScriptedBackend(), ("small", "v1"): ScriptedBackend()}
    router = ModelRouter(ModelRoutes.model_validate({"models": ROUTES}), {"main": 2048, "small": 2048})
    multi_front.backend = MultiBackend(backends, router,
                                       overload_state_of=lambda m: STATES.get(m, "normal"))
    yield backends
    STATES.clear()


@pytest.fixture
def client(multi_front):
    with TandemClient.connect(multi_front.target, "key-a") as c:
        yield c


def test_a_named_model_serves_the_request_with_its_own_tokenizer(client, scripted):
    result = client.complete("Hi", model="small")
    assert result.model == "small" and result.finished.model == "small"
    (request,) = scripted[("small", "v1")].requests
    assert request.model == "small" and request.prompt_token_ids == (72, 105, 72, 105)
    assert scripted[("main", "v1")].requests == []


def test_no_model_is_the_default_and_every_summary_names_it(client, scripted):
    events = list(client.generate("Hi"))
    admitted = next(e for e in events if isinstance(e, Admitted))
    finished = next(e for e in events if isinstance(e, Finished))
    assert admitted.model == finished.model == "main"
    assert scripted[("main", "v1")].requests[0].prompt_token_ids == (72, 105)


def test_an_unknown_model_is_not_found_naming_the_served_ones(client, scripted):
    with pytest.raises(TandemError) as err:
        client.complete("Hi", model="gpt-9")
    assert err.value.code is grpc.StatusCode.NOT_FOUND
    assert "'gpt-9'" in err.value.message and "'main', 'small'" in err.value.message
    assert all(b.requests == [] for b in scripted.values())


def test_a_fallback_reports_the_model_that_served(client, scripted):
    STATES["main"] = "degraded"
    events = list(client.generate("Hi", model="main", lane="background"))
    assert {e.model for e in events if isinstance(e, (Admitted, Finished))} == {"small"}
    assert len(scripted[("small", "v1")].requests) == 1
    assert client.complete("Hi", model="main").model == "main"       # interactive stays


@pytest.mark.parametrize("prompt, words", [([1, VOCAB], "prompt_token_ids"),
                                           ([1] * 2048, "2048 tokens"), ("", "prompt")])
def test_bad_input_for_a_named_model_is_still_invalid_argument(client, scripted, prompt, words):
    with pytest.raises(TandemError) as err:
        client.complete(prompt, model="small")
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT and words in err.value.message
    assert all(b.requests == [] for b in scripted.values())


def test_the_async_client_takes_model_too(multi_front, scripted):
    async def main():
        async with AsyncTandemClient.connect(multi_front.target, "key-a") as client:
            return await client.complete("Hi", model="small")
    assert asyncio.run(asyncio.wait_for(main(), 20)).model == "small"


def test_a_single_model_server_knows_its_own_name_only(front, backend):
    with TandemClient.connect(front.target, "key-a") as client:
        assert client.complete("Hi").model == "scripted"
        assert client.complete("Hi", model="scripted").model == "scripted"
        with pytest.raises(TandemError) as err:
            client.complete("Hi", model="other")
    assert err.value.code is grpc.StatusCode.NOT_FOUND and "'scripted'" in err.value.message
    assert len(backend.requests) == 2


def test_wire_fields_keep_their_numbers():
    def numbers(message):
        return {f.name: f.number for f in message.DESCRIPTOR.fields}
    assert numbers(pb.GenerateRequest) == {
        "request_id": 1, "prompt": 2, "prompt_token_ids": 3, "sampling": 4, "lane": 5, "scenario": 6,
        "ttft_ms": 7, "tpot_ms": 8, "stages": 9, "session_id": 10, "model": 11}
    assert numbers(pb.Admitted)["model"] == 6 and numbers(pb.Finished)["model"] == 8
    assert numbers(pb.Finished)["retries"] == 7 and numbers(pb.Admitted)["queue_ms"] == 5


def test_the_sdk_sends_the_model_and_reads_none_from_a_server_that_does_not_say():
    assert build_request("Hi", model="small").model == "small" and build_request("Hi").model == ""
    silent = event_from_proto(pb.GenerateResponse(request_id="r", finished=pb.Finished()))
    assert silent.model is None
    assert CharTokenizer().encode("Hi") == [72, 105]
