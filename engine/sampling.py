"""Sampling parameters and the sampler.

``SamplingParams`` validates itself on construction (``ValueError`` naming the field). The
sampler turns one row of logits per sequence into one token per sequence:

    temperature == 0            -> argmax (greedy)
    otherwise                   -> logits / T, keep top_k, keep the top_p nucleus, then draw
                                   with the sequence's own ``torch.Generator``

A request with a ``seed`` owns a generator seeded with it, so the same seed gives the same tokens
whatever else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0          # 0: no top-k filter
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False

    def __post_init__(self):
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k!r}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class SamplerState:
    """Per-sequence sampling state: the generator that makes seeded sampling reproducible."""

    generator: torch.Generator | None = field(default=None)

    @classmethod
    def for_params(cls, params: SamplingParams, device: torch.device) -> "SamplerState":
        if params.greedy:
            return cls()
        gen = torch.Generator(device=device)
        if params.seed is not None:
            gen.manual_seed(params.seed)
        else:
            gen.seed()
        return cls(generator=gen)


def sample(logits: torch.Tensor, params: list[SamplingParams], states: list[SamplerState]) -> list[int]:
    """logits: [N, vocab] float32, one row per sequence. Returns N token ids."""
    tokens = torch.argmax(logits, dim=-1).tolist()
    for i, (p, st) in enumerate(zip(params, states)):
        if not p.greedy:
            tokens[i] = _draw(logits[i], p, st.generator)
    return tokens


def _draw(row: torch.Tensor, p: SamplingParams, generator: torch.Generator) -> int:
    row = row / p.temperature
    if p.top_k and p.top_k < row.numel():
        kth = torch.topk(row, p.top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = torch.sort(row, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the mass before it already reaches top_p (the first is always kept).
        drop = (probs.cumsum(-1) - probs) >= p.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        row = torch.empty_like(row).scatter_(0, order, sorted_logits)
    probs = torch.softmax(row, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())
