"""A Ray actor playing prefill or decode worker for the transport tests, and stalling test doubles."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

import torch

from engine.kv_cache import KVHandoff, KVHandoffMeta
from engine.sampling import SamplingParams
from kv_transfer.cpu_gloo import GlooTransport
from kv_transfer.cpu_ray import RayObjectStoreTransport
from kv_transfer.cpu_shm import ShmTransport
from kv_transfer.flow import HandoffSender, ReceiveOutcome, receive
from kv_transfer.handoff import HandoffPolicy, HandoffTracker
from kv_transfer.transport import TransferError, TransferTicket


class StalledShm(ShmTransport):
    """Creates the segment but never marks it READY: a sender stuck mid-transfer."""

    def _publish(self, mm) -> None:
        pass


class StalledGloo(GlooTransport):
    """Never answers a receiver's request: the bytes are dropped on the floor."""

    def _serve(self, off) -> None:
        pass


class StalledRay(RayObjectStoreTransport):
    """Never answers a fetch (the reply is lost); bounded so the actor thread ends eventually."""

    def _fetch(self, transfer_id: str):
        time.sleep(30)


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


@dataclass(frozen=True)
class PullResult:
    sha: str | None
    error: str | None          # exception class name
    message: str
    seconds: float


@dataclass(frozen=True)
class DecodeResult:
    tokens: tuple[int, ...]
    outcome: ReceiveOutcome


class Worker:
    def __init__(self, model_dir: str | None = None, num_blocks: int = 64):
        self.engine = None
        if model_dir is not None:
            from tests.engine.helpers import make_engine
            self.engine = make_engine(model_dir, num_blocks=num_blocks)
        self.transport = None
        self._store = None
        self.sender: HandoffSender | None = None

    def pid(self) -> int:
        return os.getpid()

    def use_shm(self, stall: bool = False, deadline_s: float = 10.0) -> None:
        self._set((StalledShm if stall else ShmTransport)(), deadline_s)

    def use_ray(self, stall: bool = False, deadline_s: float = 10.0) -> None:
        self._set((StalledRay if stall else RayObjectStoreTransport)(), deadline_s)

    def kv_transfer_call(self, verb: str, transfer_id: str):
        return self.transport.handle(verb, transfer_id)

    def gloo_listen(self):
        addr, self._store = GlooTransport.listen()
        return addr

    def gloo_join(self, addr, rank: int, stall: bool = False, deadline_s: float = 10.0) -> None:
        self._set((StalledGloo if stall else GlooTransport)(addr, rank, store=self._store), deadline_s)

    def _set(self, transport, deadline_s: float) -> None:
        self.transport = transport
        tracker = HandoffTracker(HandoffPolicy(transfer_timeout_s=deadline_s))
        self.sender = HandoffSender(transport, tracker, deadline_s)

    # -- raw bytes -------------------------------------------------------------------------
    def offer_random(self, num_blocks: int, seed: int) -> tuple[TransferTicket, str]:
        meta = KVHandoffMeta("req-%d" % seed, 4, 2, 64, 16, "float32", num_blocks * 16,
                             tuple(range(num_blocks)), tuple(range(num_blocks * 16)))
        buffer = torch.randn(meta.shape, generator=torch.Generator().manual_seed(seed))
        return self.sender.offer(KVHandoff(meta, buffer)), digest(buffer)

    def pull(self, ticket: TransferTicket, deadline_s: float, confirm: bool = True) -> PullResult:
        start = time.monotonic()
        try:
            handoff = self.transport.pull(ticket, deadline_s)
        except TransferError as exc:
            return PullResult(None, type(exc).__name__, str(exc), time.monotonic() - start)
        sha = digest(handoff.buffer)
        del handoff
        (self.transport.confirm if confirm else self.transport.abort)(ticket)
        return PullResult(sha, None, "", time.monotonic() - start)

    def sweep(self, wait_s: float = 0.0):
        """Sweep until something is released or ``wait_s`` passes; abort released engine requests."""
        until = time.monotonic() + wait_s
        while True:
            freed = self.sender.sweep()
            if freed or time.monotonic() >= until:
                break
            time.sleep(0.01)
        for r in freed:
            if self.engine is not None:
                self.engine.abort(r.request_id)
        return freed

    def pending(self) -> list[str]:
        return self.sender.pending()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def stats(self):
        return self.transport.stats()

    # -- engine ----------------------------------------------------------------------------
    def prefill(self, prompt: list[int], max_tokens: int) -> tuple[TransferTicket, int]:
        params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
        rid = self.engine.add_request(prompt, params)
        first = self.engine.step()[0].new_token_ids[0]
        return self.sender.offer(self.engine.export_kv(rid)), first

    def decode(self, ticket: TransferTicket, prompt: list[int], first: int, max_tokens: int,
               pull_deadline_s: float, max_retries: int = 2) -> DecodeResult:
        params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
        tracker = HandoffTracker(HandoffPolicy(max_retries=max_retries))
        outcome = receive(self.transport, ticket, tracker,
                          lambda h: self.engine.import_kv(h, prompt + [first], len(prompt), params),
                          pull_deadline_s)
        if outcome.decision is not None:
            return DecodeResult((), outcome)
        tokens = [first]
        while self.engine.has_unfinished():
            for out in self.engine.step():
                tokens.extend(out.new_token_ids)
        return DecodeResult(tuple(tokens), outcome)

    def generate(self, prompt: list[int], max_tokens: int) -> tuple[int, ...]:
        params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
        return tuple(self.engine.generate([prompt], params)[0].output_token_ids)

    def check(self) -> tuple[bool, float]:
        """Block-manager invariants hold; returns (any request live, fraction of blocks in use)."""
        self.engine.block_manager.check_invariants()
        return self.engine.has_unfinished(), self.engine.block_manager.usage()
