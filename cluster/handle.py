"""``ClusterHandle``: the ``cluster.backend.Backend`` over the controller actor.

Returned by ``cluster.builder.build_cluster``; a Serve replica or another process gets one with
``ClusterHandle.attach(name)``. Every call has a deadline; a stream the caller closes early
cancels its request on the controller (which frees its KV on both sides). ``resize(role, n)``
grows or shrinks a pool while the cluster serves (``cluster.resize``); any handle may call it,
the controller runs one resize at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from cluster.api import (ClusterError, ClusterStats, ErrorKind, Failed, Finished, GenerateRequest,
                         ResizeResult, StreamItem, WorkerHealth)
from cluster.backend import ModelInfo

CALL_TIMEOUT_S = 30.0


class ClusterHandle:
    def __init__(self, controller: Any, info: ModelInfo, workers: dict[str, Any] | None = None,
                 groups: list | None = None, owns_ray: bool = False, config: Any = None):
        self.controller, self.info = controller, info
        self.workers, self.groups = workers or {}, groups or []
        self.owns_ray, self.config = owns_ray, config

    @classmethod
    def attach(cls, controller_name: str, timeout_s: float = CALL_TIMEOUT_S) -> "ClusterHandle":
        """A handle on a running cluster's controller (named at build time)."""
        import ray

        controller = ray.get_actor(controller_name)
        info, config = ray.get([controller.model_info.remote(), controller.cluster_config.remote()],
                               timeout=timeout_s)
        return cls(controller, info, config=config)

    def model_info(self) -> ModelInfo:
        return self.info

    async def generate(self, request: GenerateRequest) -> AsyncIterator[StreamItem]:
        import ray

        done = False
        try:
            stream = self.controller.generate.options(num_returns="streaming").remote(request)
            async for ref in stream:
                item = await ref
                done = isinstance(item, (Finished, Failed))
                yield item
                if done:
                    return
            done = True
            yield Failed(request.request_id, ErrorKind.INTERNAL, "the stream ended without a result")
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            done = True
            yield Failed(request.request_id, ErrorKind.UNAVAILABLE, f"the controller is unavailable: {exc}")
        finally:
            if not done:
                try:
                    await asyncio.wait_for(self._ref(self.controller.cancel.remote(request.request_id,
                                                                                    request.tenant)),
                                           CALL_TIMEOUT_S)
                except Exception:
                    pass

    @staticmethod
    async def _ref(ref):
        return await ref

    async def _call(self, method: str, *args, timeout_s: float = CALL_TIMEOUT_S):
        return await asyncio.wait_for(self._ref(getattr(self.controller, method).remote(*args)), timeout_s)

    async def cancel(self, request_id: str, tenant: str) -> bool:
        return await self._call("cancel", request_id, tenant)

    async def health(self) -> tuple[WorkerHealth, ...]:
        return await self._call("health")

    async def ready(self, deep: bool = False) -> bool:
        try:
            return await self._call("ready", deep, timeout_s=CALL_TIMEOUT_S * (4 if deep else 1))
        except Exception:
            return False

    async def stats(self) -> ClusterStats:
        return await self._call("stats")

    async def resize(self, role: str, n: int, drain_timeout_s: float | None = None,
                     timeout_s: float | None = None) -> ResizeResult:
        """Grow or shrink the pool of ``role`` ("prefill" | "decode"; on a colocated cluster either
        names the colocated pool) to ``n`` workers and return what changed.

        Growing starts workers like the builder did and waits for them (``ready_timeout_s``).
        Shrinking drains the least-loaded workers: no new work, their requests finish there
        within ``drain_timeout_s`` (the config's unless given) or are prefilled again on the
        workers that stay; no request fails because of it. A pool never goes below 1 worker.
        Raises ``ClusterError``: INVALID (``n`` outside [1, 256], a role the cluster lacks),
        UNAVAILABLE (workers did not come up, shutting down), TIMEOUT (no answer by
        ``timeout_s``, default: the config's ready and drain deadlines plus margins; the resize
        may still complete).
        """
        import ray

        if timeout_s is None:
            cfg = self.config
            ready, drain = (cfg.ready_timeout_s, cfg.drain_timeout_s) if cfg is not None else (300.0, 60.0)
            if isinstance(drain_timeout_s, (int, float)):    # anything else: the controller says INVALID
                drain = max(0.0, drain_timeout_s)
            timeout_s = 3 * ready + drain + 4 * CALL_TIMEOUT_S     # group, actor, stats; drain, close
        try:
            result = await self._call("resize", role, n, drain_timeout_s, timeout_s=timeout_s)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, ClusterError):
                raise exc.cause from None
            raise
        except asyncio.TimeoutError:
            raise ClusterError(ErrorKind.TIMEOUT, f"no answer to resize({role!r}, {n}) within {timeout_s:.0f} s; "
                                                  "it may still complete") from None
        self.workers = await self._call("worker_handles")
        return result

    def run(self, coro, timeout_s: float | None = None):
        """Run a coroutine of this handle from synchronous code (tests, the demo)."""
        return asyncio.run(asyncio.wait_for(coro, timeout_s) if timeout_s else coro)

    def shutdown(self, timeout_s: float = CALL_TIMEOUT_S) -> None:
        """Stop the controller and the workers (and Ray, if the builder started it)."""
        import ray
        from ray.util.placement_group import remove_placement_group

        workers, groups = dict(self.workers), list(self.groups)
        try:
            ray.get(self.controller.shutdown.remote(), timeout=timeout_s)
            live, groups = ray.get([self.controller.worker_handles.remote(),   # resizes change both
                                    self.controller.placement_groups.remote()], timeout=timeout_s)
            workers.update(live)
        except Exception:
            pass
        for a in workers.values():
            try:
                ray.get(a.close.remote(), timeout=timeout_s)
            except Exception:
                pass
        for a in [self.controller, *workers.values()]:
            ray.kill(a)
        for pg in groups:
            try:
                remove_placement_group(pg)
            except Exception:
                pass
        if self.owns_ray:
            ray.shutdown()
