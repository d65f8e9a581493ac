"""The one small interface every client dialect implements (SPEC §3: the translation matrix).

A dialect codec sits at the edge of the request path and does no I/O (STYLE habit 4):

    decoded = codec.decode(body, headers)         client bytes -> one canonical request
    body    = codec.encode(result, gen)           canonical chat.completion -> the dialect's body
    enc     = codec.stream_encoder(gen)           canonical chunks -> the dialect's SSE bytes
    body    = codec.error_body(exc)               an EdgeproxyError -> the dialect's error body

The canonical forms are OpenAI chat's, because every upstream adapter (`protocols/`) already
translates to and from them:
  request  an OpenAI chat-completions request: `Decoded.route` is its typed view (what routing,
           billing and validation act on) and `Decoded.as_dict()` the whole of it as a dict (what a
           translating adapter reads, unknown fields included);
  result   a `chat.completion` dict: choices (message, finish_reason, native_finish_reason), usage
           (with cost and is_byok), id, created, model, provider, system_fingerprint;
  events   `chat.completion.chunk` dicts holding only `choices` (delta, finish_reason,
           native_finish_reason); the pipeline keeps usage and the framing fields apart.
Where the client's dialect is the upstream's own wire format (`Decoded.native`), the adapter takes
the client's bytes as they are, with only the model rewritten (OpenAI chat to an openai upstream).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from ..errors import BadRequest, EdgeproxyError
from ..schema import ChatRequest, convert_chat

if TYPE_CHECKING:
    from ..gateway import Generation

__all__ = ["Codec", "Decoded", "StreamEncoder", "from_dict", "load_object"]


class Decoded:
    """One client request in canonical form.

    `route` is the typed view of the OpenAI chat request. `doc`, when the codec built it, is the
    same request as a dict; the OpenAI chat codec leaves it to be parsed from `body` only when a
    translating adapter asks (`as_dict()`), so the pass-through path never builds it. `body` is the
    client's bytes, whatever the dialect (their size bounds the prompt estimate). `native` names
    the upstream protocol that takes `body` unchanged but for the model ("" when none does).
    `kind` is what the upstream is asked for: "chat" or "embeddings".
    """

    __slots__ = ("_openai", "body", "doc", "echo", "kind", "native", "route")

    def __init__(
        self,
        route: ChatRequest,
        *,
        doc: dict[str, Any] | None = None,
        body: bytes = b"",
        native: str = "",
        kind: str = "chat",
        echo: dict[str, Any] | None = None,
    ) -> None:
        self.route = route
        self.doc = doc
        self.body = body
        self.native = native
        self.kind = kind
        # What the dialect repeats back in its answer (the Responses object echoes the request's
        # settings); handed to the encoders as `gen.echo`.
        self.echo = echo
        self._openai: bytes | None = body if native == "openai" else None

    @property
    def stream(self) -> bool:
        return self.route.stream

    def as_dict(self) -> dict[str, Any]:
        """The canonical OpenAI chat request as a dict (parsed once, on first use)."""
        if self.doc is None:
            self.doc = load_object(self.body)
        return self.doc

    def openai_body(self) -> bytes:
        """The canonical request as OpenAI chat JSON: the client's bytes when they are that."""
        if self._openai is None:
            self._openai = orjson.dumps(self.as_dict())
        return self._openai

    def replace(self, doc: dict[str, Any], route: ChatRequest) -> None:
        """A transform (middle-out) rewrote the request: the client's bytes no longer apply."""
        self.doc = doc
        self.route = route
        self.body = b""
        self.native = ""
        self._openai = None


def from_dict(doc: dict[str, Any], *, body: bytes = b"", native: str = "",
              kind: str = "chat", echo: dict[str, Any] | None = None) -> Decoded:
    """A codec's canonical request dict -> Decoded, validated as an OpenAI chat request would be
    (a wrong type or value is a 400 naming the field)."""
    return Decoded(convert_chat(doc), doc=doc, body=body, native=native, kind=kind, echo=echo)


def load_object(body: bytes) -> dict[str, Any]:
    """A client's JSON body, which must be an object; BadRequest (400) otherwise."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON body: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("the request body must be a JSON object")
    return doc


class StreamEncoder(Protocol):
    """Canonical chunks of one streamed request -> the dialect's SSE bytes. Stateful, one per
    request. `gen` (given to the codec) carries id, created, model and the serving provider, read
    at each call: a fallback may change provider and model before content has gone out.

    Before the first content byte an attempt may fail and the next one start again with its own
    role-only chunk: a repeated opening must not open a second message.
    """

    def chunks(self, chunks: list[dict[str, Any]]) -> bytes:
        """Canonical chunk dicts (`choices` only) -> bytes to send (b"" for none)."""
        ...

    def finish(self, usage: dict[str, Any]) -> bytes:
        """The upstream finished: the usage (with cost) and the dialect's closing events."""
        ...

    def error(self, exc: EdgeproxyError) -> bytes:
        """The stream fails after its 200 head went out: the dialect's error events, closing."""
        ...


class Codec(Protocol):
    #: The dialect's name, as metrics and the translation matrix show it.
    name: str

    def decode(self, body: bytes, headers: Mapping[str, str]) -> Decoded:
        """Client bytes -> canonical request; BadRequest (400) for anything malformed."""
        ...

    def encode(self, result: dict[str, Any], gen: Generation) -> bytes:
        """A canonical chat.completion (framing fields and usage filled in) -> response body."""
        ...

    def stream_encoder(self, gen: Generation) -> StreamEncoder: ...

    def error_body(self, exc: EdgeproxyError) -> bytes:
        """An error in the dialect's own shape; the HTTP status stays `exc.status`."""
        ...
