"""Token-aware worker choice for work the scheduler does not place itself (re-prefills after a
failure, session turns, the FCFS policy's fallbacks).

Load is measured in tokens, not requests: a prefill worker's outstanding prompt tokens, a
decode worker's KV context tokens against its capacity. Ties go to the lower id, so the choice
is deterministic. Pure Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerLoad:
    id: str
    healthy: bool
    queued_prefill_tokens: int = 0    # prefill workers
    context_tokens: int = 0           # decode workers: KV held by running requests
    capacity_tokens: int = 1


def pick_prefill(loads: Iterable[WorkerLoad]) -> str | None:
    """The healthy prefill worker with the fewest outstanding prompt tokens (None: none healthy)."""
    live = [w for w in loads if w.healthy]
    return min(live, key=lambda w: (w.queued_prefill_tokens, w.id)).id if live else None


def pick_decode(loads: Iterable[WorkerLoad], need_tokens: int = 0) -> str | None:
    """The healthy decode worker with the most free KV after adding ``need_tokens`` (None: none
    healthy). A worker that cannot hold ``need_tokens`` at all is chosen only if every one is so."""
    live = [w for w in loads if w.healthy]
    if not live:
        return None
    fits = [w for w in live if w.capacity_tokens - w.context_tokens >= need_tokens] or live
    return min(fits, key=lambda w: ((w.context_tokens + need_tokens) / w.capacity_tokens, w.id)).id


def affinity_ok(load: WorkerLoad, need_tokens: int, headroom: float = 0.9) -> bool:
    """Whether a session's preferred decode worker can take ``need_tokens`` more without going
    past ``headroom`` of its KV (the SLO guard for affinity: a full worker would preempt)."""
    return load.healthy and load.context_tokens + need_tokens <= headroom * load.capacity_tokens
