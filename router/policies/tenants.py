"""Per-tenant rate limits (token buckets on requests and prompt tokens), concurrency caps, and
weighted fairness between tenants. State advances only with the caller's clock (`now_s`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from router.config import SchedulerConfig


class TenantVerdict(str, Enum):
    OK = "ok"
    RATE_LIMITED = "rate_limited"        # reject with retry_after
    CONCURRENCY_CAPPED = "concurrency"   # stays pending until a slot frees


@dataclass(frozen=True)
class TenantCheck:
    verdict: TenantVerdict
    retry_after_s: float | None = None


@dataclass
class _Bucket:
    level: float
    stamp: float


class TenantLimiter:
    """Token buckets per tenant. `check` consumes from the buckets only when it returns OK."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self._req: dict[str, _Bucket] = {}
        self._tok: dict[str, _Bucket] = {}

    @staticmethod
    def _refill(b: _Bucket, rate: float, burst: float, now: float) -> None:
        b.level = min(burst, b.level + max(0.0, now - b.stamp) * rate)
        b.stamp = max(b.stamp, now)

    def check(self, tenant: str, prompt_tokens: int, active: int, now_s: float,
              consume: bool = True) -> TenantCheck:
        """Rate and concurrency verdict for one request of `tenant` with `active` running.

        With consume=False (a request that already passed the rate limit and waits for a
        concurrency slot) only the concurrency cap is checked.
        """
        lim = self.config.tenant(tenant)
        if lim.max_concurrent is not None and active >= lim.max_concurrent:
            return TenantCheck(TenantVerdict.CONCURRENCY_CAPPED)
        if not consume:
            return TenantCheck(TenantVerdict.OK)
        waits = []
        rb = tb = None
        if lim.requests_per_s is not None:
            rb = self._req.setdefault(tenant, _Bucket(lim.request_burst, now_s))
            self._refill(rb, lim.requests_per_s, lim.request_burst, now_s)
            if rb.level < 1:
                waits.append((1 - rb.level) / lim.requests_per_s)
        if lim.tokens_per_s is not None:
            need = min(prompt_tokens, lim.token_burst)
            tb = self._tok.setdefault(tenant, _Bucket(lim.token_burst, now_s))
            self._refill(tb, lim.tokens_per_s, lim.token_burst, now_s)
            if tb.level < need:
                waits.append((need - tb.level) / lim.tokens_per_s)
        if waits:
            return TenantCheck(TenantVerdict.RATE_LIMITED, max(waits))
        if rb is not None:
            rb.level -= 1
        if tb is not None:
            tb.level -= min(prompt_tokens, lim.token_burst)
        return TenantCheck(TenantVerdict.OK)


def fairness_factors(usage: dict[str, float], tenants: set[str], config: SchedulerConfig) -> dict[str, float]:
    """Value multipliers for weighted fairness: a tenant above its weighted share of the admitted
    KV reservations is worth proportionally less to the DP; at or below its share, 1.

        share_t = weight_t / Σ weights of the tenants present
        factor_t = min(1, share_t / used_t)     (used_t: its fraction of the admitted reservations)
    """
    names = set(tenants) | set(usage)
    if not config.fairness or not names:
        return {t: 1.0 for t in names}
    total_w = sum(config.tenant(t).weight for t in names)
    total_u = sum(usage.values())
    out = {}
    for t in names:
        share = config.tenant(t).weight / total_w
        used = usage.get(t, 0.0) / total_u if total_u > 0 else 0.0
        out[t] = 1.0 if used <= share else max(0.05, share / used)
    return out
