"""The `openai` wire format: a near-zero-copy pass-through (SPEC §3).

The client's body is split into its top-level members as raw JSON slices (msgspec.Raw); only `model`
and `stream_options` are replaced and the OpenRouter-only members removed, then the slices are joined
again. Messages and tools are never decoded into Python objects on this path, but in the rare
request that carries what OpenAI would refuse in them (prompt-caching marks, earlier turns'
reasoning). OpenRouter's `reasoning` becomes OpenAI's `reasoning_effort`.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from .. import reasoning
from ..errors import UpstreamProtocolError, UpstreamStatusError
from .base import SSEParser, Target, UpstreamCall

__all__ = ["OpenAIAdapter", "error_message"]

# OpenRouter's request members (its ChatRequest, openrouter.ai/openapi.yaml) that the gateway
# reads or does not offer and OpenAI's API has not: OpenAI answers 400 to an unknown argument, so
# none of them is forwarded. The one list every openai-protocol request goes through, last
# (`_post`): a step that maps one onto the upstream's own field (`_reasoning`: reasoning_effort)
# has read it by then.
_GATEWAY_ONLY = frozenset((
    "models", "route", "provider", "transforms", "usage", "plugins", "session_id", "reasoning",
    "include_reasoning", "debug", "trace", "image_config", "prompt_cache_options",
    "stop_server_tools_when",
))
_INCLUDE_USAGE = msgspec.Raw(b'{"include_usage":true}')
# OpenRouter's reasoning members (edgeproxy.reasoning) and those of earlier assistant turns.
_REASONING = b'"reasoning'  # how those of messages begin
_REASONING_MEMBERS = ("reasoning", "reasoning_effort", "include_reasoning")
_MESSAGE_REASONING = ("reasoning", "reasoning_details", "reasoning_content")
_CACHE_CONTROL = b'"cache_control"'
_top_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_encoder = msgspec.json.Encoder()
_JSON = "application/json"


def error_message(data: bytes, limit: int = 2000) -> tuple[str, Any]:
    """An OpenAI-style error body -> (message, raw error object or text)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        text = data[:limit].decode("utf-8", "replace")
        return text.strip() or "empty body", text
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        msg = err.get("message") or err.get("type") or "error"
        return str(msg)[:limit], err
    if isinstance(err, str):
        return err[:limit], doc
    return str(doc)[:limit], doc


def _members(body: bytes, target: Target) -> dict[str, msgspec.Raw]:
    """The client's top-level members as raw slices, the model rewritten."""
    top = _top_decoder.decode(body)
    top["model"] = msgspec.Raw(_encoder.encode(target.model))
    if _CACHE_CONTROL in body:  # rare: only then are messages and tools decoded
        _drop_cache_control(top)
    return top


def _drop_cache_control(top: dict[str, msgspec.Raw]) -> None:
    """Remove Anthropic-style prompt-caching marks (top-level, on messages, content parts and
    tools). OpenAI caches prompts by itself and has no such member; strict OpenAI-compatible
    upstreams answer 400 to it (e.g. github.com/QuantumNous/new-api/issues/5982), and OpenRouter
    too drops it toward OpenAI (openrouter.ai/docs/guides/best-practices/prompt-caching)."""
    top.pop("cache_control", None)
    for key in ("messages", "tools"):
        if key not in top or _CACHE_CONTROL not in bytes(top[key]):
            continue
        items = orjson.loads(bytes(top[key]))
        for item in items if isinstance(items, list) else ():
            if not isinstance(item, dict):
                continue
            item.pop("cache_control", None)
            content = item.get("content")
            for part in content if isinstance(content, list) else ():
                if isinstance(part, dict):
                    part.pop("cache_control", None)
        top[key] = msgspec.Raw(orjson.dumps(items))


def _reasoning(top: dict[str, msgspec.Raw], target: Target) -> None:
    """OpenRouter's reasoning -> OpenAI's `reasoning_effort` ("Reasoning models": effort only),
    for an endpoint that takes reasoning; for any other, nothing of it (OpenAI answers 400 to
    `reasoning_effort` on a model without reasoning, and to unknown members everywhere). Earlier
    turns' reasoning on assistant messages is dropped too: OpenAI keeps none of it in chat, and
    DeepSeek's API refuses its own reasoning_content sent back."""
    req = {k: msgspec.json.decode(top.pop(k)) for k in _REASONING_MEMBERS if k in top}
    if target.reasoning:
        limit = next((msgspec.json.decode(top[k]) for k in ("max_completion_tokens",
                                                              "max_tokens") if k in top),
                     target.default_max_tokens)
        effort = reasoning.openai_effort(reasoning.ask(req, target.thinking),
                                         limit if type(limit) is int else 0)
        if effort is not None:
            top["reasoning_effort"] = msgspec.Raw(_encoder.encode(effort))
    messages = top.get("messages")
    if messages is not None and _REASONING in bytes(messages):
        items = orjson.loads(bytes(messages))
        for item in items if isinstance(items, list) else ():
            if isinstance(item, dict):
                for key in _MESSAGE_REASONING:
                    item.pop(key, None)
        top["messages"] = msgspec.Raw(orjson.dumps(items))


