"""``FrontStream``: one request's backend stream as an HTTP front consumes it.

    stream = FrontStream(backend.generate(req), metrics, labels, is_disconnected)
    item = await stream.next()     # the next StreamItem, or None once the client is gone
    ...
    await stream.close()           # always, however the response ended (idempotent)

Contracts:
- Every item returned by ``next`` has gone through ``metrics.observe_item`` first; a stream
  closed before its ``Finished``/``Failed`` is ``metrics.discard``-ed. A ``Routed`` item
  relabels the rest of the stream with the model that serves it (``labels.model_name``).
- ``is_disconnected()`` is asked at most every ``poll_s`` (also while items keep flowing, and
  while waiting for one); once it says True the pending read is cancelled and ``next`` returns
  None. ``close`` then closes the
  backend iterator, which cancels the request in the cluster and frees its KV.
- A backend that raises, or ends without ``Finished``/``Failed``, yields a ``Failed`` INTERNAL
  (its contract says it never raises for request-level problems).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from cluster.api import ErrorKind, Failed, Finished, Routed, StreamItem
from deploy.metrics import ServingMetrics

CLOSE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Labels:
    request_id: str
    model_name: str
    lane: object
    tenant: str


class FrontStream:
    def __init__(self, items: AsyncIterator[StreamItem], metrics: ServingMetrics, labels: Labels,
                 is_disconnected: Callable[[], Awaitable[bool]], poll_s: float = 0.25):
        self._items, self._metrics, self.labels = items, metrics, labels
        self._is_disconnected, self._poll_s = is_disconnected, poll_s
        self._pending: asyncio.Future | None = None
        self.ended = False          # Finished or Failed seen
        self.gone = False           # the client disconnected
        self._closed = False
        self._checked_at = time.monotonic()

    async def _client_gone(self) -> bool:
        now = time.monotonic()
        if now - self._checked_at >= self._poll_s:
            self._checked_at = now
            self.gone = self.gone or await self._is_disconnected()
        return self.gone

    async def _read(self) -> StreamItem:
        rid = self.labels.request_id
        try:
            return await anext(self._items)
        except StopAsyncIteration:
            return Failed(rid, ErrorKind.INTERNAL, "the stream ended without Finished or Failed")
        except Exception as exc:  # noqa: BLE001 - a backend bug becomes INTERNAL
            return Failed(rid, ErrorKind.INTERNAL, f"backend error: {type(exc).__name__}: {exc}")

    async def next(self) -> StreamItem | None:
        if self.ended or self._closed or await self._client_gone():
            return None
        self._pending = asyncio.ensure_future(self._read())
        while True:
            done, _ = await asyncio.wait({self._pending}, timeout=self._poll_s)
            if done:
                item, self._pending = self._pending.result(), None
                break
            if await self._client_gone():
                await self._drop_pending()
                return None
        if isinstance(item, Routed):
            self.labels = dataclasses.replace(self.labels, model_name=item.model)
        labels = self.labels
        self._metrics.observe_item(item, labels.model_name, labels.lane, labels.tenant)
        self.ended = isinstance(item, (Finished, Failed))
        return item

    async def _drop_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and not pending.done():
            pending.cancel()
            await asyncio.wait({pending}, timeout=CLOSE_TIMEOUT_S)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._drop_pending()
            aclose = getattr(self._items, "aclose", None)
            if aclose is not None:
                await asyncio.wait_for(aclose(), CLOSE_TIMEOUT_S)
        finally:
            if not self.ended:
                self._metrics.discard(self.labels.request_id)
