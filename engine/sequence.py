"""A request as the engine tracks it: tokens, how many of them have KV in the cache, and state.

Token accounting (the one rule the scheduler and runner share)::

    token_ids = prompt + generated           num_tokens = len(token_ids)
    [0, num_computed_tokens)                 KV is in the cache
    [num_computed_tokens, num_tokens)        still to run through the model

A prefilling sequence has several tokens left; a decoding one has exactly its last sampled
token left. When a step computes up to ``num_tokens`` the model's last logits give the next token.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from engine.detokenizer import IncrementalDetokenizer
from engine.sampling import SamplerState, SamplingParams


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(enum.Enum):
    STOP = "stop"        # EOS, a stop token id or a stop string
    LENGTH = "length"    # max_tokens or the context window
    ABORT = "abort"


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival: float
    sampler: SamplerState
    detokenizer: IncrementalDetokenizer | None = None
    token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0      # prompt tokens served from the prefix cache
    status: SeqStatus = SeqStatus.WAITING
    finish_reason: FinishReason | None = None
    prefix_matched: bool = False    # match_prefix was called for the current allocation
    num_preemptions: int = 0
    emitted_chars: int = 0          # characters of the detokenized text already streamed
    stop_scan_from: int = 0         # text before this (minus the longest stop) was searched

    def __post_init__(self):
        if not self.token_ids:
            self.token_ids = list(self.prompt_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_ids):]

    @property
    def num_uncomputed(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_decoding(self) -> bool:
        return self.num_tokens > self.num_prompt_tokens and self.num_uncomputed == 1

    @property
    def finished(self) -> bool:
        return self.status is SeqStatus.FINISHED
