"""Apply a ``ScaleDecision`` to a Ray cluster: the thin, impure end of ``deploy.autoscale``.

    decision.dry_run      → log it, touch nothing
    unchanged             → nothing
    otherwise             → request_resources(bundles for the whole target), then
                            resize(pool, n) for each pool whose count changes

``ray.autoscaler.sdk.request_resources`` replaces the previous request rather than adding to
it, so the bundles always describe every replica of both pools; asking first lets nodes come up
while the pools resize. ``resize`` is the caller's pool-resize callback (an actor-pool or Serve
deployment update); it owns draining decode replicas that still hold KV.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from deploy.autoscale_config import ScaleDecision

log = logging.getLogger(__name__)

Resize = Callable[[str, int], None]


def bundles_for(decision: ScaleDecision, prefill_bundle: Mapping[str, float],
                decode_bundle: Mapping[str, float]) -> list[dict[str, float]]:
    """One resource bundle per target replica, prefill first."""
    return ([dict(prefill_bundle)] * decision.prefill_replicas
            + [dict(decode_bundle)] * decision.decode_replicas)


def apply(decision: ScaleDecision, resize: Resize, prefill_bundle: Mapping[str, float],
          decode_bundle: Mapping[str, float]) -> bool:
    """Carry out ``decision``; True if anything was requested or resized."""
    summary = (f"prefill {decision.current_prefill}->{decision.prefill_replicas}, "
               f"decode {decision.current_decode}->{decision.decode_replicas}: "
               + "; ".join(decision.reasons))
    if decision.dry_run:
        log.info("autoscale (dry run) %s", summary)
        return False
    if not decision.changed:
        log.debug("autoscale: no change; %s", summary)
        return False
    from ray.autoscaler.sdk import request_resources

    log.info("autoscale %s", summary)
    request_resources(bundles=bundles_for(decision, prefill_bundle, decode_bundle))
    for pool, target, current in (("prefill", decision.prefill_replicas, decision.current_prefill),
                                  ("decode", decision.decode_replicas, decision.current_decode)):
        if target != current:
            resize(pool, target)
    return True
