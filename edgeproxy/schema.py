"""Typed views of the API bodies the gateway reads; decoders built once at import (STYLE habit 5).

Only the fields the gateway acts on are declared. Everything else in a request passes through to
the upstream untouched (the openai adapter forwards the client's own bytes).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from .errors import BadRequest

__all__ = ["ChatRequest", "Message", "ProviderPrefs", "convert_chat", "decode_chat"]

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
# Bounds keep every count inside the router's int64 arithmetic; no model comes near them.
PosInt = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
Price = Annotated[float, msgspec.Meta(ge=0, le=1e9)]


class MaxPrice(msgspec.Struct, forbid_unknown_fields=True):
    """USD per 1M tokens (OpenRouter's `provider.max_price`)."""

    prompt: Price | None = None
    completion: Price | None = None
    request: Price | None = None
    image: Price | None = None


class ProviderPrefs(msgspec.Struct, forbid_unknown_fields=True):
    order: list[str] | None = None
    only: list[str] | None = None
    ignore: list[str] | None = None
    allow_fallbacks: bool = True
    require_parameters: bool = False
    data_collection: Literal["allow", "deny"] | None = None
    zdr: bool | None = None
    quantizations: list[str] | None = None
    sort: Literal["price", "throughput", "latency"] | None = None
    max_price: MaxPrice | None = None


class Function(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(msgspec.Struct):
    type: Literal["function"]
    function: Function


class Message(msgspec.Struct):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    # A string or a list of content parts ({"type": "text" | "image_url" | ...}).
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class UsageOpt(msgspec.Struct):
    include: bool = False


class ChatRequest(msgspec.Struct):
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=512)] | None = None
    models: Annotated[list[str], msgspec.Meta(max_length=16)] | None = None
    route: Literal["fallback"] | None = None
    provider: ProviderPrefs | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: PosInt | None = None
    max_completion_tokens: PosInt | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=16)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    usage: UsageOpt | None = None
    user: str | None = None
    transforms: list[str] | None = None


_chat_decoder = msgspec.json.Decoder(ChatRequest)


def _bad(exc: msgspec.DecodeError) -> BadRequest:
    msg = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        return BadRequest(f"invalid request: {msg}")
    return BadRequest(f"malformed JSON body: {msg}")


def decode_chat(body: bytes) -> ChatRequest:
    try:
        return _chat_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise _bad(exc) from None


def convert_chat(doc: dict[str, Any]) -> ChatRequest:
    """The typed view of a chat request a dialect codec built as a dict."""
    try:
        return msgspec.convert(doc, ChatRequest)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid request: {exc}") from None
