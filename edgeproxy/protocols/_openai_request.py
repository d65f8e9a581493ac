"""Reading pieces of an OpenAI chat request, shared by the adapters that translate it."""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import BadRequest

__all__ = ["data_url", "tool_arguments"]


def data_url(url: str) -> tuple[str, str]:
    """'data:<mime>;base64,<data>' -> (mime, data)."""
    header, sep, data = url[5:].partition(",")
    mime, _, params = header.partition(";")
    if not sep or "base64" not in params.split(";") or not mime or not data:
        raise BadRequest("data URLs must be of the form data:<media type>;base64,<data>")
    return mime, data


def tool_arguments(raw: Any) -> dict[str, Any]:
    """OpenAI's function.arguments (a JSON string) -> the object both Anthropic's tool_use
    `input` and Gemini's functionCall `args` carry."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        raise BadRequest("tool_calls[].function.arguments must be a JSON string")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("tool_calls[].function.arguments is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("tool_calls[].function.arguments must encode a JSON object")
    return value
