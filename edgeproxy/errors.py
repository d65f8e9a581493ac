"""The exception tree and its mapping to the JSON error body of SPEC §1.1.

    EdgeproxyError                      status, message, metadata; origin; retryable
    ├── ConfigError (ValueError)        a bad configuration file: key path + reason, refused at start
    ├── ClientError                     the request is at fault: never retried, never a 5xx
    │   ├── BadRequest (ValueError)             400
    │   ├── Unauthorized                        401
    │   ├── PaymentRequired                     402
    │   ├── Forbidden                           403
    │   ├── NoEndpoint                          404  no endpoint meets a requirement (which one is said)
    │   ├── PayloadTooLarge                     413
    │   └── RateLimited                         429  carries retry_after (seconds)
    ├── UpstreamError                   502, one attempt at one provider failed; names the provider
    │   ├── UpstreamTimeout (asyncio.TimeoutError)
    │   ├── UpstreamConnectionError (ConnectionError)
    │   ├── UpstreamStatusError                 the provider answered an error status
    │   └── UpstreamProtocolError (ValueError)  the provider answered something untranslatable
    └── Unavailable                     503  endpoints exist but none could serve now

Upstream errors are retryable by default: the attempt loop moves to the next endpoint. Client errors
never are. The HTTP face turns any EdgeproxyError into the JSON body with `to_body()`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

__all__ = [
    "BadRequest",
    "ClientError",
    "ConfigError",
    "EdgeproxyError",
    "Forbidden",
    "NoEndpoint",
    "PayloadTooLarge",
    "PaymentRequired",
    "RateLimited",
    "Unauthorized",
    "Unavailable",
    "UpstreamConnectionError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "error_body",
]


def error_body(status: int, message: str, metadata: dict[str, Any] | None = None) -> bytes:
    """The one error shape of SPEC §1.1."""
    return orjson.dumps({"error": {"code": status, "message": message, "metadata": metadata or {}}})


class EdgeproxyError(Exception):
    status = 500
    origin = "internal"
    retryable = False

    def __init__(self, message: str, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = metadata or {}

    def to_body(self) -> bytes:
        return error_body(self.status, self.message, self.metadata)

    def headers(self) -> dict[str, str]:
        return {}


class ConfigError(EdgeproxyError, ValueError):
    origin = "config"

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


class ClientError(EdgeproxyError):
    status = 400
    origin = "client"


class BadRequest(ClientError, ValueError):
    status = 400


class Unauthorized(ClientError):
    status = 401


class PaymentRequired(ClientError):
    status = 402


class Forbidden(ClientError):
    status = 403


class NoEndpoint(ClientError):
    status = 404


class PayloadTooLarge(ClientError):
    status = 413


class RateLimited(ClientError):
    status = 429

    def __init__(self, message: str, retry_after: int, metadata: dict[str, Any] | None = None):
        super().__init__(message, metadata)
        self.retry_after = max(1, int(retry_after))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class UpstreamError(EdgeproxyError):
    """One attempt at one provider failed. `raw` is the provider's own error text, if any."""

    status = 502
    origin = "upstream"
    retryable = True

    def __init__(
        self,
        message: str,
        provider: str = "",
        raw: Any = None,
        *,
        upstream_status: int = 0,
        retry_after: float = 0.0,
    ) -> None:
        metadata: dict[str, Any] = {"provider_name": provider}
        if raw is not None:
            metadata["raw"] = raw
        super().__init__(message, metadata)
        self.provider = provider
        self.raw = raw
        self.upstream_status = upstream_status
        self.retry_after = retry_after


class UpstreamTimeout(UpstreamError, asyncio.TimeoutError):
    pass


class UpstreamConnectionError(UpstreamError, ConnectionError):
    pass


class UpstreamStatusError(UpstreamError):
    pass


class UpstreamProtocolError(UpstreamError, ValueError):
    pass


class Unavailable(EdgeproxyError):
    status = 503
    origin = "gateway"
