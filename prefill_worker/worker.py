"""The prefill worker: runs a request's prompt, samples its first token, hands its KV off.

A thin shell around ``LLMEngine`` and a ``HandoffSender``; ``remote_prefill_worker`` turns the
plain class into a Ray actor class, so tests can drive it in-process too. One call at a time::

    prefill_batch([PrefillItem]):                 # prefill(rid, prompt, params) is a batch of one
        sweep()                                   # free what decode confirmed / what expired
        add_request each; step until each has its first token  # chunked prefill under a token budget
        finished? -> PrefillResult(ticket=None)    # the engine already freed its blocks
        export_kv; ticket = sender.offer(handoff)  # bytes staged in the transport
        park rid                                   # blocks held, never scheduled again
        -> PrefillResult(ticket)                   # ticket goes to a decode worker

Who frees: a parked request keeps its engine blocks until ``sender.sweep()`` reports its
transfer released (confirmed, aborted or expired); then ``engine.abort`` frees them.
"""

from __future__ import annotations

import time
from typing import Any

from engine.config import EngineConfig
from engine.engine import LLMEngine, RequestError
from kv_transfer import select_transport
from kv_transfer.flow import HandoffSender
from kv_transfer.handoff import HandoffPolicy, HandoffTracker
from engine.engine import StepRecord
from prefill_worker.messages import (PrefillBatch, PrefillError, PrefillItem, PrefillResult, PrefillStats,
                                     sampling_params_from_dict)


