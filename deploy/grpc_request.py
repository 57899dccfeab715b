"""Translation between the tandem.v1 wire messages and ``cluster.api``: the gRPC front's edge.

    pb.GenerateRequest ──to_generate_request──▶ GenerateRequest    (raises InvalidRequest)
    StreamItem         ──to_response──────────▶ pb.GenerateResponse (Failed, Routed → None)

Validation happens here, before the cluster sees anything, so a bad request costs no scheduler
work: exactly one of prompt / prompt_token_ids, token ids inside the vocabulary, sampling values
in range, a prompt shorter than the model's length, a known scenario, positive SLOs, stages
with ``max_tokens >= 1``. Times on the wire are milliseconds, inside they are seconds. Which
model ``msg.model`` names is resolved before (``deploy.served_models``): ``model`` here is the
one it names, and the request carries its name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from client.proto import tandem_pb2 as pb
from cluster.api import (Admitted, Finished, GenerateRequest, StageDone, StageSpec, StreamItem,
                         TokenChunk)
from cluster.backend import ModelInfo
from router.request import Lane
from router.slo import Scenario

Encode = Callable[[str], Sequence[int]]

_LANES = {pb.LANE_UNSPECIFIED: Lane.INTERACTIVE, pb.LANE_INTERACTIVE: Lane.INTERACTIVE,
          pb.LANE_HEAVY: Lane.HEAVY, pb.LANE_BACKGROUND: Lane.BACKGROUND}
_SCENARIOS = frozenset(s.value for s in Scenario)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class InvalidRequest(ValueError):
    """The request is malformed; the message says what to fix (sent as INVALID_ARGUMENT)."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidRequest(message)


def _ms(value: float, name: str) -> float:
    _check(value > 0, f"{name} must be > 0, got {value}")
    return value / 1000.0


def _token_ids(ids: Sequence[int], name: str, vocab_size: int | None) -> tuple[int, ...]:
    bad = [t for t in ids if t < 0 or (vocab_size is not None and t >= vocab_size)]
    _check(not bad, f"{name} has ids outside [0, {vocab_size}): {bad[:5]}")
    return tuple(ids)


def sampling_params(msg: pb.SamplingParams) -> dict:
    """The set fields of ``msg`` as the plain dict ``GenerateRequest.params`` carries."""
    params: dict = {}
    if msg.HasField("max_tokens"):
        _check(msg.max_tokens >= 1, f"max_tokens must be >= 1, got {msg.max_tokens}")
        params["max_tokens"] = msg.max_tokens
    if msg.HasField("temperature"):
        _check(msg.temperature >= 0, f"temperature must be >= 0, got {msg.temperature}")
        params["temperature"] = msg.temperature
    if msg.HasField("top_p"):
        _check(0 < msg.top_p <= 1, f"top_p must be in (0, 1], got {msg.top_p}")
        params["top_p"] = msg.top_p
    if msg.HasField("top_k"):
        _check(msg.top_k >= 0, f"top_k must be >= 0, got {msg.top_k}")
        params["top_k"] = msg.top_k
    if msg.HasField("seed"):
        params["seed"] = msg.seed
    if msg.stop:
        _check(all(msg.stop), "stop strings must be non-empty")
        params["stop"] = list(msg.stop)
    if msg.ignore_eos:
        params["ignore_eos"] = True
    return params


def _stage(i: int, msg: pb.Stage, encode: Encode, vocab_size: int | None) -> StageSpec:
    name = f"stages[{i}]"
    _check(not (msg.append_text and msg.append_token_ids),
           f"{name}: set at most one of append_text and append_token_ids")
    _check(msg.max_tokens >= 1, f"{name}.max_tokens must be >= 1, got {msg.max_tokens}")
    _check(msg.tool_delay_ms >= 0, f"{name}.tool_delay_ms must be >= 0, got {msg.tool_delay_ms}")
    ids = (tuple(encode(msg.append_text)) if msg.append_text
           else _token_ids(msg.append_token_ids, f"{name}.append_token_ids", vocab_size))
    slo = msg.slo
    return StageSpec(
        append_token_ids=ids, max_tokens=msg.max_tokens, tool_delay_s=msg.tool_delay_ms / 1000.0,
        ttft_s=_ms(slo.ttft_ms, f"{name}.slo.ttft_ms") if slo.HasField("ttft_ms") else None,
        tpot_s=_ms(slo.tpot_ms, f"{name}.slo.tpot_ms") if slo.HasField("tpot_ms") else None)


