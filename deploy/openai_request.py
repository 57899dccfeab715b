"""From a validated OpenAI body to the cluster's ``GenerateRequest`` (tokenize, bound, convert).

    CompletionRequest     ──prompt_ids──────┐
    ChatCompletionRequest ──chat_prompt_ids─┴─▶ to_generate_request ─▶ GenerateRequest

Raises ``InvalidRequest`` (a 400) for what only the tokenizer or the model can tell: a prompt
that encodes to nothing, token ids outside the vocabulary, a prompt that does not leave room
for one output token in the context window. Without ``max_tokens`` the first stage gets
``min(default_max_tokens, room left in the context window)``.

Chat prompts use the tokenizer's chat template (``apply_chat_template``); a tokenizer without
one gets the plain fallback ``"{role}: {content}\\n"`` per message and ``"assistant:"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cluster.api import GenerateRequest, StageSpec
from cluster.backend import ModelInfo
from deploy.grpc_request import InvalidRequest
from deploy.openai_schema import ChatCompletionRequest, CommonFields, CompletionRequest, StageIn


def _encode(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=special))


def _check_vocab(ids: Sequence[int], what: str, model: ModelInfo) -> tuple[int, ...]:
    bad = [t for t in ids if not 0 <= t < model.vocab_size]
    if bad:
        raise InvalidRequest(f"{what} has token ids outside the vocabulary [0, {model.vocab_size}): {bad[:5]}")
    return tuple(ids)


def prompt_ids(body: CompletionRequest, tokenizer: Any, model: ModelInfo) -> tuple[int, ...]:
    prompt = body.single_prompt
    if isinstance(prompt, str):
        ids = tuple(_encode(tokenizer, prompt, special=True))
    else:
        ids = _check_vocab(prompt, "prompt", model)
    if not ids:
        raise InvalidRequest("the prompt is empty")
    return ids


def chat_prompt_ids(body: ChatCompletionRequest, tokenizer: Any) -> tuple[int, ...]:
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # noqa: BLE001 - a template that rejects these messages
            raise InvalidRequest(f"the chat template rejected the messages: {exc}") from None
        ids = _encode(tokenizer, text, special=False)
    else:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        ids = _encode(tokenizer, text, special=True)
    if not ids:
        raise InvalidRequest("the messages encode to no tokens")
    return tuple(ids)


def _stage(i: int, s: StageIn, tokenizer: Any, model: ModelInfo) -> StageSpec:
    what = f"stages[{i}]"
    ids = (tuple(_encode(tokenizer, s.append_text, special=False)) if s.append_text is not None
           else _check_vocab(s.append_token_ids or [], f"{what}.append_token_ids", model))
    if not ids:
        raise InvalidRequest(f"{what}: the appended text encodes to no tokens")
    return StageSpec(ids, s.max_tokens, s.tool_delay_ms / 1000.0,
                     None if s.ttft_ms is None else s.ttft_ms / 1000.0,
                     None if s.tpot_ms is None else s.tpot_ms / 1000.0)


def _params(body: CommonFields, max_tokens: int) -> dict[str, Any]:
    params: dict[str, Any] = {"max_tokens": max_tokens}
    if body.temperature is not None:
        params["temperature"] = body.temperature
    if body.top_p is not None:
        params["top_p"] = body.top_p
    if body.top_k is not None and body.top_k > 0:
        params["top_k"] = body.top_k
    if body.seed is not None:
        params["seed"] = body.seed
    if body.stop_list:
        params["stop"] = body.stop_list
    if body.ignore_eos:
        params["ignore_eos"] = True
    return params


def to_generate_request(body: CommonFields, prompt: tuple[int, ...], max_tokens: int | None,
                        request_id: str, tenant: str, tokenizer: Any, model: ModelInfo,
                        default_max_tokens: int, needs: frozenset[str] = frozenset()) -> GenerateRequest:
    """The cluster request for ``body`` with its tokenized ``prompt`` (see the module docstring);
    ``needs`` are the capabilities the serving model must have (``GenerateRequest.needs``)."""
    window = model.max_model_len
    if len(prompt) >= window:
        raise InvalidRequest(f"the prompt has {len(prompt)} tokens; the context window is {window} "
                             "tokens (prompt + output)")
    stages = tuple(_stage(i, s, tokenizer, model) for i, s in enumerate(body.stages))
    later = sum(len(s.append_token_ids) + s.max_tokens for s in stages)
    room = window - len(prompt) - later
    if max_tokens is None:
        if room < 1:
            raise InvalidRequest(f"the prompt ({len(prompt)} tokens) and the later stages ({later} "
                                 f"tokens) leave no room for output in the {window}-token context window")
        max_tokens = min(default_max_tokens, room)
    elif max_tokens > room:
        raise InvalidRequest(f"the request needs up to {window - room + max_tokens} tokens "
                             f"({len(prompt)} prompt + {later} later stages + {max_tokens} max_tokens); "
                             f"the context window is {window}")
    return GenerateRequest(
        request_id=request_id, prompt_token_ids=prompt, params=_params(body, max_tokens),
        lane=body.lane, tenant=tenant, scenario=body.scenario.value if body.scenario else None,
        ttft_s=None if body.ttft_ms is None else body.ttft_ms / 1000.0,
        tpot_s=None if body.tpot_ms is None else body.tpot_ms / 1000.0,
        stages=stages, session_id=body.session_id, model=model.name, needs=needs)