class PrefillWorker:
    """Prefills one request per call and offers its KV through ``transport_kind``.

    Contracts:
    - ``prefill`` returns once the prompt is computed and the first token sampled; it raises
      ``RequestError`` / ``ValueError`` for a bad request (nothing is left allocated then).
    - The KV offer lives until the receiver confirms or aborts, or ``handoff_deadline_s`` passes;
      the request's engine blocks are held (parked, never stepped) until then.
    - ``sweep`` (also run at the start of each ``prefill``) frees released transfers.
    """

    def __init__(self, engine_config: EngineConfig, transport_kind: str = "cpu_shm",
                 handoff_deadline_s: float = 30.0):
        self.engine = LLMEngine(engine_config)
        self.transport = select_transport(transport_kind)
        policy = HandoffPolicy(transfer_timeout_s=handoff_deadline_s)
        self.sender = HandoffSender(self.transport, HandoffTracker(policy), handoff_deadline_s)
        self._parked: set[str] = set()
        self._drop_offers = 0
        self._num_prefilled = self._num_released = self._bytes_offered = 0

    def ready(self) -> bool:
        """The model is loaded (the constructor returned)."""
        return True

    def prefill(self, request_id: str, prompt_ids: list[int],
                sampling_params_dict: dict[str, Any] | None = None) -> PrefillResult:
        """One request; raises ``RequestError`` / ``ValueError`` for a bad one (nothing held)."""
        out = self.prefill_batch([PrefillItem(request_id, tuple(prompt_ids), sampling_params_dict)]).outcomes[0]
        if isinstance(out, PrefillError):
            raise RequestError(out.message)
        return out

    def prefill_batch(self, items: list[PrefillItem], deadline_s: float = 300.0) -> PrefillBatch:
        """Prefill ``items`` together (chunked under the engine's token budget) and offer their KV.

        A refused item gets a ``PrefillError`` and does not stop the others. Raises
        ``TimeoutError`` (everything of this call aborted) if the steps take past ``deadline_s``.
        """
        self.sweep()
        begin = time.perf_counter()
        outcomes: dict[str, PrefillResult | PrefillError] = {}
        live: list[str] = []
        for item in items:
            if item.request_id in self._parked:       # a re-prefill supersedes the request's old offer
                self.withdraw(item.request_id)
            try:
                params = sampling_params_from_dict(item.params)
                self.engine.add_request(list(item.prompt_ids), params, request_id=item.request_id)
                live.append(item.request_id)
            except (RequestError, ValueError) as exc:
                outcomes[item.request_id] = PrefillError(item.request_id, str(exc))
        steps: list[StepRecord] = []
        try:
            firsts = self._run_prompts(set(live), deadline_s, steps)
        except BaseException:
            for rid in live:
                self.engine.abort(rid)
            raise
        for rid in live:
            outcomes[rid] = self._hand_off(rid, firsts[rid], time.perf_counter() - begin)
        return PrefillBatch(tuple(outcomes[i.request_id] for i in items), tuple(steps),
                            time.perf_counter() - begin)

    def _hand_off(self, rid: str, first, seconds: float) -> PrefillResult | PrefillError:
        self._num_prefilled += 1
        reason = first.finish_reason.value if first.finish_reason else None
        if first.finished:
            return PrefillResult(rid, first.new_token_ids[0], True, None, seconds, first.num_cached_tokens,
                                 first.new_text, reason)
        try:
            ticket = self.sender.offer(self.engine.export_kv(rid))
        except Exception as exc:                       # staging failed: nothing offered, free the blocks
            self.engine.abort(rid)
            return PrefillError(rid, f"KV offer failed: {type(exc).__name__}: {exc}")
        self._park(rid)
        self._bytes_offered += ticket.nbytes
        if self._drop_offers > 0:                     # fault injection: the transfer is lost
            self._drop_offers -= 1
            self.transport.abort(ticket)
        return PrefillResult(rid, first.new_token_ids[0], False, ticket, seconds, first.num_cached_tokens,
                             first.new_text, None)

    def _run_prompts(self, request_ids: set[str], deadline_s: float, steps: list[StepRecord]) -> dict:
        """Step until every one of ``request_ids`` sampled its first token (others here are parked)."""
        firsts, until = {}, time.monotonic() + deadline_s
        while len(firsts) < len(request_ids):
            if time.monotonic() > until:
                raise TimeoutError(f"prefill of {len(request_ids)} requests exceeded {deadline_s} s")
            if not self.engine.has_unfinished():
                missing = sorted(request_ids - set(firsts))
                raise RequestError(f"requests {missing[:5]} left the engine before their first token")
            for out in self.engine.step():
                if out.request_id in request_ids and out.request_id not in firsts:
                    firsts[out.request_id] = out
            if self.engine.last_step is not None:
                steps.append(self.engine.last_step)
        return firsts

    def drop_next_offers(self, count: int) -> None:
        """Fault injection for tests and drills: the next ``count`` offers are withdrawn as soon as
        they are made, so their receivers see a failed transfer (and the controller re-prefills)."""
        self._drop_offers = max(0, int(count))

    def withdraw(self, request_id: str) -> bool:
        """Drop a parked request's offer and free its blocks now (the caller gave up on it)."""
        if request_id not in self._parked:
            return False
        self.sender.withdraw(request_id)
        self._parked.discard(request_id)
        self.engine.abort(request_id)
        self._num_released += 1
        return True

    def calibrate(self, steps: int = 64, max_prompt: int = 512, max_output: int = 16, seed: int = 0):
        """Time ``steps`` engine steps of a random mix and fit the batch-time model on them."""
        from engine.calibrate import calibrate

        if self._parked or self.engine.has_unfinished():
            raise RuntimeError("calibrate only an idle worker")
        return calibrate(self.engine, steps=steps, max_prompt=max_prompt, max_output=max_output, seed=seed)

    def _park(self, request_id: str) -> None:
        # Not stepped again, blocks kept; engine.abort frees them on release.
        self.engine.park(request_id)
        self._parked.add(request_id)

    def sweep(self, wait_s: float = 0.0) -> list[str]:
        """Free released transfers; with ``wait_s``, keep sweeping until none is pending or it passes.

        Returns the request ids whose engine blocks were freed.
        """
        until, freed = time.monotonic() + wait_s, []
        while True:
            for released in self.sender.sweep():
                if released.request_id in self._parked:
                    self._parked.discard(released.request_id)
                    self.engine.abort(released.request_id)
                    self._num_released += 1
                freed.append(released.request_id)
            if not self.sender.pending() or time.monotonic() >= until:
                return freed
            time.sleep(0.01)

    def pending(self) -> list[str]:
        return self.sender.pending()

    def stats(self) -> PrefillStats:
        bm = self.engine.block_manager
        return PrefillStats(len(self._parked), len(self.sender.pending()), bm.usage(), bm.num_free_blocks(),
                            self._num_prefilled, self._num_released, self._bytes_offered,
                            bm.num_blocks * bm.block_size)

    def check_invariants(self) -> None:
        """Raise AssertionError if the block manager's bookkeeping is inconsistent."""
        self.engine.block_manager.check_invariants()
        assert not self.engine.scheduler.running and not self.engine.scheduler.waiting, "prefill left work queued"

    def close(self) -> None:
        """Withdraw every offer and release the transport (unlinks shared-memory segments)."""
        for rid in list(self._parked):
            self.engine.abort(rid)
        self._parked.clear()
        self.transport.close()


def remote_prefill_worker(num_cpus: float = 0.5, **options):
    """``PrefillWorker`` as a Ray actor class (``.remote(engine_config, transport_kind)`` to start one)."""
    import ray

    return ray.remote(num_cpus=num_cpus, **options)(PrefillWorker)
