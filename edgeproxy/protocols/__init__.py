"""Upstream wire formats, one module each, behind the interface of `base` (SPEC §3)."""

from __future__ import annotations

from .base import Adapter

__all__ = ["adapter_for"]

_ADAPTERS: dict[str, Adapter] = {}


def adapter_for(protocol: str) -> Adapter:
    """The adapter of a provider's `protocol`; built once, shared (adapters hold no state)."""
    a = _ADAPTERS.get(protocol)
    if a is None:
        if protocol == "openai":
            from .openai import OpenAIAdapter

            a = OpenAIAdapter()
        elif protocol == "anthropic":
            from .anthropic import AnthropicAdapter

            a = AnthropicAdapter()
        elif protocol == "gemini":
            from .gemini import GeminiAdapter

            a = GeminiAdapter()
        elif protocol == "openai-responses":
            from .openai_responses import ResponsesAdapter

            a = ResponsesAdapter()
        else:
            raise KeyError(protocol)
        _ADAPTERS[protocol] = a
    return a
