"""A real grpc.aio server on 127.0.0.1 (its own thread and event loop) over ``ScriptedBackend``,
a test double of ``cluster.backend.Backend`` that replays a script of stream items.

Script entries: a ``StreamItem`` (yielded), a float (seconds to pause) or ``HOLD`` (wait until
the request is cancelled through ``cancel``; then it yields ``Failed(CANCELLED)``). The backend
records every request, every cancel, and every stream closed before its end (``closed``).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field

import pytest

from cluster.api import (Admitted, ErrorKind, Failed, Finished, GenerateRequest, StageDone,
                         TokenChunk)
from cluster.backend import ModelInfo
from deploy.grpc_server import bearer_auth, serve_grpc

HOLD = "hold"
KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}
VOCAB = 1000


def default_script(rid: str) -> list:
    return [Admitted(rid, "admitted", "prefill-0", "decode-0", None, 0.002),
            TokenChunk(rid, 0, (72, 101, 108), "Hel"),
            TokenChunk(rid, 0, (108, 111), "lo"),
            StageDone(rid, 0, 3, 5, 0.012, 0.004, 0.5, 0.1, True, "length"),
            Finished(rid, "admitted", 3, 5, "length", True, 0.03, 0)]


class CharTokenizer:
    def encode(self, text: str) -> list[int]:
        return [ord(c) % VOCAB for c in text]


@dataclass
class ScriptedBackend:
    script: object = default_script          # request_id -> list of script entries
    reject_first: int = 0                     # the first N calls yield Failed(REJECTED)
    retry_after_s: float | None = 0.0
    is_ready: bool = True
    requests: list[GenerateRequest] = field(default_factory=list)
    call_times: list[float] = field(default_factory=list)
    cancels: list[tuple[str, str]] = field(default_factory=list)
    running: dict[str, tuple[str, asyncio.Event]] = field(default_factory=dict)
    closed: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)

    def model_info(self) -> ModelInfo:
        return ModelInfo("scripted", "/nowhere", 2048, VOCAB)

    async def generate(self, request: GenerateRequest):
        self.requests.append(request)
        self.call_times.append(time.monotonic())
        rid = request.request_id
        if len(self.requests) <= self.reject_first:
            yield Failed(rid, ErrorKind.REJECTED, "overloaded", self.retry_after_s)
            return
        cancelled = asyncio.Event()
        self.running[rid] = (request.tenant, cancelled)
        self.started.set()
        done = False
        try:
            for entry in self.script(rid):
                if isinstance(entry, float):
                    await asyncio.sleep(entry)
                elif entry == HOLD:
                    await cancelled.wait()
                    done = True
                    yield Failed(rid, ErrorKind.CANCELLED, "cancelled by the tenant")
                    return
                else:
                    yield entry
            done = True
        finally:
            self.running.pop(rid, None)
            if not done:
                self.closed.set()

    async def cancel(self, request_id: str, tenant: str) -> bool:
        self.cancels.append((request_id, tenant))
        owner = self.running.get(request_id)
        if owner is None or owner[0] != tenant:
            return False
        owner[1].set()
        return True

    async def health(self):
        return ()

    async def ready(self, deep: bool = False) -> bool:
        return self.is_ready

    async def stats(self):
        raise NotImplementedError


class Front:
    """The server thread; ``backend`` is swapped per test (the servicer holds a proxy)."""

    def __init__(self, tokenizers: dict | None = None):
        self.backend = ScriptedBackend()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = _free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.server = self.call(serve_grpc(_Proxy(self), CharTokenizer(), bearer_auth(KEYS),
                                           port=self.port, tokenizers=tokenizers))

    def call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.call(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class _Proxy:
    def __init__(self, front: Front):
        self._front = front

    def __getattr__(self, name):
        return getattr(self._front.backend, name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def front():
    f = Front()
    yield f
    f.stop()


@pytest.fixture
def backend(front) -> ScriptedBackend:
    front.backend = ScriptedBackend()
    return front.backend