def to_generate_request(msg: pb.GenerateRequest, request_id: str, tenant: str, encode: Encode,
                        model: ModelInfo | None = None) -> GenerateRequest:
    """Validate ``msg`` and build the cluster request; raises ``InvalidRequest`` on the first
    problem. ``request_id`` is the id to use (the client's, or one the server assigned);
    ``model`` (when known: the model ``msg.model`` names) bounds token ids by its vocabulary and
    the prompt by its length, and names the request's model (else ``msg.model``, empty: None)."""
    vocab_size = model.vocab_size if model else None
    _check(bool(_REQUEST_ID.fullmatch(request_id)),
           "request_id must be 1-128 characters of letters, digits and ._:-")
    _check(bool(msg.prompt) != bool(msg.prompt_token_ids),
           "set exactly one of prompt (non-empty) and prompt_token_ids")
    if msg.prompt:
        prompt = tuple(encode(msg.prompt))
        _check(bool(prompt), "prompt encodes to no tokens")
    else:
        prompt = _token_ids(msg.prompt_token_ids, "prompt_token_ids", vocab_size)
    _check(model is None or len(prompt) < model.max_model_len,
           f"prompt has {len(prompt)} tokens; the model takes fewer than "
           f"{model and model.max_model_len}")
    _check(msg.lane in _LANES, f"unknown lane {msg.lane}")
    _check(not msg.scenario or msg.scenario in _SCENARIOS,
           f"unknown scenario {msg.scenario!r}; known: {sorted(_SCENARIOS)}")
    return GenerateRequest(
        request_id=request_id, prompt_token_ids=prompt, params=sampling_params(msg.sampling),
        lane=_LANES[msg.lane], tenant=tenant, scenario=msg.scenario or None,
        ttft_s=_ms(msg.ttft_ms, "ttft_ms") if msg.HasField("ttft_ms") else None,
        tpot_s=_ms(msg.tpot_ms, "tpot_ms") if msg.HasField("tpot_ms") else None,
        stages=tuple(_stage(i, s, encode, vocab_size) for i, s in enumerate(msg.stages)),
        session_id=msg.session_id or None, model=model.name if model else msg.model or None)


def _admitted(item: Admitted, model: str) -> pb.Admitted:
    return pb.Admitted(admission=item.admission, prefill_worker=item.prefill_worker,
                       decode_worker=item.decode_worker, max_tokens_cap=item.max_tokens_cap,
                       queue_ms=item.queue_s * 1000.0, model=model)


def _stage_done(item: StageDone, model: str) -> pb.StageDone:
    return pb.StageDone(
        stage=item.stage, prompt_tokens=item.prompt_tokens,
        completion_tokens=item.completion_tokens, ttft_ms=item.ttft_s * 1000.0,
        tpot_ms=None if item.tpot_s is None else item.tpot_s * 1000.0,
        ttft_slo_ms=item.ttft_slo_s * 1000.0, tpot_slo_ms=item.tpot_slo_s * 1000.0,
        slo_met=item.slo_met, finish_reason=item.finish_reason)


def _finished(item: Finished, model: str) -> pb.Finished:
    return pb.Finished(admission=item.admission, prompt_tokens=item.prompt_tokens,
                       completion_tokens=item.completion_tokens, finish_reason=item.finish_reason,
                       slo_met=item.slo_met, e2e_ms=item.e2e_s * 1000.0, retries=item.retries,
                       model=model)


def _chunk(item: TokenChunk, model: str) -> pb.Chunk:
    return pb.Chunk(stage=item.stage, token_ids=item.token_ids, text=item.text)


_EVENTS = {Admitted: ("admitted", _admitted), TokenChunk: ("chunk", _chunk),
           StageDone: ("stage_done", _stage_done), Finished: ("finished", _finished)}


def to_response(item: StreamItem, model: str = "") -> pb.GenerateResponse | None:
    """The wire message for one stream item; ``None`` for ``Failed`` (it becomes a status) and
    ``Routed`` (its model is what ``model`` names: the served model, set on Admitted and
    Finished)."""
    event = _EVENTS.get(type(item))
    if event is None:
        return None
    name, convert = event
    return pb.GenerateResponse(request_id=item.request_id, **{name: convert(item, model)})
