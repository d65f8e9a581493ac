"""The Anthropic Messages dialect: POST /v1/messages and /v1/messages/count_tokens (SPEC §3).

Sources, cited below by section name (platform.claude.com/docs/en/...):
  [messages]  API reference, "Messages" (POST /v1/messages): request fields and the Message object
  [count]     API reference, "Count tokens in a Message" (POST /v1/messages/count_tokens)
  [streaming] "Streaming messages": the event grammar and its error event
  [tools]     "Tool use": tools, tool_choice, tool_use / tool_result blocks, is_error
  [vision]    "Vision": image blocks with a base64 or url source
  [pdf]       "PDF support": document blocks
  [thinking]  "Extended thinking": the `thinking` request field and thinking blocks
  [errors]    "Errors": {"type": "error", "error": {"type", "message"}} and the status of each type

A Messages request becomes the canonical OpenAI chat request (a dict, then `from_dict`); the
client's bytes stay in `Decoded.body` with `native="anthropic"`, so an Anthropic upstream receives
them as sent but for the model (`AnthropicAdapter.forward`). The canonical result and chunks are
encoded back into a Message and Anthropic's event stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from .. import reasoning
from ..errors import BadRequest, EdgeproxyError
from ..schema import convert_chat
from ..transforms import estimate_tokens
from .base import Decoded, from_dict, load_object

if TYPE_CHECKING:
    from ..gateway import Generation

__all__ = ["CODEC", "AnthropicMessagesCodec", "count_tokens"]

# OpenRouter request members a client may send in any dialect; copied into the canonical request.
_EXTRAS = ("models", "provider", "route", "transforms", "usage", "user", "session_id", "reasoning",
           "plugins")

# [tools] tool_choice.type -> OpenAI's string form ("tool" names a function, handled apart).
_TOOL_CHOICE = {"auto": "auto", "any": "required", "none": "none"}

# [messages] Message.stop_reason, every value the API documents. An upstream's own reason is kept
# when it is one of these (an Anthropic upstream's, verbatim); otherwise OpenAI's is translated.
_STOP_REASONS = frozenset({
    "end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
    "model_context_window_exceeded",
})
_FROM_FINISH = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# [errors] HTTP status -> error.type. "invalid_request_error ... We may also use this error type for
# other 4XX status codes"; a 5xx without its own type is an api_error. 503 (no endpoint can serve
# now) is the gateway's overload, 502 an upstream's failure.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _error_type(status: int) -> str:
    return _ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")


# --------------------------------------------------------------------------- request: Messages -> OpenAI


def _canonical(req: dict[str, Any], *, require_max_tokens: bool) -> dict[str, Any]:
    """A Messages request -> the OpenAI chat request it means (plain dicts, not yet validated)."""
    out: dict[str, Any] = {}
    if "model" in req:
        out["model"] = req["model"]
    messages = _system(req.get("system"))
    raw = req.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("messages: at least one message is required")
    for i, msg in enumerate(raw):
        _message(msg, i, messages)
    out["messages"] = messages
    max_tokens = req.get("max_tokens")
    if max_tokens is None:
        # [messages] max_tokens is required (it is not a field of [count]).
        if require_max_tokens:
            raise BadRequest("max_tokens: Field required")
    elif type(max_tokens) is not int or max_tokens < 1:
        raise BadRequest("max_tokens: Input should be an integer greater than or equal to 1")
    else:
        out["max_tokens"] = max_tokens
    stream = req.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            raise BadRequest("stream: Input should be a valid boolean")
        out["stream"] = stream
    for key in ("temperature", "top_p"):
        if req.get(key) is not None:
            out[key] = req[key]  # the canonical validation checks type and range
    top_k = req.get("top_k")
    if top_k is not None:
        if type(top_k) is not int or top_k < 0:
            raise BadRequest("top_k: Input should be a non-negative integer")
        out["top_k"] = top_k  # an OpenRouter extra in chat; native to Anthropic and Gemini
    stops = req.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise BadRequest("stop_sequences: Input should be a list of strings")
        if stops:
            out["stop"] = stops
    metadata = req.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise BadRequest("metadata: Input should be an object")
        if metadata.get("user_id") is not None:
            out["user"] = metadata["user_id"]  # [messages] metadata.user_id: an opaque user id
    _tools(req, out)
    _thinking(req.get("thinking"), out)
    for key in _EXTRAS:
        if key in req:
            out[key] = req[key]
    return out


def _system(system: Any) -> list[dict[str, Any]]:
    # [messages] system: a string or an array of text blocks (which may carry cache_control).
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise BadRequest("system: Input should be a string or a list of text blocks")
    parts = []
    for block in system:
        if not isinstance(block, dict) or block.get("type") != "text":
            raise BadRequest("system: every block must be a text block")
        parts.append(_text_part(block))
    return [{"role": "system", "content": _content(parts)}] if parts else []


def _text_part(block: dict[str, Any]) -> dict[str, Any]:
    text = block.get("text")
    if not isinstance(text, str):
        raise BadRequest("a text block needs a string `text`")
    part = {"type": "text", "text": text}
    return _cached(part, block) if "cache_control" in block else part


def _cached(part: dict[str, Any], block: dict[str, Any]) -> dict[str, Any]:
    """The block's prompt-caching breakpoint, kept on the part (the anthropic adapter sends it)."""
    cache_control = block.get("cache_control")
    if isinstance(cache_control, dict):
        part["cache_control"] = cache_control
    return part


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Plain text parts as one string (what every upstream takes); parts with more as parts."""
    for p in parts:
        if p["type"] != "text" or len(p) != 2:
            return parts
    return parts[0]["text"] if len(parts) == 1 else "".join([p["text"] for p in parts])


def _where(at: tuple[int, ...]) -> str:
    """The location of block `at` for an error message: messages.<i>.content.<j>, and
    .content.<k> for a block inside a tool_result (built only when raising)."""
    where = f"messages.{at[0]}.content.{at[1]}"
    return where if len(at) == 2 else f"{where}.content.{at[2]}"


def _message(msg: Any, i: int, out: list[dict[str, Any]]) -> None:
    """One Messages turn -> the OpenAI messages it holds, appended to `out` (a user turn's tool
    results become tool messages, which OpenAI wants right after the assistant message that made
    the calls)."""
    role = msg.get("role") if isinstance(msg, dict) else None
    if role != "user" and role != "assistant":
        raise BadRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
    content = msg.get("content")
    if isinstance(content, str):
        out.append({"role": role, "content": content})
    elif not isinstance(content, list):
        raise BadRequest(f"messages.{i}.content: Input should be a string or a list of blocks")
    elif role == "assistant":
        _assistant(content, i, out)
    else:
        parts: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":  # the common block, first
                parts.append(_text_part(block))
            elif kind == "tool_result":
                out.append(_tool_result(block, (i, j)))
            else:
                parts.append(_part(block, kind, (i, j)))
        if parts:
            out.append({"role": "user", "content": _content(parts)})


def _part(block: Any, kind: Any, at: tuple[int, ...]) -> dict[str, Any]:
    """A user content block of type `kind` -> an OpenAI content part."""
    if kind == "text":
        return _text_part(block)
    if kind == "image":
        return _cached({"type": "image_url", "image_url": {"url": _image_url(block, at)}}, block)
    if kind == "document":
        return _cached(_document(block, at), block)
    raise BadRequest(f"{_where(at)}: content blocks of type {kind!r} are not supported here")


def _source(block: dict[str, Any], at: tuple[int, ...]) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise BadRequest(f"{_where(at)}.source: Field required")
    return source


def _base64_url(source: dict[str, Any], at: tuple[int, ...]) -> str:
    media_type, data = source.get("media_type"), source.get("data")
    if not isinstance(media_type, str) or not media_type or not isinstance(data, str) or not data:
        raise BadRequest(f"{_where(at)}.source: a base64 source needs media_type and data")
    return f"data:{media_type};base64,{data}"


def _image_url(block: dict[str, Any], at: tuple[int, ...]) -> str:
    # [vision] source {type: base64, media_type, data} | {type: url, url}; file ids need the
    # Files API, which the gateway does not offer.
    source = _source(block, at)
    kind = source.get("type")
    if kind == "base64":
        return _base64_url(source, at)
    if kind == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise BadRequest(f"{_where(at)}.source: images need a base64 or url source")


def _document(block: dict[str, Any], at: tuple[int, ...]) -> dict[str, Any]:
    # [pdf] a base64 PDF -> OpenAI's file part (a data URL); a plain-text source is text.
    source = _source(block, at)
    kind = source.get("type")
    if kind == "base64":
        title = block.get("title")
        name = title if isinstance(title, str) and title else "document.pdf"
        return {"type": "file", "file": {"filename": name, "file_data": _base64_url(source, at)}}
    if kind == "text" and isinstance(source.get("data"), str):
        return {"type": "text", "text": source["data"]}
    raise BadRequest(f"{_where(at)}.source: documents need a base64 or text source")


def _tool_result(block: dict[str, Any], at: tuple[int, ...]) -> dict[str, Any]:
    # [tools] tool_result {tool_use_id, content: string | text and image blocks, is_error}.
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f"{_where(at)}.tool_use_id: Field required")
    raw = block.get("content")
    content: str | list[dict[str, Any]]
    if raw is None or isinstance(raw, str):
        content = raw or ""
    elif isinstance(raw, list):
        parts = []
        for k, inner in enumerate(raw):
            kind = inner.get("type") if isinstance(inner, dict) else None
            parts.append(_part(inner, kind, (*at, k)))
        content = _content(parts)
    else:
        raise BadRequest(f"{_where(at)}.content: Input should be a string or a list of blocks")
    if block.get("is_error") is True:
        # OpenAI's tool message has no error flag: the model learns of the failure from the text.
        if isinstance(content, str):
            content = "Error: " + content
        else:
            content = [{"type": "text", "text": "Error:"}, *content]
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _assistant(content: list[Any], i: int, out: list[dict[str, Any]]) -> None:
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(_text_part(block))
        elif kind == "tool_use":
            calls.append(_tool_call(block, (i, j)))
        elif kind == "thinking" or kind == "redacted_thinking":
            details.extend(_reasoning_items(block, kind, (i, j), len(details)))
        else:
            raise BadRequest(
                f"{_where((i, j))}: content blocks of type {kind!r} are not supported here")
    msg: dict[str, Any]
    if calls:
        msg = {"role": "assistant", "content": _content(parts) if parts else None,
               "tool_calls": calls}
    elif parts:
        msg = {"role": "assistant", "content": _content(parts)}
    else:
        return  # a turn of thinking only: nothing an OpenAI message can hold
    if details:
        msg["reasoning_details"] = details
    out.append(msg)


def _reasoning_items(block: dict[str, Any], kind: str, at: tuple[int, ...],
                     index: int) -> list[dict[str, Any]]:
    """[thinking] a thinking (its signature) or redacted_thinking block of an earlier turn -> the
    reasoning_details items the upstream adapters restore: Anthropic's own, or those of another
    upstream that this codec sealed into the block (see `_thinking_blocks`)."""
    key = "signature" if kind == "thinking" else "data"
    opaque = block.get(key)
    if not isinstance(opaque, str) or (kind == "thinking"
                                       and not isinstance(block.get("thinking"), str)):
        raise BadRequest(f"{_where(at)}: a {kind} block needs a string `{key}`")
    sealed = reasoning.unseal(opaque)
    if sealed is not None:
        return sealed
    if kind == "redacted_thinking":
        return [reasoning.encrypted_item(opaque, reasoning.ANTHROPIC, index)]
    return [reasoning.text_item(block["thinking"], reasoning.ANTHROPIC, index, signature=opaque)]


def _tool_call(block: dict[str, Any], at: tuple[int, ...]) -> dict[str, Any]:
    # [tools] tool_use {id, name, input: object} -> a function call, arguments as a JSON string.
    call_id, name, args = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
        raise BadRequest(f"{_where(at)}: a tool_use block needs an id and a name")
    if not isinstance(args, dict):
        raise BadRequest(f"{_where(at)}.input: Input should be an object")
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": orjson.dumps(args).decode()},
    }


def _tools(req: dict[str, Any], out: dict[str, Any]) -> None:
    raw = req.get("tools")
    if raw is not None:
        if not isinstance(raw, list):
            raise BadRequest("tools: Input should be a list")
        tools = []
        for i, tool in enumerate(raw):
            if not isinstance(tool, dict):
                raise BadRequest(f"tools.{i}: Input should be an object")
            kind = tool.get("type", "custom")
            if kind != "custom":
                # Server tools (web_search_*, bash_*, code_execution_*, ...) run inside Anthropic's
                # API; no other upstream has them, so they are refused rather than dropped.
                raise BadRequest(
                    f"tools.{i}: server tools (type {kind!r}) are not supported by this gateway; "
                    "define the tool with name, description and input_schema"
                )
            name, schema = tool.get("name"), tool.get("input_schema")
            if not isinstance(name, str) or not isinstance(schema, dict):
                raise BadRequest(f"tools.{i}: a tool needs a name and an input_schema object")
            fn: dict[str, Any] = {"name": name, "parameters": schema}
            if isinstance(tool.get("description"), str):
                fn["description"] = tool["description"]
            tools.append({"type": "function", "function": fn})
        if tools:
            out["tools"] = tools
    choice = req.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str):
            raise BadRequest("tool_choice.name: Field required")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    elif isinstance(kind, str) and kind in _TOOL_CHOICE:
        out["tool_choice"] = _TOOL_CHOICE[kind]
    else:
        raise BadRequest("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


def _thinking(thinking: Any, out: dict[str, Any]) -> None:
    # [thinking] {type: enabled, budget_tokens} -> OpenRouter's reasoning {max_tokens}; adaptive
    # leaves the budget to the model; disabled asks for nothing.
    if thinking is None:
        return
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if type(budget) is not int or budget < 1:
            raise BadRequest("thinking.budget_tokens: Input should be a positive integer")
        out["reasoning"] = {"max_tokens": budget}
    elif kind == "adaptive":
        out["reasoning"] = {"enabled": True}
    elif kind != "disabled":
        raise BadRequest("thinking.type: Input should be 'enabled', 'adaptive' or 'disabled'")


def count_tokens(body: bytes) -> dict[str, int]:
    """[count] POST /v1/messages/count_tokens: the gateway's estimate of the prompt's tokens
    (system, messages and tool definitions), as {"input_tokens": N}; BadRequest for bad input."""
    doc = _canonical(load_object(body), require_max_tokens=False)
    convert_chat(doc)  # validated as for a Messages request: a bad field is a 400 naming it
    counted = list(doc["messages"])
    if "tools" in doc:
        # Tool definitions reach the model as text: count their JSON like a message of it.
        counted.append({"role": "system", "content": orjson.dumps(doc["tools"]).decode()})
    return {"input_tokens": estimate_tokens(counted)}


# --------------------------------------------------------------------------- result: OpenAI -> Messages


def _stop_reason(finish: Any, native: Any) -> str:
    if isinstance(native, str) and native in _STOP_REASONS:
        return native
    return _FROM_FINISH.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"


def _usage(usage: dict[str, Any]) -> dict[str, Any]:
    """OpenAI usage -> [messages] usage: input_tokens counts the uncached prompt only, next to the
    cache reads and writes; the gateway's `cost` (USD) rides along as an extra field."""
    details = usage.get("prompt_tokens_details") or {}
    read = details.get("cached_tokens") or 0
    write = details.get("cache_write_tokens") or 0
    out: dict[str, Any] = {
        "input_tokens": max((usage.get("prompt_tokens") or 0) - read - write, 0),
        "output_tokens": usage.get("completion_tokens") or 0,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": write,
    }
    if "cost" in usage:
        out["cost"] = usage["cost"]
    return out


