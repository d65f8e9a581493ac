"""The exception tree and its mapping to the JSON error body of SPEC §1.1.

    EdgeproxyError                      status, message, metadata; origin; retryable
    ├── ConfigError (ValueError)        a bad configuration file: key path + reason, refused at start
    ├── StartupError                    what this machine refused at start (a database, a port, a
    │                                   module): the cause and the fix, one line, exit code 2
    ├── ClientError                     the request is at fault: never retried, never a 5xx
    │   ├── BadRequest (ValueError)             400
    │   ├── Unauthorized                        401
    │   ├── PaymentRequired                     402
    │   ├── Forbidden                           403
    │   ├── NoEndpoint                          404  no endpoint meets a requirement (which one is said)
    │   ├── RequestTimeout (TimeoutError)       408  the client stopped sending its request body
    │   ├── PayloadTooLarge                     413
    │   └── RateLimited                         429  carries retry_after (seconds)
    ├── UpstreamError                   502, one attempt at one provider failed; names the provider
    │   ├── UpstreamTimeout (asyncio.TimeoutError)
    │   ├── UpstreamConnectionError (ConnectionError)
    │   ├── UpstreamStatusError                 the provider answered an error status
    │   └── UpstreamProtocolError (ValueError)  the provider answered something untranslatable
    └── Unavailable                     503  endpoints exist but none could serve now

Upstream errors are retryable by default: the attempt loop moves to the next endpoint. Client errors
never are. The HTTP face turns any EdgeproxyError into the JSON body with `to_body()`. An upstream
error's text is the provider's own, which may quote the key it was sent ("Incorrect API key
provided: sk-proj-****abcd"): UpstreamError scrubs anything shaped like a key from it (`scrub`).
"""

from __future__ import annotations

import asyncio
import re
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
    "RequestTimeout",
    "StartupError",
    "Unauthorized",
    "Unavailable",
    "UpstreamConnectionError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "error_body",
    "scrub",
]


# Key material in a provider's error text: the shapes of provider keys (OpenAI, Anthropic and
# OpenRouter `sk-…`, Google `AIza…`, Groq, xAI, Hugging Face, Replicate, Perplexity, NVIDIA,
# Cerebras, Fireworks, Together), any token with a run of `***` (a redacted key: its visible
# ends are still part of it), and what follows `Bearer `. Bounded repeats keep it linear on
# whatever an upstream sends.
_KEY_SHAPES = re.compile(
    r"(?<![\w-])sk-(?:[\w*…-]|\.{2,}){4,}"
    r"|(?<![\w-])AIza[\w-]{20,}"
    r"|(?<![\w-])(?:gsk|xai|hf|r8|pplx|nvapi|csk|fw|tgp_v1)[_-][\w*-]{8,}"
    r"|(?<![\w-])[\w-]{0,64}\*{3,}[\w-]{0,64}"
    r"|(?<=Bearer )[^\s\"',;]+"
)
REDACTED = "[redacted]"


def scrub(value: Any, *secrets: str) -> Any:
    """`value` (text, or JSON made of lists and objects) with key material replaced: the shapes
    above and each of `secrets` (the keys the gateway sent)."""
    if isinstance(value, str):
        for secret in secrets:
            if len(secret) >= 8:
                value = value.replace(secret, REDACTED)
        return _KEY_SHAPES.sub(REDACTED, value)
    if isinstance(value, list):
        return [scrub(v, *secrets) for v in value]
    if isinstance(value, dict):
        return {k: scrub(v, *secrets) for k, v in value.items()}
    return value


# OpenRouter's canonical `error_type` by HTTP status ("Typed error codes",
# https://openrouter.ai/docs/api/reference/errors-and-debugging); any other status is "server".
_ERROR_TYPES = {
    400: "invalid_request", 401: "authentication", 402: "payment_required",
    403: "permission_denied", 404: "not_found", 408: "timeout", 413: "payload_too_large",
    422: "unprocessable", 429: "rate_limit_exceeded", 502: "provider_unavailable",
    503: "provider_overloaded", 504: "timeout", 529: "provider_overloaded",
}


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

    @property
    def error_type(self) -> str:
        """OpenRouter's canonical type of this error, which clients switch on."""
        return _ERROR_TYPES.get(self.status, "server")

    def headers(self) -> dict[str, str]:
        return {}


class ConfigError(EdgeproxyError, ValueError):
    origin = "config"

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


class StartupError(EdgeproxyError):
    origin = "startup"

    def __init__(self, cause: str, fix: str) -> None:
        super().__init__(f"{cause}; fix: {fix}")
        self.cause = cause
        self.fix = fix


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


class RequestTimeout(ClientError, TimeoutError):
    status = 408


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
        message, raw = scrub(message), scrub(raw)
        metadata: dict[str, Any] = {"provider_name": provider}
        if raw is not None:
            metadata["raw"] = raw
        super().__init__(message, metadata)
        self.provider = provider
        self.raw = raw
        self.upstream_status = upstream_status
        self.retry_after = retry_after

    @property
    def error_type(self) -> str:
        # The provider's own status says more than the 502 it becomes (a 429, a 529 overload).
        return _ERROR_TYPES.get(self.upstream_status) or super().error_type


class UpstreamTimeout(UpstreamError, asyncio.TimeoutError):
    @property
    def error_type(self) -> str:
        return "timeout"


class UpstreamConnectionError(UpstreamError, ConnectionError):
    pass


class UpstreamStatusError(UpstreamError):
    pass


class UpstreamProtocolError(UpstreamError, ValueError):
    pass


class Unavailable(EdgeproxyError):
    status = 503
    origin = "gateway"

    def __init__(self, message: str, metadata: dict[str, Any] | None = None,
                 retry_after: int = 0) -> None:
        super().__init__(message, metadata)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after else {}
