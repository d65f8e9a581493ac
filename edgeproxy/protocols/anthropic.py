"""OpenAI chat completions <-> Anthropic Messages API (SPEC §3, §4), sans-IO.

Sources, cited below by section name:
  [messages]  Messages API reference, POST /v1/messages (platform.claude.com/docs/en/api/messages)
  [streaming] "Streaming messages" (platform.claude.com/docs/en/build-with-claude/streaming)
  [stops]     "Stop reasons and fallback" (.../build-with-claude/handling-stop-reasons)
  [tools]     "Tool use" guide: tool_use / tool_result blocks, tool_choice
  [vision]    "Vision" guide: image blocks with a base64 or url source
  [errors]    "Errors" (.../api/errors): {"type": "error", "error": {"type", "message"}}
  [thinking]  "Building with extended thinking" (.../build-with-claude/extended-thinking):
              thinking {budget_tokens}, feature compatibility, thinking / redacted_thinking
              blocks and their signatures, preserving them in tool-use loops

The request side is plain functions over dicts; the response side is `parse_response` and one small
state machine, `AnthropicStreamDecoder`, fed raw bytes through the shared `SSEParser`.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import orjson

from .. import reasoning
from ..errors import (
    BadRequest,
    EdgeproxyError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from ..transforms import CHARS_PER_TOKEN
from ._openai_request import data_url, tool_arguments
from .base import SSEParser, Target, UpstreamCall, count_at, json_object, str_at, translated

__all__ = ["ANTHROPIC_VERSION", "AnthropicAdapter", "AnthropicStreamDecoder"]

#: [messages] "anthropic-version" header; the body shapes below are those of this version.
ANTHROPIC_VERSION = "2023-06-01"

# [stops] quick-reference table -> OpenAI's vocabulary. pause_turn (a server-tool loop paused) ends
# the turn as far as the client can tell; model_context_window_exceeded is a truncation. Anything
# not listed maps to "stop" and keeps its own name in native_finish_reason.
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# [tools] tool_choice: OpenAI string form -> Anthropic object.
_TOOL_CHOICE = {"auto": "auto", "none": "none", "required": "any"}

# [errors] error.type -> the HTTP status it stands for (a streamed `error` event has no status of its
# own; "overloaded_error ... would normally correspond to an HTTP 529" [streaming]). Every one stays
# retryable (UpstreamError's default): another endpoint may well succeed where this one failed.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

# response_format json_schema has no native twin in the 2023-06-01 Messages API, so it rides on tool
# use ([tools] "JSON mode"): the schema becomes the input_schema of one extra tool, named after the
# schema, that the model is forced to call; the tool_use `input` it produces is the answer. The
# response side turns that tool_use back into message content (JSON text) with finish_reason "stop"
# (native_finish_reason stays "tool_use"). The adapter interface carries no per-request state to the
# response side, so the tool is recognised by this reserved prefix on its name.
JSON_TOOL_PREFIX = "json_schema__"
_JSON_TOOL_DESCRIPTION = (
    "Give your final answer by calling this tool: its input is the answer, "
    "a JSON value matching the schema."
)
# json_object mode has no schema to force; an instruction is the documented way ([messages] system).
_JSON_OBJECT_INSTRUCTION = (
    "Respond with a single valid JSON object only: no prose, no Markdown code fences."
)
_TOOL_NAME_MAX = 64  # [tools] name: ^[a-zA-Z0-9_-]{1,64}$
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_-]")  # [tools] tool_use.id: ^[a-zA-Z0-9_-]+$

# A client that speaks Messages itself is passed through (`forward`): its body is split into
# top-level raw JSON slices, and the members only the gateway reads (OpenRouter's extras, OpenAI's
# `user`) are removed, as the Messages API rejects unknown fields.
_GATEWAY_ONLY = ("models", "provider", "route", "transforms", "usage", "plugins", "session_id",
                 "reasoning", "user")
_top_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_raw_encoder = msgspec.json.Encoder()
_TRUE = msgspec.Raw(b"true")


class AnthropicAdapter:
    """Translate OpenAI chat completions to the Anthropic Messages API and back."""

    name = "anthropic"
    needs_dict = True

    def build_request(
        self, req: dict[str, Any] | None, body: bytes, target: Target, stream: bool
    ) -> UpstreamCall:
        """POST {base_url}/messages with the translated body. Raises BadRequest (400) for what the
        Messages API cannot express (audio input, invalid tool-call arguments, unknown roles)."""
        payload = translated(req, lambda r: build_messages_body(r, target, stream))
        headers = {
            "x-api-key": target.api_key,
            "anthropic-version": ANTHROPIC_VERSION,
            "content-type": "application/json",
        }
        return UpstreamCall(f"{target.base_url.rstrip('/')}/messages", headers, payload)

    def parse_response(self, status: int, data: bytes) -> dict[str, Any]:
        """A Message object -> {"choices": [...], "usage": {...}}."""
        return parse_message(json_object(data, "anthropic: response body"))

    def parse_error(self, status: int, data: bytes) -> tuple[str, Any]:
        """[errors] {"type": "error", "error": {"type", "message"}} -> ("anthropic: type: message",
        the error object); any other body -> its first 500 characters."""
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
            err = obj["error"]
            return f"anthropic: {err.get('type', 'error')}: {err.get('message', '')}", err
        text = data[:500].decode("utf-8", "replace").strip()
        return f"anthropic: HTTP {status}: {text or 'empty body'}", text or None

    def effective_status(self, status: int, raw: Any) -> int:
        return status

    def stream_decoder(self) -> AnthropicStreamDecoder:
        return AnthropicStreamDecoder()

    def forward(self, body: bytes, target: Target, stream: bool) -> UpstreamCall:
        """POST {base_url}/messages with the client's own Messages body (already validated by the
        ingress codec): messages, tools and every other member stay the client's bytes; only
        `model` and `stream` are set and the gateway-only members dropped. The answer is read by
        parse_response / stream_decoder like any other."""
        top = _top_decoder.decode(body)
        if "thinking" not in top and target.reasoning and (target.thinking or "reasoning" in top):
            _forward_thinking(top, target)
        for key in _GATEWAY_ONLY:
            top.pop(key, None)
        top["model"] = msgspec.Raw(_raw_encoder.encode(target.model))
        if stream:
            top["stream"] = _TRUE
        else:
            top.pop("stream", None)
        headers = {
            "x-api-key": target.api_key,
            "anthropic-version": ANTHROPIC_VERSION,
            "content-type": "application/json",
        }
        return UpstreamCall(
            f"{target.base_url.rstrip('/')}/messages", headers, _raw_encoder.encode(top)
        )


def _forward_thinking(top: dict[str, msgspec.Raw], target: Target) -> None:
    """A Messages body without `thinking` that asks for reasoning the OpenRouter way (`reasoning`
    or the :thinking variant): its [thinking] setting, as `build_messages_body` would set it
    (the client manages its own thinking blocks in the turns it sends)."""
    req: dict[str, Any] = {
        k: msgspec.json.decode(top[k])
        for k in ("reasoning", "max_tokens", "tool_choice", "temperature", "top_k", "top_p")
        if k in top}
    max_tokens = req.get("max_tokens")
    choice = req.get("tool_choice")
    if type(max_tokens) is not int or (
            isinstance(choice, dict) and choice.get("type") in ("any", "tool")):
        return
    budget = _budget(reasoning.ask(req, target.thinking), max_tokens)
    if budget is not None:
        out: dict[str, Any] = {
            k: v for k, v in req.items() if k in ("temperature", "top_k", "top_p")}
        _think(out, budget)
        for key in ("temperature", "top_k", "top_p", "thinking"):
            if key in out:
                top[key] = msgspec.Raw(_raw_encoder.encode(out[key]))
            else:
                top.pop(key, None)


# --------------------------------------------------------------------------- request: OpenAI -> Messages


def build_messages_body(req: dict[str, Any], target: Target, stream: bool) -> dict[str, Any]:
    """The Messages API body for one OpenAI chat request (a pure function; see the module notes)."""
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty array")
    max_tokens = _max_tokens(req, target)
    budget = _thinking_budget(req, target, max_tokens, messages)
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for msg in messages:
        if not isinstance(msg, dict):
            raise BadRequest("each message must be an object")
        role = msg.get("role")
        # [messages] there is no system role inside `messages`: system text is a top-level field.
        if role in ("system", "developer"):
            system.extend(_blocks(msg.get("content"), text_only=True))
            continue
        if role == "user":
            blocks = _blocks(msg.get("content"))
        elif role == "assistant":
            blocks = _assistant_blocks(msg, budget is not None)
        elif role == "tool":
            # [tools] a tool result is a tool_result block inside a *user* turn.
            role, blocks = "user", [_tool_result(msg)]
        else:
            raise BadRequest(f"unsupported message role: {role!r}")
        if not blocks:
            continue
        # [messages] turns alternate user/assistant: consecutive same-role messages become one turn
        # (this also gathers parallel tool results into the single user turn the API expects).
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    _finish_turns(turns)

    out: dict[str, Any] = {"model": target.model, "max_tokens": max_tokens}
    tools, tool_choice = _tools(req)
    response_format = req.get("response_format")
    if response_format is not None:
        tools, tool_choice = _response_format(response_format, tools, tool_choice, system)
    if system:
        # A plain string unless a block asks for prompt caching ([messages] system: string | blocks).
        if any("cache_control" in b for b in system):
            out["system"] = system
        else:
            out["system"] = "\n\n".join(b["text"] for b in system)
    out["messages"] = turns
    if tools:
        out["tools"] = tools
        if tool_choice is not None:
            out["tool_choice"] = tool_choice
    _sampling(req, out)
    if budget is not None:
        _think(out, budget)
    user = req.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}  # [messages] metadata.user_id
    if isinstance(req.get("cache_control"), dict):
        # OpenRouter's top-level form is Anthropic's own "automatic caching": the breakpoint goes
        # on the last cacheable block (platform.claude.com/docs/en/build-with-claude/prompt-caching).
        out["cache_control"] = req["cache_control"]
    if stream:
        out["stream"] = True
    return out


def _thinking_budget(
    req: dict[str, Any], target: Target, max_tokens: int, messages: list[Any]
) -> int | None:
    """budget_tokens of [thinking] for this request, or None to send no `thinking`.

    With no room for the 1024-token minimum below max_tokens, thinking stays off, as OpenRouter
    does (`_budget`). Thinking is also
    left off where [thinking] "Feature compatibility" forbids it: a forced tool (tool_choice any
    or tool, and so a json_schema answer, which rides on a forced tool) and an assistant prefill;
    and where a tool-use loop continues from an assistant turn whose signed thinking the client
    did not send back, which [thinking] "Preserving thinking blocks" requires first in that turn
    (the API itself turns thinking off when a turn toggles it)."""
    if not target.reasoning:
        return None
    budget = _budget(reasoning.ask(req, target.thinking), max_tokens)
    if budget is None:
        return None
    choice, fmt = req.get("tool_choice"), req.get("response_format")
    if choice == "required" or isinstance(choice, dict) or (
            isinstance(fmt, dict) and fmt.get("type") == "json_schema"):
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") == "assistant":
        return None
    if last.get("role") == "tool":
        turn = next((m for m in reversed(messages)
                     if isinstance(m, dict) and m.get("role") == "assistant"), None)
        if turn is None or not _thinking_blocks(turn):
            return None
    return budget


def _budget(asked: reasoning.Ask, max_tokens: int) -> int | None:
    """OpenRouter's thinking budget (reasoning.thinking_budget) kept below max_tokens, as
    [thinking] requires; None when reasoning is not on or no 1024-token budget fits."""
    if not asked.on:
        return None
    budget = min(reasoning.thinking_budget(asked, max_tokens), max_tokens - 1)
    return budget if budget >= reasoning.MIN_BUDGET else None


def _think(out: dict[str, Any], budget: int) -> None:
    """[thinking] on, with what it is incompatible with taken out: temperature and top_k (the
    default, 1 and none, is what thinking takes), top_p below 0.95 (raised to it)."""
    out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    out.pop("temperature", None)
    out.pop("top_k", None)
    if "top_p" in out:
        out["top_p"] = max(out["top_p"], 0.95)


def _thinking_blocks(msg: dict[str, Any]) -> list[dict[str, Any]]:
    """[thinking] the signed thinking and redacted_thinking blocks of an assistant turn, from the
    reasoning_details the gateway returned with it (Anthropic's own, in their order)."""
    blocks: list[dict[str, Any]] = []
    for item in reasoning.details_of(msg):
        if item.get("format") != reasoning.ANTHROPIC:
            continue
        kind = item.get("type")
        if kind == "reasoning.text" and isinstance(item.get("signature"), str) and item[
                "signature"]:
            text = item.get("text")
            blocks.append({"type": "thinking", "thinking": text if isinstance(text, str) else "",
                           "signature": item["signature"]})
        elif kind == "reasoning.encrypted" and isinstance(item.get("data"), str):
            blocks.append({"type": "redacted_thinking", "data": item["data"]})
    return blocks


def _max_tokens(req: dict[str, Any], target: Target) -> int:
    # [messages] max_tokens is required; OpenAI makes it optional, so the endpoint default fills in.
    for key in ("max_completion_tokens", "max_tokens"):
        value = req.get(key)
        if value is not None:
            if type(value) is not int or value < 1:
                raise BadRequest(f"{key} must be a positive integer")
            return value
    return target.default_max_tokens


def _number(req: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = req.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise BadRequest(
            f"{key} must be a number" if kind is not int else f"{key} must be an integer"
        )
    return value


def _sampling(req: dict[str, Any], out: dict[str, Any]) -> None:
    temperature = _number(req, "temperature", (int, float))
    if temperature is not None:
        # [messages] temperature ranges 0..1 where OpenAI allows 0..2: clamp rather than fail.
        out["temperature"] = min(max(float(temperature), 0.0), 1.0)
    top_p = _number(req, "top_p", (int, float))
    if top_p is not None:
        out["top_p"] = top_p
    top_k = _number(req, "top_k", int)  # OpenRouter extra; native in [messages]
    if top_k is not None:
        out["top_k"] = top_k
    stop = req.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        if not all(isinstance(s, str) for s in stop):
            raise BadRequest("stop must be a string or an array of strings")
        out["stop_sequences"] = stop


def _finish_turns(turns: list[dict[str, Any]]) -> None:
    for turn in turns:
        blocks = turn["content"]
        if turn["role"] == "user":
            # [tools] tool_result blocks must come first in their user turn.
            blocks.sort(key=lambda b: b.get("type") != "tool_result")
    # [messages] a final assistant turn is a prefill and may not end in whitespace.
    if turns and turns[-1]["role"] == "assistant":
        last = turns[-1]["content"][-1]
        if last.get("type") == "text":
            last["text"] = last["text"].rstrip()
            if not last["text"]:
                turns[-1]["content"].pop()
                if not turns[-1]["content"]:
                    turns.pop()
    for turn in turns:
        blocks = turn["content"]
        # One plain text block is sent as a string, the shorthand the [messages] examples use.
        if len(blocks) == 1 and blocks[0].get("type") == "text" and len(blocks[0]) == 2:
            turn["content"] = blocks[0]["text"]


def _blocks(content: Any, text_only: bool = False) -> list[dict[str, Any]]:
    """OpenAI message content (a string or content parts) -> Messages content blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise BadRequest("message content must be a string or an array of content parts")
    out: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            raise BadRequest("each content part must be an object")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise BadRequest("a text part needs a string `text`")
            if not text:
                continue  # [messages] text blocks must be non-empty
            block: dict[str, Any] = {"type": "text", "text": text}
        elif kind == "refusal":
            continue  # an earlier refusal carries nothing to replay
        elif text_only:
            raise BadRequest(f"{kind!r} parts are not supported in system or assistant messages")
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            block = _image_block(url)
        elif kind == "file":
            block = _document_block(part.get("file"))
        else:
            # input_audio and anything newer: the Messages API has no block for it.
            raise BadRequest(f"content parts of type {kind!r} are not supported by anthropic")
        cache_control = part.get("cache_control")
        if isinstance(cache_control, dict):
            block["cache_control"] = cache_control  # prompt caching breakpoints pass through
        out.append(block)
    return out



def _image_block(url: Any) -> dict[str, Any]:
    # [vision] an image block has a base64 source (media_type + data) or a url source.
    if not isinstance(url, str):
        raise BadRequest("image_url.url must be a string")
    if url.startswith("data:"):
        mime, data = data_url(url)
        return {"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise BadRequest("image_url.url must be an http(s) URL or a base64 data URL")


def _document_block(file: Any) -> dict[str, Any]:
    # [messages] document blocks take a base64 PDF; OpenAI's `file` part carries one as a data URL.
    file_url = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(file_url, str) or not file_url.startswith("data:"):
        raise BadRequest(
            "file parts need file_data as a base64 data URL (file ids are not supported)"
        )
    mime, data = data_url(file_url)
    if mime != "application/pdf":
        raise BadRequest(f"file parts of type {mime} are not supported by anthropic")
    return {"type": "document", "source": {"type": "base64", "media_type": mime, "data": data}}


def _safe_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest("tool call ids must be non-empty strings")
    # Ids minted by other providers may hold characters the API rejects; the same rewrite is applied
    # to tool_use.id and tool_result.tool_use_id, so the pairing survives.
    return _UNSAFE_ID.sub("_", value)



def _assistant_blocks(msg: dict[str, Any], thinking: bool) -> list[dict[str, Any]]:
    blocks = _blocks(msg.get("content"), text_only=True)
    if thinking:
        # [thinking] the turn's thinking goes back first, before its text and tool_use blocks.
        blocks[:0] = _thinking_blocks(msg)
    calls = msg.get("tool_calls")
    if calls is None:
        return blocks
    if not isinstance(calls, list):
        raise BadRequest("tool_calls must be an array")
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequest("each tool call needs function.name")
        # [tools] the assistant's tool call is a tool_use block with the arguments as an object.
        blocks.append(
            {
                "type": "tool_use",
                "id": _safe_id(call.get("id")),
                "name": fn["name"],
                "input": tool_arguments(fn.get("arguments")),
            }
        )
    return blocks


def _tool_result(msg: dict[str, Any]) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": _safe_id(msg.get("tool_call_id")),
    }
    content = msg.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    else:
        parts = _blocks(content)  # [tools] tool_result content may hold text and image blocks
        for part in parts:
            # [prompt caching] a breakpoint goes on the tool_result itself: the API refuses one
            # inside tool_result.content.
            if "cache_control" in part:
                block["cache_control"] = part.pop("cache_control")
        if parts:
            block["content"] = parts
    return block


def _tools(req: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    raw = req.get("tools")
    tools: list[dict[str, Any]] = []
    if raw is not None:
        if not isinstance(raw, list):
            raise BadRequest("tools must be an array")
        for tool in raw:
            fn = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(fn, dict) or tool.get("type", "function") != "function":
                raise BadRequest("only tools of type 'function' are supported")
            if not isinstance(fn.get("name"), str):
                raise BadRequest("each tool needs function.name")
            # [tools] {name, description, input_schema}; input_schema must be an object schema.
            entry: dict[str, Any] = {"name": fn["name"]}
            if isinstance(fn.get("description"), str):
                entry["description"] = fn["description"]
            params = fn.get("parameters")
            entry["input_schema"] = params if isinstance(params, dict) else {"type": "object"}
            # [prompt caching] a breakpoint on a tool caches the tool list up to it; OpenAI-format
            # clients put it beside `function` (Anthropic's own tools carry it on the tool).
            if isinstance(tool.get("cache_control"), dict):
                entry["cache_control"] = tool["cache_control"]
            tools.append(entry)
    choice = req.get("tool_choice")
    native: dict[str, Any] | None
    if choice is None:
        native = None
    elif isinstance(choice, str) and choice in _TOOL_CHOICE:
        native = {"type": _TOOL_CHOICE[choice]}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if not isinstance(name, str):
            raise BadRequest("tool_choice.function.name must be a string")
        native = {"type": "tool", "name": name}
    else:
        raise BadRequest("tool_choice must be auto, none, required or a function")
    if req.get("parallel_tool_calls") is False and (native is None or native["type"] != "none"):
        # [tools] parallel tool use is switched off on the tool_choice object itself.
        native = dict(native or {"type": "auto"}, disable_parallel_tool_use=True)
    return tools, native


def _response_format(
    fmt: Any,
    tools: list[dict[str, Any]],
    choice: dict[str, Any] | None,
    system: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return tools, choice
    if kind == "json_object":
        system.append({"type": "text", "text": _JSON_OBJECT_INSTRUCTION})
        return tools, choice
    if kind != "json_schema" or not isinstance(fmt.get("json_schema"), dict):
        raise BadRequest("response_format must be text, json_object or json_schema")
    spec = fmt["json_schema"]
    name = _UNSAFE_ID.sub("_", str(spec.get("name") or "response"))
    description = spec.get("description")
    tool = {
        "name": (JSON_TOOL_PREFIX + name)[:_TOOL_NAME_MAX],
        "description": description if isinstance(description, str) else _JSON_TOOL_DESCRIPTION,
        "input_schema": spec.get("schema")
        if isinstance(spec.get("schema"), dict)
        else {"type": "object"},
    }
    forced = {"type": "tool", "name": tool["name"]}
    if choice is not None and choice.get("disable_parallel_tool_use"):
        forced["disable_parallel_tool_use"] = True
    if not tools or (choice is not None and choice["type"] == "none"):
        return [tool], forced  # the schema tool is the only way to answer
    # With the client's own tools present the model must call *some* tool: one of the client's
    # (returned as tool_calls) or the schema tool (returned as the JSON answer).
    if choice is None or choice["type"] == "auto":
        choice = dict(choice or {}, type="any")
    return [*tools, tool], choice


# --------------------------------------------------------------------------- response: Message -> OpenAI


def _str(obj: dict[str, Any], key: str) -> str:
    return str_at(obj, key, "anthropic")


def _count(obj: dict[str, Any], key: str) -> int:
    return count_at(obj, key, "anthropic: usage")


def _usage(u: dict[str, Any]) -> dict[str, Any]:
    """[messages] usage -> OpenAI usage. input_tokens counts only the uncached part of the prompt, so
    the prompt is input + cache reads + cache writes; the cache figures go to the details."""
    read = _count(u, "cache_read_input_tokens")
    write = _count(u, "cache_creation_input_tokens")
    prompt = _count(u, "input_tokens") + read + write
    completion = _count(u, "output_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": write},
    }


def _reason(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise UpstreamProtocolError("anthropic: stop_reason is not a string")
    return value


def _finish(stop_reason: str | None, client_tool_called: bool) -> str:
    finish = _FINISH.get(stop_reason, "stop") if stop_reason else "stop"
    if finish == "tool_calls" and not client_tool_called:
        return "stop"  # only the json_schema tool was called: that is the answer, not a tool call
    return finish


def parse_message(msg: dict[str, Any]) -> dict[str, Any]:
    """[messages] a Message object -> the OpenAI choices and usage."""
    if msg.get("type") == "error":
        err = msg.get("error")
        raise _error_event(err if isinstance(err, dict) else {})
    content = msg.get("content")
    if not isinstance(content, list):
        raise UpstreamProtocolError("anthropic: message content is not an array")
    texts: list[str] = []
    thinking: list[str] = []
    details: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    answer: str | None = None
    for block in content:
        if not isinstance(block, dict):
            raise UpstreamProtocolError("anthropic: content block is not an object")
        kind = block.get("type")
        if kind == "text":
            texts.append(_str(block, "text"))
        elif kind == "thinking":
            # [thinking] the signature is what the next turn must send back with the text.
            thinking.append(_str(block, "thinking"))
            details.append(reasoning.text_item(thinking[-1], reasoning.ANTHROPIC, len(details),
                                               signature=_signature(block)))
        elif kind == "redacted_thinking":
            details.append(reasoning.encrypted_item(_str(block, "data"), reasoning.ANTHROPIC,
                                                    len(details)))
        elif kind == "tool_use":
            name = _str(block, "name")
            args = orjson.dumps(block.get("input", {})).decode()
            if name.startswith(JSON_TOOL_PREFIX):
                answer = args
            else:
                calls.append(
                    {
                        "id": _str(block, "id"),
                        "type": "function",
                        "function": {"name": name, "arguments": args},
                    }
                )
        # server tool blocks and block types added later have no OpenAI field.
    message: dict[str, Any] = {"role": "assistant", "content": answer or ("".join(texts) or None)}
    if thinking:
        message["reasoning"] = "".join(thinking)
    if details:
        message["reasoning_details"] = details
    if calls:
        message["tool_calls"] = calls
    stop_reason = _reason(msg.get("stop_reason"))
    usage = msg.get("usage")
    return {
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": _finish(stop_reason, bool(calls)),
                "native_finish_reason": stop_reason,
            }
        ],
        "usage": _reasoning_usage(_usage(usage if isinstance(usage, dict) else {}),
                                  sum(map(len, thinking))),
    }


def _signature(block: dict[str, Any]) -> str | None:
    sig = block.get("signature")
    if sig is not None and not isinstance(sig, str):
        raise UpstreamProtocolError("anthropic: thinking.signature is not a string")
    return sig


def _reasoning_usage(usage: dict[str, Any], thinking_chars: int) -> dict[str, Any]:
    """[messages] output_tokens already counts the thinking, billed as output (SPEC §5.3), but
    says nothing of its share: reasoning_tokens is estimated from the thinking text at ~4
    characters a token (a summary on Claude 4 models, so a floor), never above the output."""
    if thinking_chars:
        tokens = min(-(-thinking_chars // CHARS_PER_TOKEN), usage["completion_tokens"])
        usage["completion_tokens_details"] = {"reasoning_tokens": tokens}
    return usage


def _error_event(err: dict[str, Any]) -> UpstreamStatusError:
    kind, message = err.get("type"), err.get("message")
    if not isinstance(kind, str):
        kind = "error"
    return UpstreamStatusError(
        f"anthropic: {kind}: {message if isinstance(message, str) else ''}",
        raw=err,
        upstream_status=_ERROR_STATUS.get(kind, 500),
    )


# --------------------------------------------------------------------------- streaming


def _chunk(delta: dict[str, Any]) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


class AnthropicStreamDecoder:
    """[streaming] event flow -> OpenAI chat.completion.chunk fields.

    message_start, then per content block a content_block_start, deltas and a content_block_stop,
    then message_delta (stop_reason, cumulative usage) and message_stop; `ping` may come anywhere
    and new event types may appear ("Other events": ignore them). A tool call's index counts
    tool_use blocks only, as OpenAI numbers tool calls, not Anthropic's content-block index.
    """

    __slots__ = (
        "_blocks",
        "_client_tool",
        "_details",
        "_failed",
        "_sse",
        "_started",
        "_stopped",
        "_thought",
        "_tools",
        "_usage",
    )

    def __init__(self) -> None:
        self._sse = SSEParser()
        self._failed: UpstreamError | None = None
        self._started = False
        self._stopped = False
        self._usage: dict[str, Any] = {}
        # content-block index -> ("text"|"json"|"other", -1), ("tool", tool-call index) or
        # ("thinking", its reasoning_details index)
        self._blocks: dict[int, tuple[str, int]] = {}
        self._tools = 0
        self._client_tool = False
        self._details = 0  # reasoning_details items so far (thinking and redacted blocks)
        self._thought = 0  # characters of thinking text, for the reasoning-token estimate

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Bytes as they arrive -> chunks; raises UpstreamStatusError for an `error` event and
        UpstreamProtocolError for an event that is not a JSON object of the documented shape.

        When a failure follows events of the same read, their chunks are returned first and the
        error is raised by the next feed() or close(), so no content that arrived is dropped."""
        if self._failed is not None:
            raise self._failed
        out: list[dict[str, Any]] = []
        try:
            for event, payload in self._sse.feed(data):
                self._event(event, payload, out)
        except UpstreamError as exc:
            if not out:
                raise
            self._failed = exc
        return out

    def _event(self, event: str, payload: bytes, out: list[dict[str, Any]]) -> None:
        obj = json_object(payload, f"anthropic: {event!r} event")
        kind = obj.get("type", event)
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None or self._stopped:
            return  # ping, events added later, and anything after message_stop
        try:
            handler(self, obj, out)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            if isinstance(exc, EdgeproxyError):
                raise
            raise UpstreamProtocolError(f"anthropic: malformed {kind!r} event") from None

    def close(self) -> list[dict[str, Any]]:
        """The body ended: fine after message_stop, UpstreamProtocolError before it.

        A last event left without its blank line (the streaming guide's own tool-use example
        ends so) is dispatched; if it was cut short, its JSON fails to parse."""
        out = self.feed(b"\n\n") if self._sse.pending() else []
        if self._failed is not None:
            raise self._failed
        if not self._stopped:
            raise UpstreamProtocolError("anthropic: stream ended early (no message_stop)")
        return out

    # -- one method per event type, dispatched through _HANDLERS

    def _emit(self, out: list[dict[str, Any]], delta: dict[str, Any]) -> None:
        if not self._started:
            self._started = True
            out.append(_chunk({"role": "assistant", "content": ""}))
        if delta:
            out.append(_chunk(delta))

    def _message_start(self, ev: dict[str, Any], out: list[dict[str, Any]]) -> None:
        usage = ev["message"].get("usage")
        if isinstance(usage, dict):
            self._usage.update(usage)
        self._emit(out, {})

    def _block_start(self, ev: dict[str, Any], out: list[dict[str, Any]]) -> None:
        index, block = ev["index"], ev["content_block"]
        kind = block["type"]
        if kind == "text":
            self._blocks[index] = ("text", -1)
            if block.get("text"):
                self._emit(out, {"content": _text(block["text"])})
        elif kind == "thinking":
            self._blocks[index] = ("thinking", self._details)
            self._details += 1
            if block.get("thinking"):
                self._think(self._details - 1, _text(block["thinking"]), out)
        elif kind == "redacted_thinking":
            # [streaming] a redacted_thinking block comes whole in its content_block_start.
            item = reasoning.encrypted_item(_text(block["data"]), reasoning.ANTHROPIC,
                                            self._details)
            self._details += 1
            self._emit(out, {"reasoning_details": [item]})
        elif kind == "tool_use":
            name = _text(block["name"])
            if name.startswith(JSON_TOOL_PREFIX):
                self._blocks[index] = ("json", -1)  # its input pieces become content deltas
                self._emit(out, {})
                return
            self._blocks[index] = ("tool", self._tools)
            self._client_tool = True
            call = {
                "index": self._tools,
                "id": _text(block["id"]),
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            self._tools += 1
            self._emit(out, {"tool_calls": [call]})
        else:
            self._blocks[index] = ("other", -1)  # server tools, later types

    def _block_delta(self, ev: dict[str, Any], out: list[dict[str, Any]]) -> None:
        kind, slot = self._blocks.get(ev["index"], ("other", -1))
        delta = ev["delta"]
        dtype = delta["type"]
        if dtype == "text_delta":
            self._emit(out, {"content": _text(delta["text"])})
        elif dtype == "thinking_delta":
            if kind == "thinking":
                self._think(slot, _text(delta["thinking"]), out)
        elif dtype == "signature_delta":
            # [streaming] the signature comes whole, just before the block's content_block_stop.
            if kind == "thinking":
                item = reasoning.text_item("", reasoning.ANTHROPIC, slot,
                                           signature=_text(delta["signature"]))
                self._emit(out, {"reasoning_details": [item]})
        elif dtype == "input_json_delta":
            piece = _text(delta["partial_json"])
            if not piece:
                return  # the API opens each tool_use with an empty piece
            if kind == "tool":
                self._emit(out, {"tool_calls": [{"index": slot, "function": {"arguments": piece}}]})
            elif kind == "json":
                self._emit(out, {"content": piece})
        # citations_delta and later delta types carry no OpenAI field.

    def _think(self, detail: int, text: str, out: list[dict[str, Any]]) -> None:
        self._thought += len(text)
        item = reasoning.text_item(text, reasoning.ANTHROPIC, detail)
        self._emit(out, {"reasoning": text, "reasoning_details": [item]})

    def _message_delta(self, ev: dict[str, Any], out: list[dict[str, Any]]) -> None:
        usage = ev.get("usage")
        if isinstance(usage, dict):
            # [streaming] message_delta usage is cumulative: later figures replace earlier ones.
            self._usage.update({k: v for k, v in usage.items() if v is not None})
        stop_reason = _reason(ev["delta"].get("stop_reason"))
        if stop_reason is not None:
            self._emit(out, {})
            out.append(
                {
                    "choices": [
                        {
                            "index": 0,
                            "delta": {},
                            "finish_reason": _finish(stop_reason, self._client_tool),
                            "native_finish_reason": stop_reason,
                        }
                    ]
                }
            )

    def _message_stop(self, ev: dict[str, Any], out: list[dict[str, Any]]) -> None:
        self._stopped = True
        out.append({"choices": [], "usage": _reasoning_usage(_usage(self._usage), self._thought)})

    def _error(self, ev: dict[str, Any], out: list[dict[str, Any]]) -> None:
        err = ev.get("error")
        raise _error_event(err if isinstance(err, dict) else {})


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise UpstreamProtocolError("anthropic: expected a string in a stream event")
    return value


def _ignore(self: AnthropicStreamDecoder, ev: dict[str, Any], out: list[dict[str, Any]]) -> None:
    return None


_HANDLERS = {
    "message_start": AnthropicStreamDecoder._message_start,
    "content_block_start": AnthropicStreamDecoder._block_start,
    "content_block_delta": AnthropicStreamDecoder._block_delta,
    "content_block_stop": _ignore,
    "message_delta": AnthropicStreamDecoder._message_delta,
    "message_stop": AnthropicStreamDecoder._message_stop,
    "ping": _ignore,
    "error": AnthropicStreamDecoder._error,
}
