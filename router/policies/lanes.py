"""Lanes: a cost score decides a request's lane (and rejects the outrageous), and the KV reserve
keeps the last slice of memory for the interactive lane."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from router.config import CostConfig
from router.request import Lane, Request

_ORDER = (Lane.INTERACTIVE, Lane.HEAVY, Lane.BACKGROUND)


@dataclass(frozen=True)
class LaneChoice:
    """The lane a request runs in, its cost score, and whether the score rejects it."""

    lane: Lane
    score: float
    rejected: bool


def cost_score(request: Request, cost: CostConfig) -> float:
    """prompt/1k·prompt_weight + Σ max_tokens/1k·output_weight + tool_risk·tool_weight."""
    out = sum(s.max_output_tokens for s in request.stages)
    return (request.prompt_tokens / 1000 * cost.prompt_weight + out / 1000 * cost.output_weight
            + request.tool_risk * cost.tool_weight)


def choose_lane(request: Request, cost: CostConfig) -> LaneChoice:
    """The requested lane, demoted (never promoted) when the score crosses a threshold."""
    score = cost_score(request, cost)
    if score > cost.reject_above:
        return LaneChoice(request.lane, score, True)
    floor = Lane.BACKGROUND if score > cost.background_above else \
        Lane.HEAVY if score > cost.heavy_above else Lane.INTERACTIVE
    lane = max(request.lane, floor, key=_ORDER.index)
    return LaneChoice(lane, score, False)


def choose_lanes(requests: list[Request], cost: CostConfig,
                 prompt: np.ndarray | None = None) -> tuple[list[Lane], np.ndarray]:
    """`choose_lane` for many requests at once: (lanes, rejected mask), vectorised on the scores.
    `prompt` (the prompt lengths, if the caller has them) saves one pass."""
    n = len(requests)
    if prompt is None:
        prompt = np.fromiter((r.stages[0].input_tokens for r in requests), float, n)
    out = np.fromiter((r.stages[0].max_output_tokens if len(r.stages) == 1
                       else sum(s.max_output_tokens for s in r.stages) for r in requests), float, n)
    risk = np.fromiter((r.tool_risk for r in requests), float, n)
    score = (prompt * cost.prompt_weight + out * cost.output_weight) / 1000 + risk * cost.tool_weight
    floor = np.where(score > cost.background_above, 2, np.where(score > cost.heavy_above, 1, 0))
    asked = np.fromiter((_ORDER.index(r.lane) for r in requests), int, n)
    lanes = [_ORDER[i] for i in np.maximum(floor, asked).tolist()]
    return lanes, score > cost.reject_above


def memory_limit(lane: Lane, capacity_tokens: int, interactive_reserve: float) -> int:
    """The most KV tokens admitted work may reserve when admitting into `lane`.

    Only the interactive lane may use the last `interactive_reserve` fraction of the capacity.
    """
    if lane is Lane.INTERACTIVE:
        return capacity_tokens
    return int(capacity_tokens * (1.0 - interactive_reserve))
