"""The one exception the SDK raises for a call that did not succeed."""

from __future__ import annotations

import grpc


class TandemError(Exception):
    """A failed call: ``code`` is the ``grpc.StatusCode``, ``message`` the server's detail, and
    ``retry_after`` the seconds the server asked to wait (RESOURCE_EXHAUSTED), else ``None``."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after: float | None = None,
                 request_id: str | None = None):
        super().__init__(f"{code.name}: {message}")
        self.code, self.message, self.retry_after, self.request_id = (
            code, message, retry_after, request_id)

    @classmethod
    def from_rpc(cls, error: grpc.RpcError, trailing: object = (),
                 request_id: str | None = None) -> "TandemError":
        """From a ``grpc.RpcError`` (sync or aio) and its trailing metadata."""
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        message = error.details() if hasattr(error, "details") else str(error)
        return cls(code, message or "", parse_retry_after(trailing), request_id)


def parse_retry_after(metadata: object) -> float | None:
    """The ``retry-after`` value (decimal seconds) of a metadata sequence; None if absent/bad."""
    for key, value in metadata or ():
        if key.lower() == "retry-after":
            try:
                return max(float(value), 0.0)
            except (TypeError, ValueError):
                return None
    return None
