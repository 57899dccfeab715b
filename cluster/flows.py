"""The paths a request takes through the pools, mixed into ``cluster.controller.Controller``.

    queued ─prefill loop─▶ prefill_batch ─▶ first token out ─handoff task─▶ decode.start
           └─(colocated / cached session turn)─▶ start_local on the decode worker
    decode loop: step_report ─▶ tokens out; a finished stage ─▶ next stage (same decode worker,
    prefix cache) after its tool delay, or Finished
    failures: a dead worker or a failed transfer ─▶ prefill again (bounded by max_retries)
    moves: a preemption, or a worker that a resize removes ─▶ prefill again (not a failure: no
    retry is counted); a draining worker (``WorkerSlot.accepting`` False) gets no new work

State lives on the controller (``self.tracked``, ``self.slots``, ``self.queues``); these methods
run as asyncio tasks of its event loop, one at a time between awaits.
"""

from __future__ import annotations

import asyncio
import logging
import time

from cluster.api import ErrorKind, StageDone
from cluster.pools import WorkerDied, WorkerSlot
from cluster.tracking import Tracked, Where
from decode_worker.worker import DecodeStep
from kv_transfer.handoff import Decision as HandoffDecision
from prefill_worker.messages import PrefillError, PrefillItem, PrefillResult
from router.placement import pick_decode

log = logging.getLogger("tandem.controller")


