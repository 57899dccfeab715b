"""The controller's view of its worker actors: health, restarts, load, occupancy.

A ``WorkerSlot`` wraps one Ray actor handle. Calls go through ``call`` with a deadline; an actor
error marks the slot unhealthy (the health loop brings it back once the restarted actor answers
``ready``). Load is token-aware: outstanding prefill tokens for prefill workers, context tokens
and free KV for decode workers (``router.placement`` picks with them). A *draining* slot is
being removed by a resize: it finishes what it runs but takes no new work (``accepting``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from router.plan import WorkerRole


class WorkerDied(Exception):
    """The actor died or could not be reached within the call's deadline."""


@dataclass
class WorkerSlot:
    id: str
    role: WorkerRole
    handle: Any
    kv_capacity_tokens: int = 1
    healthy: bool = True
    draining: bool = False           # a resize is removing it: no new work (set once, never cleared)
    restarts: int = 0
    detail: str = ""
    queued_tokens: int = 0           # prefill: tokens waiting in its queue or in its current call
    context_tokens: int = 0          # decode: KV tokens of the requests running there
    running: set[str] = field(default_factory=set)
    kv_usage: float = 0.0
    _busy: deque = field(default_factory=lambda: deque(maxlen=512))   # (end, seconds) of recent calls
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    async def call(self, method: str, *args, timeout_s: float, **kwargs):
        """``await handle.method.remote(...)`` with a deadline; raises ``WorkerDied`` on actor loss
        or timeout (the slot is then unhealthy). Application errors propagate unchanged."""
        import ray

        ref = getattr(self.handle, method).remote(*args, **kwargs)
        try:
            return await asyncio.wait_for(_awaitable(ref), timeout_s)
        except asyncio.TimeoutError:
            ray.cancel(ref, force=False)
            self.mark_dead(f"{method} took longer than {timeout_s:.1f} s")
            raise WorkerDied(self.detail) from None
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            self.mark_dead(f"{method}: {type(exc).__name__}")
            raise WorkerDied(self.detail) from None
        except ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None

    @property
    def accepting(self) -> bool:
        """Healthy and not draining: new requests, stages and handoffs may go here."""
        return self.healthy and not self.draining

    def mark_dead(self, detail: str) -> None:
        if self.healthy:
            self.healthy, self.detail = False, detail
        self.wake.set()

    def revived(self) -> None:
        self.healthy, self.detail = True, ""
        self.restarts += 1
        self.running.clear()
        self.queued_tokens = self.context_tokens = 0
        self.wake.set()

    def busy(self, seconds: float) -> None:
        self._busy.append((time.monotonic(), seconds))

    def busy_fraction(self, window_s: float = 10.0) -> float:
        now = time.monotonic()
        return min(1.0, sum(s for end, s in self._busy if end > now - window_s) / window_s)


async def _awaitable(ref):
    return await ref
