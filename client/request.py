"""Building a ``tandem.v1.GenerateRequest`` from the SDK's keyword arguments.

``build_request`` holds the one explicit signature that both clients' ``generate``/``complete``
forward their ``**options`` to, so a misspelt option fails at the call, before any network I/O.
The server validates values (INVALID_ARGUMENT); this module only shapes them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from client.proto import tandem_pb2 as pb

_LANES = {"interactive": pb.LANE_INTERACTIVE, "heavy": pb.LANE_HEAVY,
          "background": pb.LANE_BACKGROUND}


@dataclass(frozen=True)
class Stage:
    """A later stage: ``append_text`` or ``append_token_ids`` is added after the previous
    stage's output, ``tool_delay_ms`` after it ended; then up to ``max_tokens`` are decoded."""

    max_tokens: int
    append_text: str = ""
    append_token_ids: tuple[int, ...] = ()
    tool_delay_ms: float = 0.0
    ttft_ms: float | None = None
    tpot_ms: float | None = None

    def to_proto(self) -> pb.Stage:
        return pb.Stage(append_token_ids=self.append_token_ids, append_text=self.append_text,
                        max_tokens=self.max_tokens, tool_delay_ms=self.tool_delay_ms,
                        slo=pb.StageSlo(ttft_ms=self.ttft_ms, tpot_ms=self.tpot_ms))


def new_request_id() -> str:
    return uuid.uuid4().hex


def build_request(prompt: str | Sequence[int], *, max_tokens: int | None = None,
                  temperature: float | None = None, top_p: float | None = None,
                  top_k: int | None = None, seed: int | None = None,
                  stop: Sequence[str] = (), ignore_eos: bool = False,
                  lane: str = "interactive", scenario: str | None = None,
                  ttft_ms: float | None = None, tpot_ms: float | None = None,
                  stages: Sequence[Stage] = (), session_id: str | None = None,
                  request_id: str | None = None, model: str | None = None) -> pb.GenerateRequest:
    """The wire request; ``prompt`` is text or token ids. ``request_id`` defaults to a fresh
    uuid so the caller knows it before the first event (for ``client.cancel``). ``model`` names
    a served model (None: the server's default); the one that served the request may differ and
    is ``Admitted.model`` / ``Finished.model``."""
    if lane not in _LANES:
        raise ValueError(f"unknown lane {lane!r}; known: {sorted(_LANES)}")
    text, ids = (prompt, ()) if isinstance(prompt, str) else ("", tuple(prompt))
    sampling = pb.SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                 top_k=top_k, seed=seed, stop=list(stop), ignore_eos=ignore_eos)
    return pb.GenerateRequest(
        request_id=request_id or new_request_id(), prompt=text, prompt_token_ids=ids,
        sampling=sampling, lane=_LANES[lane], scenario=scenario or "", ttft_ms=ttft_ms,
        tpot_ms=tpot_ms, stages=[s.to_proto() for s in stages], session_id=session_id or "",
        model=model or "")