def _tool_input(arguments: Any) -> dict[str, Any]:
    """OpenAI's arguments string -> tool_use.input (an object; {} when the model's JSON is broken,
    as a client can do nothing else with it)."""
    try:
        value = orjson.loads(arguments or "{}")
    except (orjson.JSONDecodeError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def _thinking_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """[thinking] the answer's reasoning as thinking and redacted_thinking blocks, which a client
    sends back unmodified on the next turn: Anthropic's own signatures and redacted data as they
    came; text of another upstream with an empty signature (Anthropic's to mint), and its opaque
    items (a Gemini thought signature, OpenAI's encrypted reasoning) sealed in a
    redacted_thinking block, so they reach that upstream again (`_reasoning_items`)."""
    details = message.get("reasoning_details")
    if not isinstance(details, list) or not details:
        text = message.get("reasoning")
        return [{"type": "thinking", "thinking": text, "signature": ""}] if text else []
    blocks: list[dict[str, Any]] = []
    for item in reasoning.merge([d for d in details if isinstance(d, dict)]):
        kind, native = item.get("type"), item.get("format") == reasoning.ANTHROPIC
        if kind == "reasoning.text" or kind == "reasoning.summary":
            sig = item.get("signature")
            blocks.append({"type": "thinking",
                           "thinking": item.get("text") or item.get("summary") or "",
                           "signature": sig if native and isinstance(sig, str) else ""})
        elif kind == "reasoning.encrypted":
            blocks.append(_redacted(item))
    return blocks


def _redacted(item: dict[str, Any]) -> dict[str, Any]:
    native = item.get("format") == reasoning.ANTHROPIC and isinstance(item.get("data"), str)
    return {"type": "redacted_thinking", "data": item["data"] if native else reasoning.seal([item])}


def _message_content(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = _thinking_blocks(message)
    for key in ("content", "refusal"):
        text = message.get(key)
        if isinstance(text, str) and text:
            blocks.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        blocks.append({
            "type": "tool_use",
            "id": call.get("id") or "",
            "name": fn.get("name") or "",
            "input": _tool_input(fn.get("arguments")),
        })
    return blocks


class AnthropicMessagesCodec:
    """Codec for POST /v1/messages (see ingress.base.Codec)."""

    name = "anthropic_messages"

    def decode(self, body: bytes, headers: Mapping[str, str]) -> Decoded:
        """[messages] request -> canonical request; BadRequest (400) for anything malformed."""
        doc = _canonical(load_object(body), require_max_tokens=True)
        return from_dict(doc, body=body, native="anthropic")

    def encode(self, result: dict[str, Any], gen: Generation) -> bytes:
        """A canonical chat.completion -> a [messages] Message object."""
        choice = (result.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        return orjson.dumps({
            "id": gen.id,
            "type": "message",
            "role": "assistant",
            "model": gen.model,
            "content": _message_content(message),
            "stop_reason": _stop_reason(choice.get("finish_reason"),
                                        choice.get("native_finish_reason")),
            "stop_sequence": None,
            "usage": _usage(result.get("usage") or {}),
        })

    def stream_encoder(self, gen: Generation) -> MessagesStreamEncoder:
        return MessagesStreamEncoder(gen)

    def error_body(self, exc: EdgeproxyError) -> bytes:
        """[errors] {"type": "error", "error": {"type", "message"}}, the type by HTTP status."""
        return orjson.dumps(_error(exc))


def _error(exc: EdgeproxyError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _error_type(exc.status), "message": exc.message}}


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class MessagesStreamEncoder:
    """Canonical chunks -> [streaming] events.

    message_start (empty content, usage so far) and a ping open the message; each content block is
    content_block_start, its deltas (thinking_delta and signature_delta, text_delta,
    input_json_delta) and content_block_stop, numbered from 0; redacted_thinking comes whole. A
    block ends when the kind of content changes, another tool call or reasoning_details item
    begins; the adapters deliver a tool call's pieces together, so a closed block is never
    reopened. The finish reason is held until `finish(usage)` sends message_delta (stop
    reason, usage) and message_stop. An error after the head is one `error` event, and the last.
    """

    __slots__ = ("_block", "_finish", "_gen", "_index", "_native", "_open", "_started",
                 "_thought", "_tool")

    def __init__(self, gen: Generation) -> None:
        self._gen = gen
        self._started = False
        self._open = ""  # "" | "thinking" | "redacted" | "text" | "tool": the open block's kind
        self._thought: Any = None  # the reasoning_details index of the open thinking block
        self._index = -1  # the open (or last) block's index
        self._tool = -1  # the canonical tool-call index of the open tool_use block
        self._block = 0  # blocks started so far
        self._finish: Any = None
        self._native: Any = None

    def _start(self, out: list[bytes]) -> None:
        if self._started:
            return  # a fallback's repeated opening chunk opens no second message
        self._started = True
        gen = self._gen
        out.append(_event("message_start", {"type": "message_start", "message": {
            "id": gen.id, "type": "message", "role": "assistant", "model": gen.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }}))
        out.append(_event("ping", {"type": "ping"}))

    def _close(self, out: list[bytes]) -> None:
        if self._open:
            out.append(_event("content_block_stop",
                              {"type": "content_block_stop", "index": self._index}))
            self._open = ""

    def _open_block(self, kind: str, block: dict[str, Any], out: list[bytes]) -> None:
        self._close(out)
        self._open = kind
        self._index = self._block
        self._block += 1
        out.append(_event("content_block_start", {
            "type": "content_block_start", "index": self._index, "content_block": block}))

    def _delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        out.append(_event("content_block_delta",
                          {"type": "content_block_delta", "index": self._index, "delta": delta}))

    def chunks(self, chunks: list[dict[str, Any]]) -> bytes:
        out: list[bytes] = []
        for chunk in chunks:
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0) != 0:
                    continue  # [messages] one message per request: only the first choice
                self._start(out)
                self._choice(choice, out)
        return b"".join(out)

    def _choice(self, choice: dict[str, Any], out: list[bytes]) -> None:
        delta = choice.get("delta") or {}
        items = [i for i in delta.get("reasoning_details") or () if isinstance(i, dict)]
        thought = delta.get("reasoning")
        if isinstance(thought, str) and thought:
            # The text of a reasoning_details item of another index is another thinking block.
            index = next((i.get("index") for i in items if i.get("type") == "reasoning.text"),
                         None)
            self._thinking(index, out)
            self._delta({"type": "thinking_delta", "thinking": thought}, out)
        for item in items:
            kind = item.get("type")
            sig = item.get("signature")
            if (kind == "reasoning.text" and item.get("format") == reasoning.ANTHROPIC
                    and isinstance(sig, str) and sig):
                # [streaming] the block's signature_delta, just before its content_block_stop.
                self._thinking(item.get("index"), out)
                self._delta({"type": "signature_delta", "signature": sig}, out)
            elif kind == "reasoning.encrypted":
                # [streaming] redacted_thinking comes whole in its content_block_start.
                self._open_block("redacted", _redacted(item), out)
                self._close(out)
        text = delta.get("content")
        if isinstance(text, str) and text:
            if self._open != "text":
                self._open_block("text", {"type": "text", "text": ""}, out)
            self._delta({"type": "text_delta", "text": text}, out)
        for call in delta.get("tool_calls") or ():
            index = call.get("index", 0)
            fn = call.get("function") or {}
            if self._open != "tool" or index != self._tool:
                self._open_block("tool", {
                    "type": "tool_use",
                    "id": call.get("id") or f"toolu_{self._gen.id}_{self._block}",
                    "name": fn.get("name") or "",
                    "input": {},
                }, out)
                self._tool = index
            if fn.get("arguments"):
                self._delta({"type": "input_json_delta", "partial_json": fn["arguments"]}, out)
        if choice.get("finish_reason") is not None:
            self._finish = choice["finish_reason"]
            self._native = choice.get("native_finish_reason")

    def _thinking(self, index: Any, out: list[bytes]) -> None:
        """The thinking block of reasoning_details item `index` is the open one (None: any)."""
        if self._open != "thinking" or (index is not None and index != self._thought):
            self._open_block(
                "thinking", {"type": "thinking", "thinking": "", "signature": ""}, out)
        if index is not None:
            self._thought = index

    def finish(self, usage: dict[str, Any]) -> bytes:
        out: list[bytes] = []
        self._start(out)
        self._close(out)
        out.append(_event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": _stop_reason(self._finish, self._native),
                      "stop_sequence": None},
            "usage": _usage(usage),
        }))
        out.append(_event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def error(self, exc: EdgeproxyError) -> bytes:
        # [streaming] "Error events": an `error` event, and the stream ends (no block is closed).
        return _event("error", _error(exc))


CODEC = AnthropicMessagesCodec()
