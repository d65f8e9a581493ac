"""Typed views of the API bodies the gateway reads; decoders built once at import (STYLE habit 5).

Only the fields the gateway acts on are declared. Everything else in a request passes through to
the upstream untouched (the openai adapter forwards the client's own bytes).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec

from .errors import BadRequest

__all__ = ["ChatRequest", "Message", "ProviderPrefs", "Reasoning", "convert_chat", "decode_chat"]

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
# Bounds keep every count inside the router's int64 arithmetic; no model comes near them.
PosInt = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
# Seconds or tokens per second: a performance preference (`provider.preferred_*`).
Figure = Annotated[float, msgspec.Meta(ge=0, le=1e9)]
_PRICE_CAP = Decimal(1_000_000_000)


# The objects below are OpenRouter's own (openrouter.ai/openapi.yaml: ProviderPreferences and the
# schemas it names). A member the gateway does not know is ignored, not a 400 (SPEC §1.1: a client
# built against a newer schema is still served); null is the same as leaving a member out.


class MaxPrice(msgspec.Struct):
    """`provider.max_price`: USD per 1M prompt / completion tokens, per request, per image, per
    audio unit. OpenRouter's schema has strings ("1.5"); numbers are taken too, both read exactly."""

    prompt: Decimal | None = None
    completion: Decimal | None = None
    request: Decimal | None = None
    image: Decimal | None = None
    audio: Decimal | None = None

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            v = getattr(self, name)
            if v is not None and not (v.is_finite() and 0 <= v <= _PRICE_CAP):
                raise ValueError(f"max_price.{name} must be a USD amount from 0 to 1e9, got {v}")


class Percentiles(msgspec.Struct):
    """PercentileLatencyCutoffs (seconds) / PercentileThroughputCutoffs (tokens/s)."""

    p50: Figure | None = None
    p75: Figure | None = None
    p90: Figure | None = None
    p99: Figure | None = None


# ProviderSort; "exacto" (quality-ranked providers) is in OpenRouter's enum but not offered here:
# routing answers it with a 400 that says so.
SortBy = Literal["price", "throughput", "latency", "exacto"]


class SortConfig(msgspec.Struct):
    """ProviderSortConfig: partition "model" (the default) ranks each model of `models` apart, the
    primary's endpoints first; "none" ranks the endpoints of all of them together."""

    by: SortBy | None = None
    partition: Literal["model", "none"] | None = None


class ProviderPrefs(msgspec.Struct):
    """The request's `provider` object (ProviderPreferences; how routing reads it: routing.py)."""

    order: list[str] | None = None
    only: list[str] | None = None
    ignore: list[str] | None = None
    allow_fallbacks: bool | None = None  # None: true
    require_parameters: bool | None = None
    data_collection: Literal["allow", "deny"] | None = None
    zdr: bool | None = None
    enforce_distillable_text: bool | None = None
    quantizations: list[str] | None = None
    sort: SortBy | SortConfig | None = None
    max_price: MaxPrice | None = None
    preferred_max_latency: Figure | Percentiles | None = None  # seconds; a number is the p50
    preferred_min_throughput: Figure | Percentiles | None = None  # tokens/s; idem


class Plugin(msgspec.Struct):
    """One of OpenRouter's `plugins`: which, and whether it is on; its options are not read."""

    id: str
    enabled: bool | None = None


# OpenRouter's ReasoningEffort (most to least; "none" turns reasoning off), OpenAI's own too.
Effort = Literal["max", "xhigh", "high", "medium", "low", "minimal", "none"]


class Reasoning(msgspec.Struct, omit_defaults=True):
    """OpenRouter's `reasoning` (edgeproxy.reasoning resolves it); newer members pass through."""

    effort: Effort | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] | None = None
    exclude: bool = False
    enabled: bool | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


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
    # An assistant turn's reasoning as the gateway returned it, sent back for the next turn.
    reasoning: str | None = None
    reasoning_details: list[dict[str, Any]] | None = None


class UsageOpt(msgspec.Struct):
    include: bool = False


class ChatRequest(msgspec.Struct):
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=512)] | None = None
    models: Annotated[list[str], msgspec.Meta(max_length=16)] | None = None
    route: Literal["fallback", "sort"] | None = None  # deprecated: sort.partition model / none
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
    plugins: list[Plugin] | None = None
    reasoning: Reasoning | None = None
    reasoning_effort: Effort | None = None
    include_reasoning: bool | None = None
    # Sticky routing's conversation id (routing.stick; OpenRouter: at most 256 characters).
    session_id: Annotated[str, msgspec.Meta(max_length=256)] | None = None


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
