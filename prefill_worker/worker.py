"""The prefill worker: runs a request's prompt, samples its first token, hands its KV off.

A thin shell around ``LLMEngine`` and a ``HandoffSender``; ``remote_prefill_worker`` turns the
plain class into a Ray actor class, so tests can drive it in-process too. One call at a time::

    prefill(rid, prompt, params):
        sweep()                                   # free what decode confirmed / what expired
        add_request; step until rid's first token  # chunked prefill: several steps if long
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
from prefill_worker.messages import PrefillResult, PrefillStats, sampling_params_from_dict


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
        self._num_prefilled = self._num_released = self._bytes_offered = 0

    def ready(self) -> bool:
        """The model is loaded (the constructor returned)."""
        return True

    def prefill(self, request_id: str, prompt_ids: list[int],
                sampling_params_dict: dict[str, Any] | None = None) -> PrefillResult:
        self.sweep()
        params = sampling_params_from_dict(sampling_params_dict)
        start = time.perf_counter()
        self.engine.add_request(list(prompt_ids), params, request_id=request_id)
        try:
            first = self._run_prompt(request_id, len(prompt_ids))
        except BaseException:
            self.engine.abort(request_id)
            raise
        seconds = time.perf_counter() - start
        self._num_prefilled += 1
        if first.finished:
            return PrefillResult(request_id, first.new_token_ids[0], True, None, seconds, first.num_cached_tokens)
        try:
            ticket = self.sender.offer(self.engine.export_kv(request_id))
        except BaseException:
            self.engine.abort(request_id)
            raise
        self._park(request_id)
        self._bytes_offered += ticket.nbytes
        return PrefillResult(request_id, first.new_token_ids[0], False, ticket,
                             time.perf_counter() - start, first.num_cached_tokens)

    def _run_prompt(self, request_id: str, num_tokens: int):
        """Step until ``request_id`` samples its first token (only it is scheduled: others are parked)."""
        budget = self.engine.config.max_num_batched_tokens
        for _ in range(num_tokens // budget + 2):
            for out in self.engine.step():
                if out.request_id == request_id:
                    return out
        raise RequestError(f"request {request_id!r} was not prefilled within {num_tokens // budget + 2} steps")

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
                            self._num_prefilled, self._num_released, self._bytes_offered)

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
