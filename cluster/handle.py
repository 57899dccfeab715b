"""``ClusterHandle``: the ``cluster.backend.Backend`` over the controller actor.

Returned by ``cluster.builder.build_cluster``; a Serve replica or another process gets one with
``ClusterHandle.attach(name)``. Every call has a deadline; a stream the caller closes early
cancels its request on the controller (which frees its KV on both sides).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from cluster.api import (ClusterStats, ErrorKind, Failed, Finished, GenerateRequest, StreamItem,
                         WorkerHealth)
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
        info = ray.get(controller.model_info.remote(), timeout=timeout_s)
        return cls(controller, info)

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

    def run(self, coro, timeout_s: float | None = None):
        """Run a coroutine of this handle from synchronous code (tests, the demo)."""
        return asyncio.run(asyncio.wait_for(coro, timeout_s) if timeout_s else coro)

    def shutdown(self, timeout_s: float = CALL_TIMEOUT_S) -> None:
        """Stop the controller and the workers (and Ray, if the builder started it)."""
        import ray
        from ray.util.placement_group import remove_placement_group

        try:
            ray.get(self.controller.shutdown.remote(), timeout=timeout_s)
        except Exception:
            pass
        for a in self.workers.values():
            try:
                ray.get(a.close.remote(), timeout=timeout_s)
            except Exception:
                pass
        for a in [self.controller, *self.workers.values()]:
            ray.kill(a)
        for pg in self.groups:
            remove_placement_group(pg)
        if self.owns_ray:
            ray.shutdown()
