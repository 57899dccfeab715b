"""``MultiBackend``: several served models (and versions of each) behind one ``Backend``.

    backend = MultiBackend({("main", "v1"): h1, ("main", "v2-canary"): h2, ("small", "v1"): h3},
                           ModelRouter(routes, windows))
    async for item in backend.generate(request):     # routed by request.model, lane, length
        ...

Per request::

    route = router.route(request.model, request.lane, prompt + every stage's output,
                         overload_state_of, key=request.request_id,
                         needs=request.needs)                       RouteError → one Failed item
    running[request_id] = backends[(route.model, route.version)]   (cancel finds it there)
    yield Routed(request_id, route.model, route.version, route.reason)   (the served model)
    stream that backend's items, request.model rewritten to the routed model

``overload_state_of`` defaults to the last seen ``ClusterStats.overload_state`` of the model's
versions (the worst of them), refreshed in the background at most every ``state_ttl_s`` (and by
every ``stats()``); a test or an operator may pass its own.

The rest of the protocol: ``model_info()`` is the default model; ``model_infos()`` lists every
served name (``/v1/models``); ``model_info_for(name)`` is what the fronts validate a request for
``name`` against (its tokenizer and vocabulary, and the largest context capability routing can
reach); ``ready`` = every backend ready; ``health`` and ``stats`` are merged, worker ids
prefixed ``model/version/``; ``per_model_stats()`` keeps them apart. ``counts`` tallies the
routes taken ((model, version) → requests), ``reasons`` why.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping

from cluster.api import (ClusterStats, Failed, GenerateRequest, LaneStats, Routed, StreamItem,
                         WorkerHealth)
from cluster.backend import Backend, ModelInfo
from deploy.model_router import ModelRouter, RouteError, RouteReason
from router.plan import OverloadState

Key = tuple[str, str]          # (served model name, version)
_SEVERITY = [s.value for s in OverloadState]   # normal < degraded < batch_paused < interactive_only


def worst_state(states) -> str:
    """The most severe overload state (an unknown one counts as the most severe)."""
    return max(states, key=lambda s: _SEVERITY.index(s) if s in _SEVERITY else len(_SEVERITY),
               default=OverloadState.NORMAL.value)


def needs_tokens(request: GenerateRequest) -> int:
    """Prompt + every stage's appended tokens and output: the context the request may use."""
    later = sum(len(s.append_token_ids) + s.max_tokens for s in request.stages)
    return len(request.prompt_token_ids) + int(request.params.get("max_tokens", 1)) + later


