"""The interface the serving fronts (HTTP, gRPC, load tests) use to reach a cluster.

``cluster.handle.ClusterHandle`` implements it over the controller actor; anything with these
async methods can stand behind a front::

    async for item in backend.generate(request):   # StreamItem, last one Finished | Failed
        ...
    await backend.cancel(request_id, tenant)        # True if it was running and is now cancelled
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from cluster.api import ClusterStats, GenerateRequest, StreamItem, WorkerHealth


@dataclass(frozen=True)
class ModelInfo:
    name: str                 # the served model's name (``/v1/models`` id)
    path: str                 # local folder with config, tokenizer and weights
    max_model_len: int
    vocab_size: int


class Backend(Protocol):
    def model_info(self) -> ModelInfo:
        ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[StreamItem]:
        """Stream a request. Never raises for request-level problems: it yields ``Failed``.

        Closing the iterator early (client gone) cancels the request and frees its KV.
        """
        ...

    async def cancel(self, request_id: str, tenant: str) -> bool:
        """Cancel a running request of ``tenant``; False if unknown, finished or another tenant's."""
        ...

    async def health(self) -> tuple[WorkerHealth, ...]:
        ...

    async def ready(self, deep: bool = False) -> bool:
        """Workers loaded and healthy; ``deep`` also runs a one-token request through the full path."""
        ...

    async def stats(self) -> ClusterStats:
        ...
