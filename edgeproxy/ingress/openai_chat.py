"""OpenAI chat completions, the canonical dialect itself (SPEC §1.1, §4).

Decoding reads only the typed view the gateway acts on; the client's bytes stay the request an
openai upstream receives (pass-through), and are parsed into a dict only if a translating adapter
needs one. Encoding adds the framing fields to what the pipeline returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from ..errors import EdgeproxyError
from ..schema import decode_chat
from .base import Decoded

if TYPE_CHECKING:
    from ..gateway import Generation

__all__ = ["CODEC", "DONE", "ChatStream"]

DONE = b"data: [DONE]\n\n"


class ChatStream:
    """`chat.completion.chunk` frames, a usage chunk (`choices: []`) and `[DONE]`."""

    __slots__ = ("gen",)
    _object = "chat.completion.chunk"
    #: The one choice of the closing error chunk (SPEC §4), without its finish reason.
    _error_choice: ClassVar[dict[str, Any]] = {"index": 0, "delta": {}}

    def __init__(self, gen: Generation) -> None:
        self.gen = gen

    def _frame(self, chunk: dict[str, Any]) -> bytes:
        gen = self.gen
        chunk["id"] = gen.id
        chunk["object"] = self._object
        chunk["created"] = gen.created
        chunk["model"] = gen.model
        chunk["provider"] = gen.provider
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def chunks(self, chunks: list[dict[str, Any]]) -> bytes:
        return b"".join([self._frame(c) for c in chunks])

    def finish(self, usage: dict[str, Any]) -> bytes:
        return self._frame({"choices": [], "usage": usage}) + DONE

    def error(self, exc: EdgeproxyError) -> bytes:
        # The openai SDK raises APIError on a chunk with `error`; OpenRouter's SDKs require
        # `metadata.error_type` on it (its mid-stream error shape, "Errors and debugging").
        return self._frame({
            "choices": [{**self._error_choice, "finish_reason": "error",
                         "native_finish_reason": None}],
            "error": {"code": exc.status, "message": exc.message,
                      "metadata": {**exc.metadata, "error_type": exc.error_type}},
        }) + DONE


class _ChatCodec:
    name = "openai_chat"

    def decode(self, body: bytes, headers: Mapping[str, str]) -> Decoded:
        return Decoded(decode_chat(body), body=body, native="openai")

    def encode(self, result: dict[str, Any], gen: Generation) -> bytes:
        return orjson.dumps(result)

    def stream_encoder(self, gen: Generation) -> ChatStream:
        return ChatStream(gen)

    def error_body(self, exc: EdgeproxyError) -> bytes:
        return exc.to_body()


CODEC = _ChatCodec()
