"""SLO-driven sizing of the prefill and decode pools, each from its own signals. Pure Python.

    burn(a)          = (1 − a) / (1 − target_attainment)        1.0 = exactly on target
    prefill pressure = max(queue p90 / queue_wait_target_s, burn(TTFT), burn(predicted TTFT))
    decode pressure  = max(burn(TPOT), KV usage / kv_high)

    pressure > 1, upscale cooldown passed             → + min(max_step, max(1, ⌈n·(pressure − 1)⌉))
    calm, and calm and unchanged for the (longer)
      downscale cooldown                              → − 1
    otherwise                                         → hold
    then the pool bounds, then the P:D ratio guard (``ratio_guard``).

A pool is *calm* when its attainments are at or above target (or unmeasured: an idle window),
its busy fraction is below ``busy_low`` and, for prefill, the queue p90 is at most half its
target; for decode, the KV usage is below ``kv_low``. Between "pressure > 1" and "calm" lies the
hysteresis band where nothing moves. Load that oscillates faster than the downscale cooldown
never stays calm long enough to shrink a pool: pools grow to the peaks' need and stay there.

The policy keeps, per pool, when it last changed and since when it has been calm; it treats every
decision it returns as applied (also in dry-run, so dry-run logs show the real cadence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from deploy.autoscale_config import AutoscaleConfig, ScaleDecision, ScaleSignals

__all__ = ["AutoscaleConfig", "AutoscalePolicy", "ScaleDecision", "ScaleSignals", "ratio_guard"]

_EPS = 1e-9


@dataclass
class _PoolState:
    last_change_s: float | None = None
    calm_since_s: float | None = None


@dataclass(frozen=True)
class _Pressure:
    value: float
    why: str


def _burn(attainment: float | None, target: float) -> float:
    return 0.0 if attainment is None else (1.0 - attainment) / (1.0 - target)


def _met(attainment: float | None, target: float) -> bool:
    return attainment is None or attainment >= target


def _prefill_pressure(s: ScaleSignals, c: AutoscaleConfig) -> _Pressure:
    terms = {f"queue p90 {s.queue_wait_p90_s:.2f}s": s.queue_wait_p90_s / c.queue_wait_target_s,
             f"TTFT attainment {s.ttft_attainment}": _burn(s.ttft_attainment, c.target_attainment),
             f"predicted TTFT attainment {s.predicted_ttft_attainment}":
                 _burn(s.predicted_ttft_attainment, c.target_attainment)}
    why, value = max(terms.items(), key=lambda kv: kv[1])
    return _Pressure(value, f"{why} (pressure {value:.2f})")


def _decode_pressure(s: ScaleSignals, c: AutoscaleConfig) -> _Pressure:
    terms = {f"TPOT attainment {s.tpot_attainment}": _burn(s.tpot_attainment, c.target_attainment),
             f"KV usage {s.kv_usage:.2f}": s.kv_usage / c.kv_high}
    why, value = max(terms.items(), key=lambda kv: kv[1])
    return _Pressure(value, f"{why} (pressure {value:.2f})")


def _prefill_calm(s: ScaleSignals, c: AutoscaleConfig) -> bool:
    return (_met(s.ttft_attainment, c.target_attainment)
            and _met(s.predicted_ttft_attainment, c.target_attainment)
            and s.queue_wait_p90_s <= 0.5 * c.queue_wait_target_s and s.prefill_busy < c.busy_low)


def _decode_calm(s: ScaleSignals, c: AutoscaleConfig) -> bool:
    return (_met(s.tpot_attainment, c.target_attainment) and s.kv_usage < c.kv_low
            and s.decode_busy < c.busy_low)


class AutoscalePolicy:
    """``decide`` once per window with that window's signals and a monotonic ``now_s``."""

    def __init__(self, config: AutoscaleConfig):
        self.config = config
        self._pools = {"prefill": _PoolState(), "decode": _PoolState()}

    def decide(self, signals: ScaleSignals, now_s: float) -> ScaleDecision:
        c, s, reasons = self.config, signals, []
        p = self._size("prefill", s.prefill_replicas, (c.prefill_min, c.prefill_max),
                       _prefill_pressure(s, c), _prefill_calm(s, c), now_s, reasons)
        d = self._size("decode", s.decode_replicas, (c.decode_min, c.decode_max),
                       _decode_pressure(s, c), _decode_calm(s, c), now_s, reasons)
        guarded = ratio_guard(c, s.prefill_replicas, s.decode_replicas, p, d)
        if guarded != (p, d):
            reasons.append(f"P:D guard [{c.pd_ratio_min}, {c.pd_ratio_max}]: "
                           f"{p}:{d} -> {guarded[0]}:{guarded[1]}")
            p, d = guarded
        for pool, new, current in (("prefill", p, s.prefill_replicas),
                                   ("decode", d, s.decode_replicas)):
            if new != current:
                self._pools[pool].last_change_s = now_s
        return ScaleDecision(p, d, s.prefill_replicas, s.decode_replicas, tuple(reasons), c.dry_run)

    def _size(self, pool: str, n: int, bounds: tuple[int, int], pressure: _Pressure, calm: bool,
              now_s: float, reasons: list[str]) -> int:
        """One pool's target; appends a reason whenever it moves or is held back by a cooldown."""
        c, st = self.config, self._pools[pool]
        lo, hi = bounds
        if not calm:
            st.calm_since_s = None
        elif st.calm_since_s is None:
            st.calm_since_s = now_s
        if not lo <= n <= hi:
            reasons.append(f"{pool} {n} -> {min(max(n, lo), hi)}: outside bounds [{lo}, {hi}]")
            return min(max(n, lo), hi)
        since_change = math.inf if st.last_change_s is None else now_s - st.last_change_s
        if pressure.value > 1.0:
            if since_change < c.upscale_cooldown_s:
                reasons.append(f"{pool} hold (upscale cooldown): {pressure.why}")
                return n
            step = min(c.max_step, max(1, math.ceil(n * (pressure.value - 1.0) - _EPS)))
            target = min(hi, n + step)
            reasons.append(f"{pool} +{target - n}: {pressure.why}" if target > n
                           else f"{pool} at max {hi}: {pressure.why}")
            return target
        if calm and n > lo and min(now_s - st.calm_since_s, since_change) >= c.downscale_cooldown_s:
            reasons.append(f"{pool} -1: calm for {now_s - st.calm_since_s:.0f}s")
            return n - 1
        return n


