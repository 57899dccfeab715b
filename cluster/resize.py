"""Growing and shrinking a pool of a running cluster, mixed into ``cluster.controller.Controller``.

    resize(role, n)          one at a time (a lock); n in [1, MAX_POOL_WORKERS]
      grow by k    a free bundle of the pool's placement groups, else a new one-bundle group per
                   worker → start_worker (cluster.workers, as the builder does) → ready and stats
                   within ready_timeout_s → a slot, its loop, the session ring: the scheduler sees
                   it in its next snapshot. All k or none: a failure stops what was started.
      shrink by k  the k least-loaded workers drain: no new work (``WorkerSlot.accepting``; the
                   scheduler's snapshot shows them unhealthy), a prefill worker's queue moves at
                   once; wait (drain_timeout_s) until they run nothing → stop each one's loop;
                   whatever still runs there is prefilled again on the workers that stay (a move,
                   like a dead decode worker's requests but without counting a retry) → close,
                   kill, release its bundle (its placement group goes when no worker is left in it)

A request is never lost or failed by a scale-down: it finishes where it runs, or moves and its
stream goes on. A handoff or local prefill still in flight to a removed worker ends as a move too
(``RequestFlows._join_decode`` / ``_retry(failure=False)``). Errors: ``ClusterError`` INVALID for
a bad role or size, UNAVAILABLE when the cluster is shutting down, cannot resize (built without
``PoolSpecs``) or new workers do not come up in time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from cluster.api import ClusterError, ErrorKind, ResizeResult
from cluster.config import MAX_POOL_WORKERS
from cluster.placements import Placement
from cluster.pools import WorkerSlot
from cluster.tracking import Where
from cluster.workers import PoolSpecs, start_worker
from router.plan import WorkerRole

log = logging.getLogger("tandem.controller")
DRAIN_POLL_S = 0.05
CLOSE_TIMEOUT_S = 5.0          # a removed worker's ``close`` (frees its transport) before the kill
LOOP_STOP_TIMEOUT_S = 5.0


async def _awaitable(ref):
    return await ref


class PoolResizing:
    """``resize`` and what it needs (see the module docstring)."""

    def _init_resizing(self, pools: PoolSpecs | None) -> None:
        self.pools = pools
        self._resize_lock = asyncio.Lock()
        self._next_index: dict[str, int] = {}
        for wid in self.slots:
            prefix, digits = wid.rstrip("0123456789"), wid[len(wid.rstrip("0123456789")):]
            self._next_index[prefix] = max(self._next_index.get(prefix, 0), int(digits or 0) + 1)

    # ---- the public face ------------------------------------------------------------------------
    async def resize(self, role: str, n: int, drain_timeout_s: float | None = None) -> ResizeResult:
        """Grow or shrink the pool of ``role`` ("prefill" | "decode"; on a colocated cluster any of
        them, or "colocated", names the colocated pool) to ``n`` workers. ``drain_timeout_s``
        overrides the config's for this call. Raises ``ClusterError`` (module docstring)."""
        pool = self._pool_role(role)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_POOL_WORKERS:
            raise ClusterError(ErrorKind.INVALID, f"a pool needs between 1 and {MAX_POOL_WORKERS} "
                                                  f"workers, got {n!r}")
        drain_s = self.config.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        if not (isinstance(drain_s, (int, float)) and drain_s >= 0):
            raise ClusterError(ErrorKind.INVALID, f"drain_timeout_s must be >= 0, got {drain_timeout_s!r}")
        if self.pools is None:
            raise ClusterError(ErrorKind.UNAVAILABLE, "this controller was started without pool specs "
                                                      "and cannot resize its pools")
        async with self._resize_lock:
            if self._closing:
                raise ClusterError(ErrorKind.UNAVAILABLE, "the cluster is shutting down")
            begin, before = time.monotonic(), self._pool_slots(pool)
            added: tuple[str, ...] = ()
            removed: tuple[str, ...] = ()
            moved: tuple[str, ...] = ()
            if n > len(before):
                added = await self._grow(pool, n - len(before))
            elif n < len(before):
                removed, moved = await self._shrink(before, len(before) - n, drain_s)
            result = ResizeResult(pool.value, len(before), len(self._pool_slots(pool)), added, removed, moved,
                                  time.monotonic() - begin)
        if added or removed:
            log.warning("resized the %s pool %d -> %d (added %s, removed %s, moved %d requests) in %.1f s",
                        pool.value, result.before, result.after, list(added), list(removed), len(moved),
                        result.seconds)
        return result

    async def worker_handles(self) -> dict[str, Any]:
        """Worker id → actor handle, every worker of the cluster now (the handle's shutdown uses it)."""
        return {wid: s.handle for wid, s in self.slots.items()}

    async def placement_groups(self) -> list:
        """Every placement group the cluster holds now (the builder's and those a resize made)."""
        return self.pools.placements.groups() if self.pools is not None else []

    async def cluster_config(self):
        return self.config

    # ---- which pool ---------------------------------------------------------------------------------
    def _pool_role(self, role: str) -> WorkerRole:
        try:
            asked = WorkerRole(role)
        except ValueError:
            raise ClusterError(ErrorKind.INVALID, f"unknown role {role!r}; a pool is one of "
                                                  f"{[r.value for r in WorkerRole]}") from None
        if self.decode_role is WorkerRole.COLOCATED:
            return WorkerRole.COLOCATED
        if asked is WorkerRole.COLOCATED:
            raise ClusterError(ErrorKind.INVALID, "this cluster has no colocated pool; its pools are "
                                                  "prefill and decode")
        return asked

    def _pool_slots(self, pool: WorkerRole) -> list[WorkerSlot]:
        return [s for s in self.slots.values() if s.role is pool and not s.draining]

    # ---- grow ------------------------------------------------------------------------------------------
    async def _grow(self, pool: WorkerRole, k: int) -> tuple[str, ...]:
        import ray
        from ray.util.placement_group import remove_placement_group

        from cluster.workers import reserve

        spec, book, cfg = self.pools.specs[pool], self.pools.placements, self.config
        places: list[tuple[str, Placement]] = []
        actors: list[tuple[str, Any]] = []
        new_groups = []
        try:
            for _ in range(k):
                wid = f"{spec.prefix}{self._next_index.get(spec.prefix, 0)}"
                self._next_index[spec.prefix] = self._next_index.get(spec.prefix, 0) + 1
                where = book.take(spec.prefix, wid)
                if where is None:                    # no freed bundle of this pool: reserve one
                    new_groups.append(reserve(spec, 1))
                    book.add(spec.prefix, new_groups[-1], 1)
                    where = book.take(spec.prefix, wid)
                places.append((wid, where))
            await asyncio.wait_for(asyncio.gather(*(_awaitable(g.ready()) for g in new_groups)),
                                   cfg.ready_timeout_s)
            actors = [(wid, start_worker(spec, where)) for wid, where in places]
            await asyncio.wait_for(asyncio.gather(*(_awaitable(a.ready.remote()) for _, a in actors)),
                                   cfg.ready_timeout_s)
            stats = await asyncio.wait_for(asyncio.gather(*(_awaitable(a.stats.remote()) for _, a in actors)),
                                           cfg.ready_timeout_s)
        except BaseException as exc:                 # all or nothing: stop what was started
            for _, a in actors:
                ray.kill(a)
            for wid, _ in places:
                group = book.release(wid)
                if group is not None:
                    remove_placement_group(group)
            if isinstance(exc, asyncio.CancelledError):
                raise
            why = (f"not ready within ready_timeout_s={cfg.ready_timeout_s}" if isinstance(exc, asyncio.TimeoutError)
                   else f"{type(exc).__name__}: {exc}")
            raise ClusterError(ErrorKind.UNAVAILABLE, f"could not add {k} {pool.value} workers: {why}") from None
        for (wid, actor), st in zip(actors, stats):
            slot = self.slots[wid] = WorkerSlot(wid, pool, actor, st.kv_capacity_tokens)
            if pool is WorkerRole.PREFILL:
                self.queues[wid] = []
            else:
                self.ring.add(wid)
            self._start_loop(slot)
        self._plan_wake.set()
        return tuple(wid for wid, _ in actors)

    # ---- shrink ----------------------------------------------------------------------------------------
    def _on_worker(self, slot: WorkerSlot) -> set[str]:
        """Requests with work on ``slot`` that a drain waits for: a prefill worker's queue, batch
        and offered handoffs; a decode worker's running requests and handoffs coming in."""
        if slot.role is WorkerRole.PREFILL:
            return {t.id for t in self.tracked.values() if t.prefill_worker == slot.id
                    and t.where in (Where.QUEUED, Where.PREFILL, Where.HANDOFF)}
        return set(slot.running) | {t.id for t in self.tracked.values()
                                    if t.where is Where.HANDOFF and t.decode_worker == slot.id}

    def _shrink_order(self, slot: WorkerSlot):
        """Least loaded first: dead before healthy, fewer requests, fewer tokens; then the one whose
        placement group goes with it (its resources return to Ray), then the newest."""
        book = self.pools.placements
        digits = slot.id[len(slot.id.rstrip("0123456789")):]
        return (slot.healthy, len(self._on_worker(slot)), slot.context_tokens + slot.queued_tokens,
                not book.frees_group(slot.id), -int(digits or 0))

    async def _shrink(self, slots: list[WorkerSlot], k: int, drain_s: float) -> tuple[tuple[str, ...], tuple[str, ...]]:
        victims = sorted(slots, key=self._shrink_order)[:k]
        for s in victims:
            s.draining = True
            self.ring.remove(s.id)
            if s.role is WorkerRole.PREFILL:
                self._requeue_all(s)
        self._plan_wake.set()
        until = time.monotonic() + drain_s
        while time.monotonic() < until and any(self._on_worker(s) for s in victims):
            await asyncio.sleep(min(DRAIN_POLL_S, max(0.0, until - time.monotonic())))
        moved: list[str] = []
        for s in victims:
            moved += await self._retire(s)
        return tuple(s.id for s in victims), tuple(moved)

    async def _retire(self, slot: WorkerSlot) -> list[str]:
        """Stop ``slot``'s loop, move what still runs there, remove it, stop its actor."""
        import ray
        from ray.util.placement_group import remove_placement_group

        loop_task = self._loops.pop(slot.id, None)
        if loop_task is not None:
            loop_task.cancel()
            await asyncio.wait({loop_task}, timeout=LOOP_STOP_TIMEOUT_S)
        if slot.role is WorkerRole.PREFILL:        # queued, or in a batch that nobody awaits now
            left = [t for t in self.tracked.values() if t.prefill_worker == slot.id
                    and t.where in (Where.QUEUED, Where.PREFILL)]
        else:
            left = [self.tracked[r] for r in slot.running if r in self.tracked]
        slot.running.clear()
        slot.context_tokens = slot.queued_tokens = 0
        del self.slots[slot.id]
        self.queues.pop(slot.id, None)
        for t in left:
            self._move(t, f"worker {slot.id} was removed by a scale-down before the request finished")
        try:
            await slot.call("close", timeout_s=min(CLOSE_TIMEOUT_S, self.config.step_timeout_s))
        except Exception:                            # noqa: BLE001 - it is killed next either way
            pass
        ray.kill(slot.handle)
        group = self.pools.placements.release(slot.id)
        if group is not None:
            remove_placement_group(group)
        return [t.id for t in left]
