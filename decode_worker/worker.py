"""The decode worker: imports handed-off KV and runs continuous-batched decode on the paged cache.

A thin shell around ``LLMEngine`` and ``kv_transfer.flow.receive``; ``remote_decode_worker``
turns the plain class into a Ray actor class, so tests can drive it in-process too::

    start(ticket, token_ids, n_prompt, params):  receive → pull (retries) → import_kv → confirm
        -> StartResult(decision=None)             # the request is running here now
        -> StartResult(decision=RECOMPUTE | FAIL) # nothing allocated; the caller re-prefills / errors
    step():     one engine step over every running request -> [TokenEvent]
    abort(rid): frees the request's blocks now
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from engine.config import EngineConfig
from engine.engine import LLMEngine, StepRecord
from kv_transfer import select_transport
from kv_transfer.flow import receive
from kv_transfer.handoff import Decision, HandoffPolicy, HandoffTracker
from kv_transfer.transport import TransferTicket
from prefill_worker.messages import sampling_params_from_dict


@dataclass(frozen=True)
class StartResult:
    request_id: str
    decision: Decision | None      # None: imported and running; RECOMPUTE / FAIL: not started
    pulls: int
    errors: tuple[str, ...]
    seconds: float                 # receive + import


@dataclass(frozen=True)
class TokenEvent:
    request_id: str
    token: int
    text: str                      # newly released text (may be "" while a stop string is pending)
    finished: bool
    finish_reason: str | None      # "stop" | "length" | "abort" once finished


@dataclass(frozen=True)
class DecodeStep:
    """One engine step: its token events, and its shape and seconds (None when nothing ran)."""

    events: tuple[TokenEvent, ...]
    record: StepRecord | None


@dataclass(frozen=True)
class DecodeStats:
    num_running: int
    num_waiting: int
    kv_usage: float                # fraction of blocks referenced (prefix-cached blocks excluded)
    num_free_blocks: int
    num_started: int
    num_recompute: int
    num_failed: int
    bytes_pulled: int
    kv_capacity_tokens: int        # blocks × block size


class DecodeWorker:
    """Runs decode for requests whose prompt KV was computed elsewhere.

    Contracts:
    - ``start`` never blocks past ``min(ticket deadline, pull_deadline_s × (1 + retries))``; on a
      decision it has allocated nothing and the sender is told to free (abort) its offer.
    - ``step`` returns one ``TokenEvent`` per request that produced a token; a finished request's
      blocks are already freed (prefix-cached blocks stay cached, unreferenced).
    - ``abort`` returns False for an unknown or finished request.
    """

    def __init__(self, engine_config: EngineConfig, transport_kind: str = "cpu_shm",
                 pull_deadline_s: float = 10.0, max_retries: int = 2):
        self.engine = LLMEngine(engine_config)
        self.transport = select_transport(transport_kind)
        self.pull_deadline_s = pull_deadline_s
        self.tracker = HandoffTracker(HandoffPolicy(max_retries=max_retries))
        self._started = self._recompute = self._failed = self._bytes = 0

    def ready(self) -> bool:
        """The model is loaded (the constructor returned)."""
        return True

    def start(self, ticket: TransferTicket, token_ids: list[int], num_prompt_tokens: int,
              sampling_params_dict: dict[str, Any] | None = None) -> StartResult:
        """Pull ``ticket``'s KV and start decoding after ``token_ids`` (prompt + first token)."""
        params = sampling_params_from_dict(sampling_params_dict)
        rid, tokens, begin = ticket.request_id, list(token_ids), time.perf_counter()
        outcome = receive(self.transport, ticket, self.tracker,
                          lambda h: self.engine.import_kv(h, tokens, num_prompt_tokens, params, rid),
                          self.pull_deadline_s)
        if outcome.decision is None:
            self._started += 1
            self._bytes += ticket.nbytes
        elif outcome.decision is Decision.RECOMPUTE:
            self._recompute += 1
        else:
            self._failed += 1
        return StartResult(rid, outcome.decision, outcome.pulls, outcome.errors, time.perf_counter() - begin)

    def step(self) -> list[TokenEvent]:
        return [TokenEvent(o.request_id, o.new_token_ids[-1], o.new_text, o.finished,
                           o.finish_reason.value if o.finish_reason else None)
                for o in self.engine.step() if o.new_token_ids]

    def step_report(self) -> DecodeStep:
        """``step`` plus what the step ran and how long it took (for calibration and occupancy)."""
        if not self.engine.has_unfinished():
            return DecodeStep((), None)
        self.engine.last_step = None
        events = tuple(self.step())
        return DecodeStep(events, self.engine.last_step)

    def start_local(self, request_id: str, token_ids: list[int],
                    sampling_params_dict: dict[str, Any] | None = None) -> int:
        """Run a request's prefill here (a later stage, or a session turn whose prefix is cached).

        The prefix cache covers what this worker already holds of ``token_ids``; only the rest
        is computed, by the next ``step`` calls (the first token arrives as a ``TokenEvent``).
        Returns the number of tokens served from the cache. Raises ``RequestError`` / ``ValueError``.
        """
        params = sampling_params_from_dict(sampling_params_dict)
        cached = self.cached_prefix_tokens(token_ids)
        self.engine.add_request(list(token_ids), params, request_id=request_id)
        return cached

    def calibrate(self, steps: int = 64, max_prompt: int = 512, max_output: int = 16, seed: int = 0):
        """Time ``steps`` engine steps of a random mix and fit the batch-time model (idle worker only)."""
        from engine.calibrate import calibrate

        if self.engine.has_unfinished():
            raise RuntimeError("calibrate only an idle worker")
        return calibrate(self.engine, steps=steps, max_prompt=max_prompt, max_output=max_output, seed=seed)

    def cached_prefix_tokens(self, token_ids: list[int]) -> int:
        """Leading tokens of ``token_ids`` whose KV this worker's prefix cache holds now."""
        return self.engine.block_manager.cached_prefix_tokens(token_ids)

    def run_until_done(self, request_ids: list[str], deadline_s: float = 60.0) -> dict[str, list[int]]:
        """Test helper: step until every one of ``request_ids`` finished; their tokens decoded here.

        Events of other requests are dropped. Raises ``TimeoutError`` past ``deadline_s``, and
        ``KeyError`` for a request that is not running here.
        """
        missing = [r for r in request_ids if not self.engine.has_request(r)]
        if missing:
            raise KeyError(f"not running on this decode worker: {missing}")
        out: dict[str, list[int]] = {r: [] for r in request_ids}
        left, until = set(request_ids), time.monotonic() + deadline_s
        while left:
            if time.monotonic() > until:
                raise TimeoutError(f"{len(left)} requests unfinished after {deadline_s} s: {sorted(left)[:5]}")
            for ev in self.step():
                if ev.request_id in out:
                    out[ev.request_id].append(ev.token)
                    if ev.finished:
                        left.discard(ev.request_id)
        return out

    def abort(self, request_id: str) -> bool:
        return self.engine.abort(request_id)

    def stats(self) -> DecodeStats:
        s, bm = self.engine.stats(), self.engine.block_manager
        return DecodeStats(s.num_running, s.num_waiting, s.kv_usage, bm.num_free_blocks(),
                           self._started, self._recompute, self._failed, self._bytes,
                           bm.num_blocks * bm.block_size)

    def check_invariants(self) -> None:
        """Raise AssertionError if the block manager's bookkeeping is inconsistent."""
        self.engine.block_manager.check_invariants()

    def close(self) -> None:
        self.transport.close()


def remote_decode_worker(num_cpus: float = 0.5, **options):
    """``DecodeWorker`` as a Ray actor class (``.remote(engine_config, transport_kind)`` to start one)."""
    import ray

    return ray.remote(num_cpus=num_cpus, **options)(DecodeWorker)
