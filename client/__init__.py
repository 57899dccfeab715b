"""Tandem's Python SDK for the tandem.v1 gRPC API.

    from client import TandemClient, Stage
    with TandemClient.connect("127.0.0.1:50051", api_key="...") as c:
        print(c.complete("Hello", max_tokens=16, scenario="chatbot").text)
        result = c.complete("Hello", model="small")   # a served model; result.model: who served it

``TandemClient`` blocks; ``AsyncTandemClient`` is the asyncio twin. Streams yield the events of
``client.events``; failures raise ``TandemError(code, message, retry_after)``.
"""

from client.async_client import AsyncGenerateStream, AsyncTandemClient
from client.errors import TandemError
from client.events import Admitted, Chunk, Completion, Event, Finished, StageDone
from client.request import Stage
from client.retry import RetryPolicy
from client.sync_client import GenerateStream, TandemClient

__all__ = ["Admitted", "AsyncGenerateStream", "AsyncTandemClient", "Chunk", "Completion",
           "Event", "Finished", "GenerateStream", "RetryPolicy", "Stage", "StageDone",
           "TandemClient", "TandemError"]
