"""The one small interface every upstream wire format implements (SPEC §3).

The request path calls an adapter three ways and does all I/O itself (sans-IO, STYLE habit 4):

    call = adapter.build_request(req, body, target)     -> UpstreamCall(url, headers, body)
    adapter.parse_response(status, data)                -> OpenAI chat.completion fields
    decoder = adapter.stream_decoder(); decoder.feed(b) -> OpenAI chunk fields, as bytes arrive

The dicts returned hold only what the upstream decided: `choices` (with `finish_reason` already in
OpenAI's vocabulary and `native_finish_reason` the upstream's own) and `usage`. The request path adds
`id`, `object`, `created`, `model` and `provider`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import orjson

from ..errors import BadRequest, EdgeproxyError, UpstreamProtocolError

__all__ = [
    "Adapter",
    "Embedder",
    "Forwarder",
    "SSEParser",
    "StreamDecoder",
    "Target",
    "UpstreamCall",
    "count_at",
    "json_object",
    "str_at",
    "translated",
]


class Target(NamedTuple):
    """Where one attempt goes: the provider's base URL, its key, the endpoint's upstream model id.
    `reasoning`: the endpoint takes reasoning (its supported_parameters say so), so the request's
    reasoning is translated for it; `thinking`: the request named this model's :thinking variant."""

    base_url: str
    api_key: str
    model: str
    default_max_tokens: int
    reasoning: bool = True
    thinking: bool = False
    # Request members the endpoint does not take (routing.OPTIONAL_SAMPLING it does not list).
    drop: frozenset[str] = frozenset()


class UpstreamCall(NamedTuple):
    url: str
    headers: dict[str, str]
    body: bytes


class StreamDecoder(Protocol):
    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Bytes as they arrive (any split) -> OpenAI chunk fields, in order.

        A usage chunk is `{"choices": [], "usage": {...}}`. Raises UpstreamError (provider left
        empty; the caller fills it in) for an error event or an untranslatable event.
        """
        ...

    def close(self) -> list[dict[str, Any]]:
        """The upstream body ended: flush, or raise UpstreamProtocolError if it was cut short."""
        ...


class Adapter(Protocol):
    name: str
    #: False when build_request works on the raw body alone (the openai pass-through); the caller
    #: then skips decoding the request into a dict.
    needs_dict: bool

    def build_request(
        self, req: dict[str, Any] | None, body: bytes, target: Target, stream: bool
    ) -> UpstreamCall:
        """Translate an OpenAI chat request. `req` is the decoded body (None when the adapter says
        it needs none, see `needs_dict`), `body` the client's raw bytes."""
        ...

    def parse_response(self, status: int, data: bytes) -> dict[str, Any]:
        """A 2xx body -> {"choices": [...], "usage": {...}}; raises UpstreamProtocolError."""
        ...

    def parse_error(self, status: int, data: bytes) -> tuple[str, Any]:
        """A non-2xx body -> (a one-line message, the upstream's error object or text)."""
        ...

    def effective_status(self, status: int, raw: Any) -> int:
        """The HTTP status an error really means, where a vendor answers with another one."""
        ...

    def stream_decoder(self) -> StreamDecoder: ...


class Forwarder(Adapter, Protocol):
    """An adapter whose wire format is also a client dialect (openai, anthropic)."""

    def forward(self, body: bytes, target: Target, stream: bool) -> UpstreamCall:
        """The client's own body in this format, with the model (and stream flag) rewritten and
        the gateway-only members removed; everything else passes byte for byte."""
        ...


class Embedder(Adapter, Protocol):
    """An adapter that also serves embeddings (openai)."""

    def build_embeddings(self, body: bytes, target: Target) -> UpstreamCall: ...

    def parse_embeddings(self, status: int, data: bytes) -> dict[str, Any]:
        """A 2xx embeddings body -> {"data": the upstream's vectors as raw JSON (an orjson
        Fragment, written back as they came), "usage": {...}}."""
        ...


def translated(req: dict[str, Any] | None, build: Callable[[dict[str, Any]], Any]) -> bytes:
    """The JSON of `build(req)`, a translating adapter's body. A field of an unexpected type deep
    in the request is the client's fault: a 400 (BadRequest), never a 500."""
    if not isinstance(req, dict):
        raise BadRequest("the request body must be a JSON object")
    try:
        return orjson.dumps(build(req))
    except EdgeproxyError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise BadRequest(f"malformed request: {exc}") from None


def count_at(obj: Any, key: str, where: str) -> int:
    """A token count of an upstream's usage object (absent: 0); `where` names the object in the
    error (e.g. "anthropic: usage")."""
    value = obj.get(key) if isinstance(obj, dict) else None
    if value is None:
        return 0
    if type(value) is not int or value < 0:
        raise UpstreamProtocolError(f"{where}.{key} is not a token count")
    return value


def str_at(obj: dict[str, Any], key: str, where: str) -> str:
    """A required string member of an upstream's object."""
    value = obj.get(key)
    if not isinstance(value, str):
        raise UpstreamProtocolError(f"{where}: `{key}` missing or not a string")
    return value


def json_object(data: bytes, where: str) -> dict[str, Any]:
    """An upstream's JSON object, or UpstreamProtocolError naming `where` it came from."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError(f"{where} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise UpstreamProtocolError(f"{where} is not a JSON object")
    return obj


class SSEParser:
    """Incremental Server-Sent Events framing (WHATWG HTML §9.2.6): yields (event, data) pairs.

    Lines end in LF, CR or CRLF (Gemini sends CRLF); a blank line dispatches the event; comment
    lines (starting with ':') are dropped; several `data:` lines join with LF.
    """

    __slots__ = ("_buf", "_data", "_event")

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        buf = self._buf + chunk if self._buf else chunk
        # A CR at the very end may be the first half of a CRLF split across reads: hold it back.
        hold = b""
        if buf.endswith(b"\r"):
            buf, hold = buf[:-1], b"\r"
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        out: list[tuple[str, bytes]] = []
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl]
            start = nl + 1
            if not line:
                if self._data or self._event:
                    out.append((self._event or "message", b"\n".join(self._data)))
                self._event = ""
                self._data = []
                continue
            if line[0] == 58:  # ':' comment
                continue
            field, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if field == b"data":
                self._data.append(value)
            elif field == b"event":
                self._event = value.decode("utf-8", "replace")
        self._buf = buf[start:] + hold
        return out

    def pending(self) -> bool:
        """True when a partial event is buffered (the stream was cut mid-event)."""
        return bool(self._buf.strip() or self._data)
