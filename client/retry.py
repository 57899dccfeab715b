"""When the SDK retries a Generate call, and how long it waits first.

Rule: retry only UNAVAILABLE and RESOURCE_EXHAUSTED, only while no event has reached the caller
(so no token is ever duplicated), at most ``max_attempts`` attempts in all, and never past the
call's deadline. The wait honours the server's ``retry-after``; otherwise it is exponential
backoff with jitter::

    wait = retry_after * (1 + jitter * u)                            if the server sent one
    wait = min(max_backoff, initial_backoff * multiplier**n) * (1 - jitter * u)   otherwise
    (u uniform in [0, 1), n = attempts so far - 1)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import grpc

from client.errors import TandemError

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


@dataclass
class RetryPolicy:
    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or not 0 <= self.jitter < 1 or self.initial_backoff < 0:
            raise ValueError(f"bad retry policy {self}")

    def wait(self, error: TandemError, attempts: int, remaining: float | None) -> float | None:
        """Seconds to wait before the next attempt, or None to give up with ``error``.

        ``attempts``: attempts made so far (>= 1); ``remaining``: seconds to the deadline."""
        if error.code not in RETRYABLE or attempts >= self.max_attempts:
            return None
        u = self.rng.random()
        if error.retry_after is not None:
            wait = error.retry_after * (1 + self.jitter * u)
        else:
            base = self.initial_backoff * self.multiplier ** (attempts - 1)
            wait = min(self.max_backoff, base) * (1 - self.jitter * u)
        if remaining is not None and wait >= remaining:
            return None
        return wait