def _post(path: str, top: dict[str, msgspec.Raw], target: Target) -> UpstreamCall:
    """The request, without the gateway-only members and those the endpoint does not take."""
    # (a set intersected with the few members a request has: ~0.2 µs when there is none)
    for key in _GATEWAY_ONLY.intersection(top):
        del top[key]
    for key in target.drop.intersection(top):
        del top[key]
    headers = {"Content-Type": _JSON}
    if target.api_key:
        headers["Authorization"] = "Bearer " + target.api_key
    return UpstreamCall(target.base_url + path, headers, _encoder.encode(top))


class OpenAIAdapter:
    name = "openai"
    needs_dict = False

    def build_request(
        self, req: dict[str, Any] | None, body: bytes, target: Target, stream: bool
    ) -> UpstreamCall:
        top = _members(body, target)
        if target.thinking or b"reasoning" in body:  # rare: only then are its members decoded
            _reasoning(top, target)
        if stream:
            # Usage is always reported (SPEC §1.1), so the upstream is always asked for it.
            top["stream_options"] = _INCLUDE_USAGE
        else:
            top.pop("stream_options", None)
        return _post("/chat/completions", top, target)

    def forward(self, body: bytes, target: Target, stream: bool) -> UpstreamCall:
        return self.build_request(None, body, target, stream)

    def build_embeddings(self, body: bytes, target: Target) -> UpstreamCall:
        """The client's embeddings request ("Embeddings › Create embeddings") as it is, but for
        the model and the gateway-only members."""
        return _post("/embeddings", _members(body, target), target)

    def parse_embeddings(self, status: int, data: bytes) -> dict[str, Any]:
        """The upstream's embeddings object: `data` as the JSON the upstream sent (an
        orjson.Fragment, never parsed: four vectors of 1536 floats are ~80 KB) and `usage`, which
        billing reads (SPEC §5.3: per input token), with `completion_tokens` set to 0: an
        embedding generates none."""
        where = "upstream embeddings answer"
        try:
            top = _top_decoder.decode(data)
        except msgspec.ValidationError:
            raise UpstreamProtocolError(f"{where} is not a JSON object") from None
        except msgspec.DecodeError:
            raise UpstreamProtocolError(f"{where} is not valid JSON") from None
        vectors = top.get("data")
        if vectors is None or memoryview(vectors)[:1] != b"[":
            raise UpstreamProtocolError(
                f"{where} has no data list", raw=data[:500].decode("utf-8", "replace"))
        doc: dict[str, Any] = {"data": orjson.Fragment(bytes(vectors))}
        if "usage" in top:
            usage = doc["usage"] = msgspec.json.decode(top["usage"])
            if isinstance(usage, dict):
                usage["completion_tokens"] = 0
        return doc

    def parse_response(self, status: int, data: bytes) -> dict[str, Any]:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamProtocolError(
                f"upstream answered invalid JSON: {exc}", raw=data[:500].decode("utf-8", "replace")
            ) from None
        choices = doc.get("choices") if isinstance(doc, dict) else None
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise UpstreamProtocolError(
                "upstream answer has no choices", raw=data[:500].decode("utf-8", "replace")
            )
        for c in choices:
            c.setdefault("native_finish_reason", c.get("finish_reason"))
            _reasoning_content(c.get("message"))
        return doc

    def parse_error(self, status: int, data: bytes) -> tuple[str, Any]:
        return error_message(data)

    def effective_status(self, status: int, raw: Any) -> int:
        return status

    def stream_decoder(self) -> OpenAIStreamDecoder:
        return OpenAIStreamDecoder()


def _reasoning_content(part: Any) -> None:
    """DeepSeek, vLLM and others return reasoning text as `reasoning_content`; OpenRouter's (and
    so the gateway's) field is `reasoning`."""
    if isinstance(part, dict) and "reasoning_content" in part:
        text = part.pop("reasoning_content")
        if isinstance(text, str) and text and not part.get("reasoning"):
            part["reasoning"] = text


class OpenAIStreamDecoder:
    __slots__ = ("_done", "_sse")

    def __init__(self) -> None:
        self._sse = SSEParser()
        self._done = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        out = []
        for _event, payload in self._sse.feed(data):
            if self._done:
                continue
            if payload == b"[DONE]":
                self._done = True
                continue
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise UpstreamProtocolError(
                    "upstream stream carried invalid JSON",
                    raw=payload[:500].decode("utf-8", "replace"),
                ) from None
            if not isinstance(chunk, dict):
                raise UpstreamProtocolError("upstream stream event is not an object", raw=chunk)
            if "error" in chunk and not chunk.get("choices"):
                msg, raw = error_message(payload)
                raise UpstreamStatusError(msg, raw=raw)
            choices = chunk.get("choices")
            if not isinstance(choices, list):
                raise UpstreamProtocolError("upstream chunk has no choices", raw=chunk)
            for c in choices:
                if isinstance(c, dict):
                    if c.get("finish_reason") is not None:
                        c.setdefault("native_finish_reason", c["finish_reason"])
                    _reasoning_content(c.get("delta"))
            out.append(chunk)
        return out

    def close(self) -> list[dict[str, Any]]:
        if not self._done:
            raise UpstreamProtocolError("upstream stream ended before [DONE]")
        return []