class MultiBackend:
    """A ``cluster.backend.Backend`` over one backend per (model, version); see the module
    docstring. Every model and version the router knows must have a backend."""

    def __init__(self, backends: Mapping[Key, Backend], router: ModelRouter,
                 overload_state_of: Callable[[str], str] | None = None, state_ttl_s: float = 1.0):
        missing = [(m, v) for m, r in router.routes.models.items() for v in r.versions
                   if (m, v) not in backends]
        if missing:
            raise ValueError(f"no backend for {missing}")
        self.backends, self.router = dict(backends), router
        self._own_states = overload_state_of is None
        self.overload_state_of = overload_state_of or self.cached_state
        self.state_ttl_s = state_ttl_s
        self.counts: Counter[Key] = Counter()
        self.reasons: Counter[RouteReason] = Counter()
        self._running: dict[str, Backend] = {}
        self._states: dict[Key, str] = {}
        self._states_at = float("-inf")
        self._refresh: asyncio.Task | None = None

    # ── models ─────────────────────────────────────────────────────────────────────────────
    def _stable(self, model: str) -> Backend:
        return self.backends[(model, next(iter(self.router.routes.models[model].versions)))]

    def _served(self, model: str) -> ModelInfo:
        return dataclasses.replace(self._stable(model).model_info(), name=model)

    def model_info(self) -> ModelInfo:
        return self._served(self.router.default)

    def model_infos(self) -> tuple[ModelInfo, ...]:
        """Every served model (name = the served name, its stable version's folder and window)."""
        return tuple(self._served(m) for m in self.router.routes.models)

    def model_info_for(self, name: str | None) -> ModelInfo | None:
        """What a request for ``name`` (None: the default) is validated against; None if unknown."""
        name = self.router.default if name is None else name
        if name not in self.router.routes.models:
            return None
        info = self._served(name)
        reach = self.router.reachable_context(name)
        widest = max(i.max_model_len for i in self.model_infos())
        return dataclasses.replace(info, max_model_len=min(reach or widest, widest))

    # ── requests ───────────────────────────────────────────────────────────────────────────
    async def generate(self, request: GenerateRequest) -> AsyncIterator[StreamItem]:
        self._maybe_refresh()
        try:
            choice = self.router.route(request.model, request.lane, needs_tokens(request),
                                       self.overload_state_of, key=request.request_id,
                                       needs=request.needs)
        except RouteError as exc:
            yield Failed(request.request_id, exc.kind, exc.message)
            return
        backend = self.backends[(choice.model, choice.version)]
        self.counts[(choice.model, choice.version)] += 1
        self.reasons[choice.reason] += 1
        self._running[request.request_id] = backend
        stream = backend.generate(dataclasses.replace(request, model=choice.model))
        try:
            yield Routed(request.request_id, choice.model, choice.version, choice.reason.value)
            async for item in stream:
                yield item
        finally:
            self._running.pop(request.request_id, None)
            await stream.aclose()

    async def cancel(self, request_id: str, tenant: str) -> bool:
        backend = self._running.get(request_id)
        return False if backend is None else await backend.cancel(request_id, tenant)

    # ── state ──────────────────────────────────────────────────────────────────────────────
    def cached_state(self, model: str) -> str:
        """The worst last-seen overload state of ``model``'s versions ("normal" before any)."""
        return worst_state(s for (m, _), s in self._states.items() if m == model)

    def _maybe_refresh(self) -> None:
        if not self._own_states:
            return
        stale = time.monotonic() - self._states_at > self.state_ttl_s
        if stale and (self._refresh is None or self._refresh.done()):
            self._refresh = asyncio.create_task(self._refresh_quietly())

    async def _refresh_quietly(self) -> None:
        try:
            await self.per_model_stats()
        except Exception:  # noqa: BLE001 - keep the last states; the next request retries
            self._states_at = time.monotonic()

    async def per_model_stats(self) -> dict[Key, ClusterStats]:
        keys = list(self.backends)
        stats = await asyncio.gather(*(self.backends[k].stats() for k in keys))
        self._states = {k: s.overload_state for k, s in zip(keys, stats)}
        self._states_at = time.monotonic()
        return dict(zip(keys, stats))

    async def stats(self) -> ClusterStats:
        return merge_stats(await self.per_model_stats())

    async def health(self) -> tuple[WorkerHealth, ...]:
        keys = list(self.backends)
        parts = await asyncio.gather(*(self.backends[k].health() for k in keys))
        return tuple(dataclasses.replace(h, worker_id=f"{m}/{v}/{h.worker_id}")
                     for (m, v), hs in zip(keys, parts) for h in hs)

    async def ready(self, deep: bool = False) -> bool:
        answers = await asyncio.gather(*(b.ready(deep=deep) for b in self.backends.values()),
                                       return_exceptions=True)
        return all(a is True for a in answers)


def _sum_lanes(parts: list[dict[str, LaneStats]]) -> dict[str, LaneStats]:
    out: dict[str, LaneStats] = {}
    for lanes in parts:
        for lane, s in lanes.items():
            prev = out.get(lane, LaneStats())
            out[lane] = LaneStats(**{f.name: getattr(prev, f.name) + getattr(s, f.name)
                                     for f in dataclasses.fields(LaneStats)})
    return out


def _sum_counts(parts) -> dict[str, int]:
    total: Counter[str] = Counter()
    for p in parts:
        total.update(p)
    return dict(total)


def merge_stats(per: Mapping[Key, ClusterStats]) -> ClusterStats:
    """One ``ClusterStats`` for all: counters summed, per-worker maps keyed ``model/version/id``,
    the overload state the worst of all."""
    def prefixed(field: str) -> dict[str, float]:
        return {f"{m}/{v}/{w}": x for (m, v), s in per.items() for w, x in getattr(s, field).items()}

    stats = list(per.values())
    return ClusterStats(
        running=sum(s.running for s in stats), waiting=sum(s.waiting for s in stats),
        lanes=_sum_lanes([s.lanes for s in stats]),
        workers=tuple(dataclasses.replace(h, worker_id=f"{m}/{v}/{h.worker_id}")
                      for (m, v), s in per.items() for h in s.workers),
        kv_usage=prefixed("kv_usage"), busy_fraction=prefixed("busy_fraction"),
        overload_state=worst_state(s.overload_state for s in stats),
        fallback_actions=_sum_counts([s.fallback_actions for s in stats]),
        kv_transfer_bytes=sum(s.kv_transfer_bytes for s in stats),
        kv_transfers=sum(s.kv_transfers for s in stats),
        kv_transfer_seconds=sum(s.kv_transfer_seconds for s in stats),
        retries=sum(s.retries for s in stats),
        tenants_running=_sum_counts([s.tenants_running for s in stats]),
        prompt_tokens=sum(s.prompt_tokens for s in stats),
        generation_tokens=sum(s.generation_tokens for s in stats),
        size_gate_quantile=min((s.size_gate_quantile for s in stats), default=1.0))
