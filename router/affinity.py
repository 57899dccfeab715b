"""Session affinity: a consistent-hash ring from session ids to decode workers.

A session's turns should land on the decode worker whose prefix cache holds the conversation.
The ring maps a session id to a worker so that adding or removing a worker moves only the
sessions of that worker (about 1/N of them), and an unhealthy worker is skipped in ring order::

    ring = HashRing(["d0", "d1", "d2"])
    ring.pick("session-42")                      # "d1", stable across processes
    ring.pick("session-42", exclude={"d1"})     # the next worker clockwise

Pure Python; sha256 keeps the mapping the same on every machine and Python run.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable


def _point(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


class HashRing:
    """Consistent hashing with ``replicas`` virtual nodes per worker."""

    def __init__(self, workers: Iterable[str], replicas: int = 64) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        self.replicas = replicas
        self._points: list[int] = []
        self._owner: dict[int, str] = {}
        self.workers: set[str] = set()
        for w in workers:
            self.add(w)

    def add(self, worker: str) -> None:
        if worker in self.workers:
            return
        self.workers.add(worker)
        for i in range(self.replicas):
            p = _point(f"{worker}#{i}")
            if p not in self._owner:
                self._owner[p] = worker
                bisect.insort(self._points, p)

    def remove(self, worker: str) -> None:
        self.workers.discard(worker)
        for i in range(self.replicas):
            p = _point(f"{worker}#{i}")
            if self._owner.get(p) == worker:
                del self._owner[p]
                self._points.remove(p)

    def pick(self, session_id: str, exclude: Iterable[str] = ()) -> str | None:
        """The session's worker, skipping ``exclude``; None when no worker is left."""
        skip = set(exclude)
        if not self._points or not (self.workers - skip):
            return None
        i = bisect.bisect(self._points, _point(session_id))
        for k in range(len(self._points)):
            w = self._owner[self._points[(i + k) % len(self._points)]]
            if w not in skip:
                return w
        return None
