"""Request bodies of the OpenAI-compatible HTTP front: pydantic models, the edge's validation.

Every model forbids unknown fields, so a typo is a 400 naming the field. Three kinds of fields:

- used: ``model``, ``prompt`` / ``messages``, ``max_tokens`` (chat: also
  ``max_completion_tokens``), ``temperature``, ``top_p``, ``seed``, ``stop``, ``stream``,
  ``stream_options.include_usage``, and vLLM's ``top_k`` and ``ignore_eos``;
- Tandem's own (what the openai client's ``extra_body`` sends): ``lane``, ``scenario``,
  ``ttft_ms``, ``tpot_ms``, ``stages``, ``session_id``. ``tenant`` is refused: it comes from
  the API key;
- standard OpenAI fields accepted only at their no-op values: ``user`` (any string), ``n`` = 1,
  ``presence_penalty`` / ``frequency_penalty`` = 0, ``logit_bias`` empty, completions'
  ``echo`` = false, ``logprobs`` = null, ``best_of`` = 1, ``suffix`` empty; chat's
  ``logprobs`` = false, ``top_logprobs`` = null. Anything else (``tools``,
  ``response_format``...) is an unknown field.

Times are milliseconds on the wire (``ttft_ms``...), seconds inside.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from router.request import Lane
from router.slo import Scenario



def _ms():
    """An optional positive, finite number of milliseconds."""
    return Field(default=None, gt=0, allow_inf_nan=False)


class StageIn(BaseModel):
    """A later stage: text or token ids appended after the previous stage's output."""

    model_config = ConfigDict(extra="forbid")

    append_text: str | None = None
    append_token_ids: list[int] | None = None
    max_tokens: int = Field(ge=1)
    tool_delay_ms: float = Field(0.0, ge=0, allow_inf_nan=False)
    ttft_ms: float | None = _ms()
    tpot_ms: float | None = _ms()

    @model_validator(mode="after")
    def _one_append(self) -> "StageIn":
        if (self.append_text is None) == (self.append_token_ids is None):
            raise ValueError("set exactly one of append_text and append_token_ids")
        if not (self.append_text or self.append_token_ids):
            raise ValueError("the appended text / token ids must not be empty")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class CommonFields(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)          # vLLM: -1 or 0 disables it
    seed: int | None = None
    stop: str | list[str] | None = None
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Tandem's extension fields
    lane: Lane = Lane.INTERACTIVE
    scenario: Scenario | None = None
    ttft_ms: float | None = _ms()
    tpot_ms: float | None = _ms()
    stages: list[StageIn] = Field(default_factory=list, max_length=64)
    session_id: str | None = Field(None, min_length=1, max_length=256)
    # standard fields accepted at their no-op values only (checked in _no_ops)
    user: str | None = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_tenant(cls, data: Any) -> Any:
        if isinstance(data, dict) and "tenant" in data:
            raise ValueError("tenant cannot be set in the request: it comes from the API key")
        return data

    @model_validator(mode="after")
    def _no_ops(self) -> "CommonFields":
        _require(self.n == 1, "n must be 1 (one choice per request)")
        _require(self.presence_penalty == 0 and self.frequency_penalty == 0,
                 "presence_penalty and frequency_penalty are not supported (must be 0)")
        _require(not self.logit_bias, "logit_bias is not supported")
        _require(self.stream_options is None or self.stream,
                 "stream_options is only allowed with stream=true")
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        _require(all(stops), "stop strings must be non-empty")
        _require(len(stops) <= 16, "at most 16 stop strings")
        return self

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(CommonFields):
    """``POST /v1/completions``: ``prompt`` is text, token ids, or a list of exactly one of those."""

    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    logprobs: None = None
    best_of: int | None = None
    suffix: str | None = None

    @model_validator(mode="after")
    def _completion_no_ops(self) -> "CompletionRequest":
        _require(not self.echo, "echo is not supported")
        _require(self.best_of in (None, 1), "best_of must be 1")
        _require(not self.suffix, "suffix is not supported")
        if isinstance(self.prompt, list) and self.prompt and not isinstance(self.prompt[0], int):
            _require(len(self.prompt) == 1, "batched prompts are not supported: send one prompt")
        return self

    @property
    def single_prompt(self) -> str | list[int]:
        p = self.prompt
        return p[0] if isinstance(p, list) and p and not isinstance(p[0], int) else p


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(CommonFields):
    """``POST /v1/chat/completions``; ``max_completion_tokens`` is the newer name of max_tokens."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: None = None

    @model_validator(mode="after")
    def _chat_no_ops(self) -> "ChatCompletionRequest":
        _require(not self.logprobs, "logprobs is not supported")
        _require(self.max_tokens is None or self.max_completion_tokens is None
                 or self.max_tokens == self.max_completion_tokens,
                 "max_tokens and max_completion_tokens disagree")
        return self

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def validation_message(exc: ValidationError) -> str:
    """One line naming each problem: ``field.path: message; ...``."""
    parts = []
    for e in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
