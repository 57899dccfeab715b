"""CPU transport through Ray's object store: the receiver asks the sender actor for the bytes.

Works between any two actors of one Ray cluster (same host or not). The sender must be a
*named* actor that forwards ``kv_transfer_call(verb, transfer_id)`` to ``handle``, and should
run with ``max_concurrency >= 2`` so a fetch does not wait behind an engine step::

    @ray.remote(max_concurrency=4)
    class PrefillWorker:
        def __init__(self):
            self.kv = RayObjectStoreTransport()
        def kv_transfer_call(self, verb, transfer_id):        # SENDER_METHOD
            return self.kv.handle(verb, transfer_id)

``pull`` calls ``fetch``: the sender returns the buffer as a numpy array, Ray copies it into the
object store once, and the receiver maps it without a copy (``import_kv`` then copies it into
the cache). ``confirm``/``abort`` are one-way calls; a lost answer is covered by the deadline.
A dead sender surfaces as ``TransferFailed`` (``RayActorError``), a silent one as
``TransferTimeout`` at the pull's deadline.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from enum import Enum

import torch

from engine.kv_cache import KVHandoff
from kv_transfer.transport import (KVTransport, Released, ReleaseReason, SenderAddress, TransferFailed,
                                   TransferTicket, TransferTimeout, check_ticket)

SENDER_METHOD = "kv_transfer_call"


class Verb(Enum):
    FETCH = "fetch"
    CONFIRM = "confirm"
    ABORT = "abort"


@dataclass
class _Offer:
    ticket: TransferTicket
    buffer: torch.Tensor
    answer: ReleaseReason | None = None


class RayObjectStoreTransport(KVTransport):
    name = "cpu_ray"

    def __init__(self, actor_name: str | None = None, namespace: str | None = None):
        """On a sender, ``actor_name``/``namespace`` default to the current actor's (it must be named)."""
        super().__init__()
        self.actor_name, self.namespace = actor_name, namespace
        self._lock = threading.Lock()
        self._offers: dict[str, _Offer] = {}
        self._pulled: set[str] = set()
        self._dispatch = {Verb.FETCH: self._fetch, Verb.CONFIRM: self._answer_confirm,
                          Verb.ABORT: self._answer_abort}

    def _address(self) -> SenderAddress:
        if self.actor_name is None:
            import ray

            ctx = ray.get_runtime_context()
            self.actor_name, self.namespace = ctx.get_actor_name(), ctx.namespace
            if not self.actor_name:
                raise TransferFailed("the cpu_ray sender must run in a named actor")
        return SenderAddress(socket.gethostname(), os.getpid(), self.actor_name, namespace=self.namespace or "")

    # -- sender ----------------------------------------------------------------------------
    def offer(self, handoff: KVHandoff, deadline_s: float) -> TransferTicket:
        start = time.perf_counter()
        ticket = TransferTicket(uuid.uuid4().hex[:16], handoff.meta.request_id, handoff.meta, handoff.nbytes,
                                self.name, self._address(), time.time() + deadline_s)
        with self._lock:
            self._offers[ticket.transfer_id] = _Offer(ticket, handoff.buffer.contiguous())
        self._record(ticket, "offer", time.perf_counter() - start)
        return ticket

    def handle(self, verb: Verb | str, transfer_id: str):
        """Sender side of ``SENDER_METHOD``: one dispatch table for the receiver's messages."""
        return self._dispatch[Verb(verb)](transfer_id)

    def _fetch(self, transfer_id: str):
        with self._lock:
            off = self._offers.get(transfer_id)
        if off is None or off.answer is not None:
            raise TransferFailed(f"transfer {transfer_id} is not offered here (released or expired)")
        return off.buffer.view(-1).view(torch.uint8).numpy()     # bytes: numpy has no bfloat16

    def _answer_confirm(self, transfer_id: str) -> None:
        self._set_answer(transfer_id, ReleaseReason.CONFIRMED)

    def _answer_abort(self, transfer_id: str) -> None:
        self._set_answer(transfer_id, ReleaseReason.ABORTED)

    def _set_answer(self, transfer_id: str, reason: ReleaseReason) -> None:
        with self._lock:
            off = self._offers.get(transfer_id)
            if off is not None and off.answer is None:
                off.answer = reason

    def reap(self, now: float | None = None) -> list[Released]:
        now = time.time() if now is None else now
        out = []
        with self._lock:
            for tid, off in list(self._offers.items()):
                reason = off.answer or (ReleaseReason.EXPIRED if off.ticket.deadline <= now else None)
                if reason is not None:
                    del self._offers[tid]
                    out.append(Released(tid, off.ticket.request_id, reason))
        return out

    def pending(self) -> list[str]:
        with self._lock:
            return list(self._offers)

    # -- receiver --------------------------------------------------------------------------
    def _sender(self, ticket: TransferTicket):
        import ray

        try:
            actor = ray.get_actor(ticket.sender.endpoint, namespace=ticket.sender.namespace or None)
        except ValueError as exc:
            raise TransferFailed(f"sender actor of transfer {ticket.transfer_id} is gone: {exc}") from exc
        return getattr(actor, SENDER_METHOD)

    def pull(self, ticket: TransferTicket, deadline_s: float) -> KVHandoff:
        import ray
        from ray.exceptions import GetTimeoutError, RayError

        check_ticket(ticket, self.name)
        start = time.perf_counter()
        until = min(ticket.deadline, time.time() + deadline_s)
        what = f"transfer {ticket.transfer_id} of {ticket.request_id}"
        ref = self._sender(ticket).remote(Verb.FETCH.value, ticket.transfer_id)
        try:
            array = ray.get(ref, timeout=max(until - time.time(), 0.001))
        except GetTimeoutError as exc:
            try:
                ray.cancel(ref)                                  # drop it if still queued
            except Exception:
                pass
            raise TransferTimeout(f"{what}: no bytes within {deadline_s:.3g}s") from exc
        except RayError as exc:
            raise TransferFailed(f"{what}: {str(exc).splitlines()[0]}") from exc
        buffer = _view(array, ticket)
        self._pulled.add(ticket.transfer_id)
        self._record(ticket, "pull", time.perf_counter() - start)
        return KVHandoff(ticket.meta, buffer)

    def confirm(self, ticket: TransferTicket) -> None:
        if ticket.transfer_id not in self._pulled:
            raise TransferFailed(f"transfer {ticket.transfer_id} was not pulled here or is already confirmed")
        self._pulled.discard(ticket.transfer_id)
        self._tell(ticket, Verb.CONFIRM)

    def abort(self, ticket: TransferTicket) -> None:
        with self._lock:
            if self._offers.pop(ticket.transfer_id, None) is not None:   # sender withdraws
                return
        self._pulled.discard(ticket.transfer_id)
        try:
            self._tell(ticket, Verb.ABORT)
        except TransferFailed:
            pass

    def _tell(self, ticket: TransferTicket, verb: Verb) -> None:
        self._sender(ticket).remote(verb.value, ticket.transfer_id)    # one-way; deadline covers loss

    def close(self) -> None:
        with self._lock:
            self._offers.clear()
        self._pulled.clear()


def _view(array, ticket: TransferTicket) -> torch.Tensor:
    """A zero-copy tensor over Ray's read-only buffer. Callers only read it (``import_kv`` copies)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)     # "non-writable tensor": we never write
        flat = torch.from_numpy(array)
    return flat.view(getattr(torch, ticket.meta.dtype)).view(ticket.meta.shape)
