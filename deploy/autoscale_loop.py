"""The autoscaler on a live cluster: sample stats, close a window every interval, decide, apply.

    run_autoscaler(backend, policy, interval_s, on_decision)      the loop (asyncio, until cancelled)

        every sample_s     stats = await backend.stats() (with a timeout) → window.observe_stats
        every interval_s   result = window.close(now) → policy.decide(result.signals, now)
                           → on_decision(result, decision)      (awaited if it returns an awaitable)

The serving app wires it with ``LiveAutoscaler``::

    autoscaler = LiveAutoscaler(handle, config.autoscale, config.autoscale_interval_s,
                                resize=handle.resize)
    fronts get autoscaler.backend     ← the handle, with every stream item also fed to the window
    mount_autoscale_route(app, autoscaler)                 GET /v1/autoscale (JSON, API key)
    autoscaler.start()  ...  await autoscaler.stop()       on the serving event loop

Each decision goes through ``deploy.autoscale_ray.apply``: in dry run (the default) it is only
logged and kept for ``/v1/autoscale``; otherwise ``resize(pool, n)`` carries it out
(``ClusterHandle.resize``: new workers for a scale-up; for a scale-down the least-loaded workers
drain, their requests finish or move, nothing fails). The loop awaits the resize, so no window
closes and nothing is sampled while a pool changes; the next window sees the new counts. A
``LiveAutoscaler`` without ``resize`` refuses ``dry_run=False``.

Failures never stop the loop: a stats call that fails or times out is a missed sample, a window
without samples is skipped (logged), and an ``on_decision`` that raises is logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cluster.api import ClusterStats, GenerateRequest, StreamItem, WorkerHealth
from cluster.backend import Backend, ModelInfo
from deploy.autoscale import AutoscalePolicy
from deploy.autoscale_config import AutoscaleConfig, ScaleDecision
from deploy.autoscale_ray import Resize, apply
from deploy.autoscale_window import SignalWindow, WindowSignals

__all__ = ["LiveAutoscaler", "SignalWindow", "TappedBackend", "WindowSignals",
           "mount_autoscale_route", "run_autoscaler"]

log = logging.getLogger(__name__)
OnDecision = Callable[[WindowSignals, ScaleDecision], Awaitable[None] | None]
DEFAULT_SAMPLE_S = 2.0
STATS_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


async def _sample(backend: Backend, window: SignalWindow, timeout_s: float) -> None:
    try:
        window.observe_stats(await asyncio.wait_for(backend.stats(), timeout_s))
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a missed sample; the next one may work
        log.warning("autoscale: stats sample failed: %s: %s", type(exc).__name__, exc)


async def run_autoscaler(backend: Backend, policy: AutoscalePolicy, interval_s: float,
                         on_decision: OnDecision, *, window: SignalWindow | None = None,
                         sample_s: float | None = None, stats_timeout_s: float = STATS_TIMEOUT_S,
                         clock: Callable[[], float] = time.monotonic) -> None:
    """Decide once per ``interval_s`` from the stats sampled every ``sample_s`` (default
    ``min(interval_s, 2 s)``) and the items fed to ``window`` meanwhile. Runs until cancelled."""
    if interval_s <= 0:
        raise ValueError("interval_s must be positive")
    sample_s = min(interval_s, sample_s or DEFAULT_SAMPLE_S)
    window = window or SignalWindow(clock())
    next_close = clock() + interval_s
    while True:
        await _sample(backend, window, min(stats_timeout_s, interval_s))
        now = clock()
        if now >= next_close:
            next_close = now + interval_s
            result = window.close(now)
            if result is None:
                log.warning("autoscale: no stats in the last %.1f s; no decision", interval_s)
            else:
                decision = policy.decide(result.signals, now)
                try:
                    done = on_decision(result, decision)
                    if inspect.isawaitable(done):
                        await done
                except Exception:  # noqa: BLE001 - a reporting bug must not stop the loop
                    log.exception("autoscale: on_decision failed")
        await asyncio.sleep(max(0.0, min(sample_s, next_close - clock())))


class TappedBackend:
    """A ``Backend`` that also hands every item of every stream to ``tap`` (which must not block;
    an exception in it is logged, never seen by the stream). Everything else is delegated."""

    def __init__(self, backend: Backend, tap: Callable[[StreamItem], None]):
        self._backend, self._tap = backend, tap

    def model_info(self) -> ModelInfo:
        return self._backend.model_info()

    async def generate(self, request: GenerateRequest) -> AsyncIterator[StreamItem]:
        stream = self._backend.generate(request)
        try:
            async for item in stream:
                try:
                    self._tap(item)
                except Exception:  # noqa: BLE001
                    log.exception("autoscale: tap failed")
                yield item
        finally:
            await stream.aclose()          # closing early cancels the request (Backend contract)

    async def cancel(self, request_id: str, tenant: str) -> bool:
        return await self._backend.cancel(request_id, tenant)

    async def health(self) -> tuple[WorkerHealth, ...]:
        return await self._backend.health()

    async def ready(self, deep: bool = False) -> bool:
        return await self._backend.ready(deep)

    async def stats(self) -> ClusterStats:
        return await self._backend.stats()


def bundle(num_cpus: float, num_gpus: float = 0.0) -> dict[str, float]:
    """A Ray resource bundle for one replica."""
    return {"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {})}


class LiveAutoscaler:
    """The loop, its window and its last ``keep`` decisions, for one serving replica.

    ``resize(pool, n)`` (sync or async; ``ClusterHandle.resize`` in the serving app) carries
    out decisions when ``config.dry_run`` is False; each report entry records what it returned
    (``resized``) and any error (``errors``)."""

    def __init__(self, backend: Backend, config: AutoscaleConfig, interval_s: float, *,
                 resize: Resize | None = None, prefill_bundle: Mapping[str, float] | None = None,
                 decode_bundle: Mapping[str, float] | None = None, sample_s: float | None = None,
                 keep: int = 32, clock: Callable[[], float] = time.monotonic):
        if not config.dry_run and resize is None:
            raise ValueError("autoscale.dry_run=false needs a pool-resize callback (deploy.app passes "
                             "ClusterHandle.resize); without one keep dry_run=true")
        self.config, self.interval_s, self._sample_s, self._clock = config, interval_s, sample_s, clock
        self._raw, self._resize = backend, resize
        self._bundles = (dict(prefill_bundle or bundle(1.0)), dict(decode_bundle or bundle(1.0)))
        self.policy = AutoscalePolicy(config)
        self.window = SignalWindow(clock())
        self.backend = TappedBackend(backend, self.window.observe_item)
        self._decisions: deque[dict] = deque(maxlen=keep)
        self.windows = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the loop on the running event loop (call from inside it)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(run_autoscaler(
                self._raw, self.policy, self.interval_s, self.on_decision, window=self.window,
                sample_s=self._sample_s, clock=self._clock))

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=timeout_s)

    async def on_decision(self, window: WindowSignals, decision: ScaleDecision) -> None:
        s = window.signals
        log.info("autoscale window %.1fs: queue p90 %.3fs (%s), TTFT %s, predicted %s, TPOT %s, "
                 "KV %.2f, busy P %.2f D %.2f, replicas %d:%d",
                 window.end_s - window.start_s, s.queue_wait_p90_s, window.queue_wait_source,
                 s.ttft_attainment, s.predicted_ttft_attainment, s.tpot_attainment, s.kv_usage,
                 s.prefill_busy, s.decode_busy, s.prefill_replicas, s.decode_replicas)
        outcome = await apply(decision, self._resize or _no_resize, *self._bundles)
        self.windows += 1
        self._decisions.append({
            "at": time.time(), "window_s": round(window.end_s - window.start_s, 3),
            "stats_samples": window.stats_samples, "stages": window.stages,
            "decisions": window.decisions, "queue_wait_source": window.queue_wait_source,
            "signals": dataclasses.asdict(s),
            "decision": {**dataclasses.asdict(decision), "reasons": list(decision.reasons),
                         "changed": decision.changed},
            "applied": outcome.applied, "resized": [_jsonable(r) for r in outcome.results],
            "errors": list(outcome.errors)})

    def report(self) -> dict:
        """The ``/v1/autoscale`` body: settings and the last decisions, oldest first."""
        return {"object": "tandem.autoscale", "dry_run": self.config.dry_run,
                "interval_s": self.interval_s, "windows": self.windows,
                "running": self._task is not None and not self._task.done(),
                "config": self.config.model_dump(mode="json"), "decisions": list(self._decisions)}


def _jsonable(result: Any) -> Any:
    """A resize result for the JSON report (``cluster.api.ResizeResult`` is a dataclass)."""
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    return result if isinstance(result, (str, int, float, bool, type(None), list, dict)) else repr(result)


def _no_resize(pool: str, n: int) -> None:
    raise RuntimeError("no pool-resize callback")        # unreachable: dry run is enforced


def mount_autoscale_route(app: FastAPI, autoscaler: LiveAutoscaler) -> None:
    """Add ``GET /v1/autoscale`` to an app from ``deploy.openai_api.make_app`` (API key as there)."""
    front = app.state.front

    @app.get("/v1/autoscale")
    async def autoscale(request: Request):
        front.tenant(request)
        return JSONResponse(autoscaler.report())