def _into(x: int, want: tuple[int, int], allowed: tuple[int, int]) -> int:
    """The value nearest to the ``want`` range, moving ``x`` only within ``allowed`` (an empty
    ``allowed``, low above high, means that repair does not apply: ``x`` is returned)."""
    if allowed[0] > allowed[1]:
        return x
    y = min(max(x, want[0]), want[1])
    return min(max(y, allowed[0]), allowed[1])


def ratio_guard(c: AutoscaleConfig, p0: int, d0: int, p: int, d: int) -> tuple[int, int]:
    """Clamp targets ``(p, d)`` (current ``(p0, d0)``) so that ``pd_ratio_min <= p/d <=
    pd_ratio_max`` whenever the pool bounds allow it. Repairs, in order, until the ratio holds:

        1. cancel (part of) a downscale     the pool that shrank stays larger
        2. cap (part of) an upscale         the pool that grew grows less
        3. grow the lagging pool, then shrink the other (the current counts were already outside)

    Each repair moves one pool to the value nearest the range the other pool allows.
    """
    lo, hi = c.pd_ratio_min, c.pd_ratio_max

    def ok(p: int, d: int) -> bool:
        return lo * d - _EPS <= p <= hi * d + _EPS

    def p_want(d: int) -> tuple[int, int]:
        return math.ceil(lo * d - _EPS), math.floor(hi * d + _EPS)

    def d_want(p: int) -> tuple[int, int]:
        return math.ceil(p / hi - _EPS), math.floor(p / lo + _EPS)

    repairs = (
        lambda p, d: (p, _into(d, d_want(p), (d, d0))),        # 1. decode downscale
        lambda p, d: (_into(p, p_want(d), (p, p0)), d),        # 1. prefill downscale
        lambda p, d: (_into(p, p_want(d), (p0, p)), d),        # 2. prefill upscale
        lambda p, d: (p, _into(d, d_want(p), (d0, d))),        # 2. decode upscale
        lambda p, d: ((p, _into(d, d_want(p), (d, c.decode_max))) if p > hi * d
                      else (_into(p, p_want(d), (p, c.prefill_max)), d)),   # 3. grow lagging
        lambda p, d: ((_into(p, p_want(d), (c.prefill_min, p)), d) if p > hi * d
                      else (p, _into(d, d_want(p), (c.decode_min, d)))),    # 3. shrink other
    )
    for repair in repairs:
        if ok(p, d):
            break
        p, d = repair(p, d)
    return p, d