class RequestFlows:
    """Prefill, handoff, decode, stage and failure handling (see the module docstring)."""

    # ---- prefill ----------------------------------------------------------------------------------
    def _take_batch(self, slot: WorkerSlot) -> list[Tracked]:
        q = self.queues[slot.id]
        live = [self.tracked[r] for r in q if r in self.tracked and self.tracked[r].where is Where.QUEUED]
        live.sort(key=lambda t: (t.admission != "admitted", t.state.ttft_deadline_s, t.arrival))
        batch, tokens = [], 0
        for t in live:
            if batch and tokens + len(t.tokens) > self.config.prefill_batch_tokens:
                break
            batch.append(t)
            tokens += len(t.tokens)
        taken = {t.id for t in batch}
        self.queues[slot.id] = [r for r in q if r in self.tracked and r not in taken
                                and self.tracked[r].where is Where.QUEUED]
        return batch

    async def _prefill_loop(self, slot: WorkerSlot) -> None:
        cfg = self.config
        while True:
            if not slot.accepting or not self.queues[slot.id]:
                slot.wake.clear()
                if not slot.accepting:
                    self._requeue_all(slot)
                try:
                    await asyncio.wait_for(slot.wake.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
                continue
            batch = self._take_batch(slot)
            if not batch:
                continue
            for t in batch:
                t.where = Where.PREFILL
            items = [PrefillItem(t.id, tuple(t.prompt_for_prefill()), t.params()) for t in batch]
            try:
                out = await slot.call("prefill_batch", items, cfg.prefill_timeout_s,
                                      timeout_s=cfg.prefill_timeout_s + 5)
            except WorkerDied:
                for t in batch:
                    slot.queued_tokens -= len(t.tokens)
                    await self._retry(t, f"prefill worker {slot.id} died", failure=not slot.draining)
                continue
            except Exception as exc:               # the call itself failed: fail its requests
                for t in batch:
                    slot.queued_tokens -= len(t.tokens)
                    self._fail(t.id, ErrorKind.INTERNAL, f"prefill failed: {type(exc).__name__}: {exc}")
                continue
            slot.busy(out.seconds)
            self._observe(out.steps)
            for t, o in zip(batch, out.outcomes):
                slot.queued_tokens -= len(t.tokens)
                self._after_prefill(slot, t, o)

    def _after_prefill(self, slot: WorkerSlot, t: Tracked, o: PrefillResult | PrefillError) -> None:
        if isinstance(o, PrefillError):
            self._fail(t.id, ErrorKind.INVALID, o.message)
            return
        if t.cancelled or t.id not in self.tracked:
            if o.ticket is not None:
                asyncio.get_running_loop().create_task(self._withdraw(slot, t.id))
            return
        self._token_out(t, [o.first_token], o.first_text)
        if o.finished:
            self._stage_end(t, o.finish_reason or "stop")
            return
        t.where = Where.HANDOFF
        asyncio.get_running_loop().create_task(self._handoff(slot, t, o))

    async def _withdraw(self, slot: WorkerSlot, rid: str) -> None:
        try:
            await slot.call("withdraw", rid, timeout_s=self.config.step_timeout_s)
        except WorkerDied:
            pass

    def _requeue_all(self, slot: WorkerSlot) -> None:
        q, self.queues[slot.id] = self.queues[slot.id], []
        slot.queued_tokens = 0
        for rid in q:
            t = self.tracked.get(rid)
            if t is not None and t.where is Where.QUEUED:
                self._enqueue(t)

    # ---- prefill on the decode worker ---------------------------------------------------------------
    async def _colocated_start(self, t: Tracked) -> None:
        wid = t.decode_worker
        if not self._accepting(wid):
            wid = pick_decode((self._load(s) for s in self.slots.values() if s.role is self.decode_role),
                              len(t.tokens) + t.stage_max_tokens())
        if wid is None:
            await asyncio.sleep(0.1)                # every worker is restarting: the retry budget decides
            await self._retry(t, "no healthy worker")
            return
        t.decode_worker = t.prefill_worker = wid
        await self._start_local(self.slots[wid], t, list(t.tokens))

    async def _session_start(self, t: Tracked) -> None:
        """A session turn: prefill on its decode worker if that worker caches most of the prompt."""
        slot = self.slots.get(t.decode_worker or "")
        if slot is None or not slot.accepting:      # removed or draining since it was queued
            self._queue_prefill(t)
            return
        try:
            cached = await slot.call("cached_prefix_tokens", list(t.tokens), timeout_s=self.config.step_timeout_s)
        except Exception:
            cached = 0
        if t.id not in self.tracked:
            return
        if slot.accepting and cached >= self.config.local_prefill_fraction * len(t.tokens):
            self.totals["session_local_prefills"] += 1
            await self._start_local(slot, t, list(t.tokens))
        else:
            self._queue_prefill(t)

    async def _start_local(self, slot: WorkerSlot, t: Tracked, tokens: list[int]) -> None:
        """Run ``t``'s current prefill on ``slot`` (prefix cache first); tokens arrive as decode events."""
        try:
            await slot.call("start_local", t.id, tokens, t.params(), timeout_s=self.config.step_timeout_s)
        except WorkerDied:
            await self._retry(t, f"worker {slot.id} died before the prefill started", failure=not slot.draining)
            return
        except Exception as exc:
            self._fail(t.id, ErrorKind.INVALID, f"stage {t.stage}: {exc}")
            return
        if t.cancelled or t.id not in self.tracked:
            await self._abort_on(slot, t.id)
            return
        t.where = Where.DECODE
        self._join_decode(slot, t)

    # ---- handoff -----------------------------------------------------------------------------------
    async def _handoff(self, pslot: WorkerSlot, t: Tracked, o: PrefillResult) -> None:
        cfg = self.config
        dw = t.decode_worker
        until = time.monotonic() + min(cfg.handoff_deadline_s, o.ticket.remaining()) * 0.8
        while not self._accepting(dw):
            dw = pick_decode((self._load(s) for s in self.slots.values() if s.role is self.decode_role),
                             len(t.tokens) + t.stage_max_tokens())
            if dw is not None or time.monotonic() > until or t.cancelled:
                break
            await asyncio.sleep(0.05)               # every decode worker is restarting: wait, bounded
        if dw is None:
            await self._withdraw(pslot, t.id)
            await self._retry(t, "no healthy decode worker")
            return
        slot = self.slots[dw]
        t.decode_worker = dw
        num_prompt = len(t.tokens) - 1                     # the first token is not prompt
        params = t.params()
        params["max_tokens"] = params["max_tokens"] + 1   # the engine counts the handed-over first token
        try:
            res = await slot.call("start", o.ticket, list(t.tokens), num_prompt, params,
                                  timeout_s=cfg.pull_deadline_s * (cfg.max_retries + 2) + 5)
        except WorkerDied:
            await self._withdraw(pslot, t.id)
            await self._retry(t, f"decode worker {dw} died during the handoff", failure=not slot.draining)
            return
        except Exception as exc:
            await self._withdraw(pslot, t.id)
            self._fail(t.id, ErrorKind.INTERNAL, f"handoff failed: {type(exc).__name__}: {exc}")
            return
        asyncio.get_running_loop().create_task(self._sweep(pslot))    # free the confirmed offer now
        if res.decision is None:
            self._account_transfer(o.ticket.nbytes, res.seconds, len(t.tokens) - 1)
            t.handoff_s += res.seconds
            if t.cancelled or t.id not in self.tracked:
                await self._abort_on(slot, t.id)
                return
            t.where = Where.DECODE
            self._join_decode(slot, t)
        elif res.decision is HandoffDecision.RECOMPUTE or pslot.draining or slot.draining:
            await self._retry(t, f"KV transfer failed: {'; '.join(res.errors)[:200]}",
                              failure=not (pslot.draining or slot.draining))   # a scale-down: a move
        else:
            self._fail(t.id, ErrorKind.INTERNAL, f"KV transfer failed: {'; '.join(res.errors)[:200]}")

    async def _sweep(self, slot: WorkerSlot) -> None:
        try:
            await slot.call("sweep", timeout_s=self.config.step_timeout_s)
        except Exception:
            pass

    def _account_transfer(self, nbytes: int, seconds: float, tokens: int) -> None:
        kv = self.kv
        kv["bytes"] += nbytes
        kv["count"] += 1
        kv["seconds"] += seconds
        kv["bytes_per_token"] = nbytes / max(tokens, 1)

    # ---- decode ------------------------------------------------------------------------------------
    def _join_decode(self, slot: WorkerSlot, t: Tracked) -> None:
        """``t`` now runs on ``slot``; if a resize removed ``slot`` meanwhile, prefill it again."""
        if self.slots.get(slot.id) is not slot:
            self._move(t, f"worker {slot.id} was removed while the request started there")
            return
        slot.running.add(t.id)
        slot.context_tokens += len(t.tokens) + t.stage_max_tokens()
        slot.wake.set()

    def _leave_decode(self, slot: WorkerSlot, t: Tracked) -> None:
        if t.id in slot.running:
            slot.running.discard(t.id)
            slot.context_tokens = max(0, slot.context_tokens - len(t.tokens) - t.stage_max_tokens())

    async def _abort_on(self, slot: WorkerSlot, rid: str) -> None:
        try:
            await slot.call("abort", rid, timeout_s=self.config.step_timeout_s)
        except WorkerDied:
            pass

    async def _decode_loop(self, slot: WorkerSlot) -> None:
        while True:
            if not slot.healthy or not slot.running:
                slot.wake.clear()
                if not slot.healthy and slot.running:
                    for rid in list(slot.running):
                        t = self.tracked.get(rid)
                        slot.running.discard(rid)
                        if t is not None:
                            await self._retry(t, f"decode worker {slot.id} died", failure=not slot.draining)
                    slot.context_tokens = 0
                try:
                    await asyncio.wait_for(slot.wake.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
                continue
            try:
                rep: DecodeStep = await slot.call("step_report", timeout_s=self.config.step_timeout_s)
            except WorkerDied:
                continue
            except Exception:
                log.exception("decode step on %s failed", slot.id)
                await asyncio.sleep(0.05)
                continue
            if rep.record is not None:
                slot.busy(rep.record.seconds)
                self._observe([rep.record])
            for ev in rep.events:
                t = self.tracked.get(ev.request_id)
                if t is None or t.where is not Where.DECODE or t.decode_worker != slot.id:
                    continue                        # gone, or moved to another worker meanwhile
                self._token_out(t, [ev.token], ev.text)
                if ev.finished:
                    self._leave_decode(slot, t)
                    self._stage_end(t, ev.finish_reason or "stop")

    def _token_out(self, t: Tracked, ids: list[int], text: str) -> None:
        self.totals["generation_tokens"] += len(ids)
        self._emit(t.id, t.tokens_out(ids, text, time.monotonic()))

    # ---- stages --------------------------------------------------------------------------------------
    def _stage_end(self, t: Tracked, reason: str) -> None:
        done: StageDone = t.stage_finished(reason, time.monotonic())
        self._emit(t.id, done)
        if t.has_next_stage and reason != "abort":
            asyncio.get_running_loop().create_task(self._next_stage(t))
        else:
            self._finish(t)

    async def _next_stage(self, t: Tracked) -> None:
        await asyncio.sleep(t.req.stages[t.stage].tool_delay_s)     # spec of stage t.stage + 1
        if t.id not in self.tracked:
            return
        tokens = t.begin_next_stage(time.monotonic())
        slot = self.slots.get(t.decode_worker or "")
        if slot is None or not slot.accepting:      # dead, draining or removed: prefill elsewhere
            t.restart_prefill(failure=False)
            self._enqueue(t)
            return
        await self._start_local(slot, t, tokens)

    # ---- failures ----------------------------------------------------------------------------------
    async def _retry(self, t: Tracked, why: str, failure: bool = True) -> None:
        """Prefill ``t`` again. ``failure`` False: the KV was lost to a scale-down, which moves the
        request without counting a retry (``_move``)."""
        if not failure:
            self._move(t, why)
            return
        if t.id not in self.tracked or t.cancelled:
            return
        if t.retries >= self.config.max_retries:
            self._fail(t.id, ErrorKind.INTERNAL, f"{why}; gave up after {t.retries} re-prefills")
            return
        self.totals["retries"] += 1
        log.warning("request %s: %s; prefilling it again", t.id, why)
        t.restart_prefill()
        self._enqueue(t)

    def _move(self, t: Tracked, why: str) -> None:
        """A policy move: prefill ``t`` again from the conversation so far, no retry counted."""
        if t.id not in self.tracked or t.cancelled:
            return
        log.info("request %s: %s; prefilling it again", t.id, why)
        self.totals["moves"] += 1
        t.restart_prefill(failure=False)
        self._enqueue(t)

    async def _recompute(self, t: Tracked, why: str) -> None:
        slot = self.slots.get(t.decode_worker or "")
        if slot is not None:
            self._leave_decode(slot, t)
            await self._abort_on(slot, t.id)
        if t.id in self.tracked and not t.cancelled:   # a preemption is a policy decision, not a failure
            log.info("request %s: %s; prefilling it again", t.id, why)
            t.restart_prefill(failure=False)
            self._enqueue(t)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            for slot in list(self.slots.values()):      # a resize may change the slots meanwhile
                if slot.healthy:
                    continue
                try:
                    await slot.call("ready", timeout_s=self.config.health_interval_s * 2)
                except Exception:
                    continue
                slot.revived()
                log.warning("worker %s is back (restart %d)", slot.id, slot.restarts)
            await self._poll_usage()

    async def _poll_usage(self) -> None:
        for slot in list(self.slots.values()):
            if not slot.healthy:
                continue
            try:
                st = await slot.call("stats", timeout_s=self.config.step_timeout_s)
            except Exception:
                continue
            slot.kv_usage = st.kv_usage
