"""Legacy OpenAI completions, `POST /v1/completions` (SPEC §1.1), mapped onto chat.

Follows the OpenAI API reference, "Completions (legacy) › Create completion": the request carries a
`prompt` instead of messages, and the answer is a `text_completion` object whose choices hold
`text`; a stream is a series of objects of that same shape, then `data: [DONE]`.

Every upstream is reached through chat, whatever its protocol: the prompt becomes the one user
message, and the answer's message content becomes the choice's `text`. The models the gateway
serves are chat models, which vendors do not answer on a /completions endpoint. Passing the body
through to an openai upstream's own /completions (for instruct models) is future work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from ..errors import BadRequest, EdgeproxyError
from .base import Decoded, from_dict, load_object
from .openai_chat import ChatStream

if TYPE_CHECKING:
    from ..gateway import Generation

__all__ = ["CODEC", "CompletionStream"]

# "max_tokens … Defaults to 16" (Completions reference); chat has no such default.
_DEFAULT_MAX_TOKENS = 16
# Members that mean the same in a chat request, copied as they are (chat validates them), and
# OpenRouter's request extras (SPEC §1.1).
_COPIED = (
    "model", "temperature", "top_p", "n", "stop", "seed", "presence_penalty",
    "frequency_penalty", "logit_bias", "user", "stream", "stream_options",
    "models", "provider", "route", "transforms", "usage", "session_id", "reasoning", "plugins",
)


def _prompt(value: Any) -> str:
    """`prompt` may be "a string, array of strings, array of tokens, or array of token arrays":
    one chat turn holds one text, so only a string (or a list of exactly one) is taken."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if isinstance(value, str):
        if not value:
            raise BadRequest("`prompt` is empty: send the text to complete")
        return value
    if value is None:
        raise BadRequest("`prompt` is required: the text to complete")
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        raise BadRequest(
            f"`prompt` holds {len(value)} prompts; several prompts in one request are not "
            "supported: send one prompt per request"
        )
    if isinstance(value, list) and value and all(isinstance(p, int | list) for p in value):
        raise BadRequest("token-array prompts are not supported: send the prompt as text")
    raise BadRequest("`prompt` must be a string")


def _refuse_unsupported(doc: dict[str, Any]) -> None:
    """What chat cannot do is a 400 that says so (SPEC §1.1: never silently ignored)."""
    if doc.get("suffix"):
        raise BadRequest("`suffix` (text insertion) is not supported on /completions")
    if doc.get("echo"):
        raise BadRequest("`echo` is not supported on /completions")
    best_of = doc.get("best_of")
    if best_of is not None and best_of != 1:
        raise BadRequest("`best_of` other than 1 is not supported on /completions")
    if doc.get("logprobs") is not None:
        raise BadRequest("`logprobs` is not supported on /completions")


def _text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else ""


class CompletionStream(ChatStream):
    """`text_completion` chunks, a usage chunk (`choices: []`) and `[DONE]`, as OpenRouter streams
    legacy completions (the usage chunk carries `cost`, SPEC §1.1)."""

    __slots__ = ()
    _object = "text_completion"
    _error_choice: ClassVar[dict[str, Any]] = {"index": 0, "text": "", "logprobs": None}

    def chunks(self, chunks: list[dict[str, Any]]) -> bytes:
        out = []
        for chunk in chunks:
            choices = []
            for c in chunk.get("choices") or ():
                delta = c.get("delta") or {}
                text = delta.get("content")
                finish = c.get("finish_reason")
                # A role-only opening (repeated by a fallback) or reasoning has no text to show.
                if not text and finish is None:
                    continue
                choice = {"index": c.get("index", 0), "text": text or "",
                          "finish_reason": finish, "logprobs": None}
                if finish is not None:
                    choice["native_finish_reason"] = c.get("native_finish_reason")
                choices.append(choice)
            if choices:
                out.append(self._frame({"choices": choices}))
        return b"".join(out)


class _CompletionsCodec:
    name = "completions"

    def decode(self, body: bytes, headers: Mapping[str, str]) -> Decoded:
        doc = load_object(body)
        prompt = _prompt(doc.get("prompt"))
        _refuse_unsupported(doc)
        chat = {k: doc[k] for k in _COPIED if k in doc}
        chat["messages"] = [{"role": "user", "content": prompt}]
        max_tokens = doc.get("max_tokens")
        chat["max_tokens"] = _DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
        return from_dict(chat, body=body)

    def encode(self, result: dict[str, Any], gen: Generation) -> bytes:
        choices = [
            {"index": c.get("index", i), "text": _text(c.get("message")),
             "finish_reason": c.get("finish_reason"), "logprobs": None,
             "native_finish_reason": c.get("native_finish_reason")}
            for i, c in enumerate(result.get("choices") or ())
        ]
        return orjson.dumps({
            "id": gen.id,
            "object": "text_completion",
            "created": gen.created,
            "model": gen.model,
            "provider": gen.provider,
            "choices": choices,
            "usage": result.get("usage"),
            "system_fingerprint": result.get("system_fingerprint"),
        })

    def stream_encoder(self, gen: Generation) -> CompletionStream:
        return CompletionStream(gen)

    def error_body(self, exc: EdgeproxyError) -> bytes:
        return exc.to_body()


CODEC = _CompletionsCodec()
