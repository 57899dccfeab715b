"""Apply a ``ScaleDecision`` to a Ray cluster: the thin, impure end of ``deploy.autoscale``.

    outcome = await apply(decision, resize, prefill_bundle, decode_bundle)

    decision.dry_run      → log it, touch nothing
    unchanged             → nothing
    otherwise             → request_resources(bundles for the whole target), then
                            resize(pool, n) for each pool whose count changes, prefill first

``ray.autoscaler.sdk.request_resources`` replaces the previous request rather than adding to
it, so the bundles always describe every replica of both pools; asking first lets nodes come up
while the pools resize. ``resize`` is the pool-resize callback, sync or async (the serving app
passes ``ClusterHandle.resize``, which starts workers for a scale-up and drains the removed
workers' requests for a scale-down); its return value is kept in the outcome. A resize that
raises is logged and recorded, and the other pool is still resized.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from deploy.autoscale_config import ScaleDecision

log = logging.getLogger(__name__)

Resize = Callable[[str, int], Any]          # (pool, n) → a result, or an awaitable of one


@dataclass(frozen=True)
class Applied:
    """What ``apply`` did: ``applied`` is True if anything was requested or resized; ``results``
    holds each resize callback's return value, ``errors`` one line per resize that raised."""

    applied: bool
    results: tuple[Any, ...] = ()
    errors: tuple[str, ...] = ()


def bundles_for(decision: ScaleDecision, prefill_bundle: Mapping[str, float],
                decode_bundle: Mapping[str, float]) -> list[dict[str, float]]:
    """One resource bundle per target replica, prefill first."""
    return ([dict(prefill_bundle)] * decision.prefill_replicas
            + [dict(decode_bundle)] * decision.decode_replicas)


async def apply(decision: ScaleDecision, resize: Resize, prefill_bundle: Mapping[str, float],
                decode_bundle: Mapping[str, float]) -> Applied:
    """Carry out ``decision`` (see the module docstring)."""
    summary = (f"prefill {decision.current_prefill}->{decision.prefill_replicas}, "
               f"decode {decision.current_decode}->{decision.decode_replicas}: "
               + "; ".join(decision.reasons))
    if decision.dry_run:
        log.info("autoscale (dry run) %s", summary)
        return Applied(False)
    if not decision.changed:
        log.debug("autoscale: no change; %s", summary)
        return Applied(False)
    from ray.autoscaler.sdk import request_resources

    log.info("autoscale %s", summary)
    request_resources(bundles=bundles_for(decision, prefill_bundle, decode_bundle))
    results, errors = [], []
    for pool, target, current in (("prefill", decision.prefill_replicas, decision.current_prefill),
                                  ("decode", decision.decode_replicas, decision.current_decode)):
        if target == current:
            continue
        try:
            result = resize(pool, target)
            if inspect.isawaitable(result):
                result = await result
            results.append(result)
        except Exception as exc:  # noqa: BLE001 - the other pool may still resize
            log.warning("autoscale: resize(%s, %d) failed: %s: %s", pool, target, type(exc).__name__, exc)
            errors.append(f"{pool} -> {target}: {type(exc).__name__}: {exc}")
    return Applied(True, tuple(results), tuple(errors))
