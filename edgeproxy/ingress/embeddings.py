"""OpenAI embeddings, `POST /v1/embeddings` (SPEC §1.1, §5.3), over openai-protocol upstreams.

Follows the OpenAI API reference, "Embeddings › Create embeddings": `input` is a string, an array
of strings, an array of tokens or an array of token arrays, and may not be empty; `dimensions`,
`encoding_format` ("float" | "base64") and `user` are optional. The answer is
{"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model", "usage"}.

The client's body goes to the upstream as it is but for the model (`OpenAIAdapter.build_embeddings`);
the upstream's `data` comes back untouched, so a base64 answer stays base64. Billed per input token
at the endpoint's prompt price (SPEC §5.3).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import orjson

from ..errors import BadRequest, EdgeproxyError
from .base import Decoded, from_dict, load_object

if TYPE_CHECKING:
    from ..gateway import Generation

__all__ = ["CODEC"]

_ENCODINGS = ("float", "base64")
# What routing reads of the client's request; the rest is for the upstream only.
_ROUTING = ("model", "models", "route", "provider")
# The prompt estimate counts 4 characters a token (transforms.CHARS_PER_TOKEN): a token array of n
# tokens is described to it as 4·n characters.
_TOKEN_CHARS = " " * 4
_USAGE = ("prompt_tokens", "total_tokens", "cost", "is_byok")


def _is_token(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _input_text(value: Any) -> str:
    """The text of `input`, for the prompt estimate; BadRequest for an empty or malformed one."""
    if value is None:
        raise BadRequest("`input` is required: the text to embed")
    if isinstance(value, str):
        if not value:
            raise BadRequest("`input` is empty: send the text to embed")
        return value
    if value == []:
        raise BadRequest("`input` is empty: send the text to embed")
    if not isinstance(value, list):
        raise BadRequest("`input` must be a string, a list of strings, or token arrays")
    if all(isinstance(v, str) for v in value):
        if not all(value):
            raise BadRequest("`input` holds an empty string: every input must have text")
        return "\n".join(value)
    if all(_is_token(v) for v in value):
        return _TOKEN_CHARS * len(value)
    if all(isinstance(v, list) and v and all(_is_token(t) for t in v) for v in value):
        return _TOKEN_CHARS * sum(len(v) for v in value)
    raise BadRequest(
        "`input` must be a string, a list of strings, a list of token ids (integers >= 0) or a "
        "list of non-empty lists of token ids"
    )


def _check_options(doc: dict[str, Any]) -> None:
    dimensions = doc.get("dimensions")
    if dimensions is not None and not (_is_token(dimensions) and dimensions > 0):
        raise BadRequest("`dimensions` must be an integer >= 1")
    encoding = doc.get("encoding_format")
    if encoding is not None and encoding not in _ENCODINGS:
        raise BadRequest('`encoding_format` must be "float" or "base64"')
    user = doc.get("user")
    if user is not None and not isinstance(user, str):
        raise BadRequest("`user` must be a string")
    if doc.get("stream"):
        _no_stream()


def _no_stream() -> NoReturn:
    raise BadRequest("embeddings are not streamed: remove `stream`")


class _EmbeddingsCodec:
    name = "embeddings"

    def decode(self, body: bytes, headers: Mapping[str, str]) -> Decoded:
        doc = load_object(body)
        text = _input_text(doc.get("input"))
        _check_options(doc)
        # Routing, the context-length check, the credit reservation and the free-model limits all
        # act on the typed chat request, so the embeddings request is described to them as one
        # user message holding its input. This document is never sent anywhere: the upstream gets
        # the client's own body (`native`, `kind`).
        route_doc: dict[str, Any] = {k: doc[k] for k in _ROUTING if k in doc}
        route_doc["messages"] = [{"role": "user", "content": text}]
        return from_dict(route_doc, body=body, native="openai", kind="embeddings")

    def encode(self, result: dict[str, Any], gen: Generation) -> bytes:
        usage = result["usage"]
        return orjson.dumps({
            "object": "list",
            # The upstream's vectors as the JSON it sent (an orjson.Fragment: the adapter leaves
            # them unparsed), written back as they are.
            "data": result["data"],
            "model": gen.model,
            "usage": {k: usage[k] for k in _USAGE},
            "id": gen.id,
            "provider": gen.provider,
        })

    def stream_encoder(self, gen: Generation) -> NoReturn:
        # OpenAI's embeddings have no streamed form. `decode` refuses `stream: true` with a 400,
        # so the typed request never asks for a stream and the request path never calls this; it
        # exists because every codec has the same interface, and answers with that same 400
        # rather than invent an event stream no client would read.
        _no_stream()

    def error_body(self, exc: EdgeproxyError) -> bytes:
        return exc.to_body()


CODEC = _EmbeddingsCodec()
