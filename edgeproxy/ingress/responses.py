"""The OpenAI Responses API dialect, `POST /v1/responses` (SPEC §1.1, §3), sans-IO.

Sources, cited below by section name (OpenAI API reference, platform.openai.com/docs/api-reference):
  [create]     Responses › Create a model response: the request body, input items and content
               parts, function tools, tool_choice, text.format, reasoning, max_output_tokens
  [object]     Responses › The response object: output items (message, function_call, reasoning),
               status, incomplete_details, error, usage
  [streaming]  Responses › Streaming events: the lifecycle and delta events, each with a
               sequence_number
  [state]      "Conversation state" guide: previous_response_id and conversations live on
               OpenAI's servers
The openai SDK's `openai.types.responses` models are the executable form of these pages; the tests
validate what this module writes against them.

A request becomes the canonical OpenAI chat request (input items -> messages, flat function tools
-> nested ones, text.format -> response_format); the canonical result, events and errors become a
Response object, the Responses event stream and the gateway's error body. The gateway stores
nothing, so everything that refers to stored state is a 400 that says what to send instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from .. import reasoning
from ..errors import BadRequest, EdgeproxyError
from .base import Decoded, from_dict, load_object

if TYPE_CHECKING:
    from ..gateway import Generation

__all__ = ["CODEC", "ResponsesCodec", "ResponsesStreamEncoder"]

# OpenRouter request extras (SPEC §1.1) a client may send in any dialect: copied as they are.
# (`cache_control`: its automatic prompt caching, which the Responses API takes at the top level
# only, per OpenRouter's prompt-caching guide.)
_EXTRAS = ("models", "provider", "route", "transforms", "usage", "user", "session_id", "plugins",
           "cache_control")
# [create] fields with the same name and meaning in a chat request.
_SAME = ("model", "stream", "temperature", "top_p", "metadata", "parallel_tool_calls")
_COPIED = _SAME + _EXTRAS
# [create] reasoning.effort and .summary, plus OpenRouter's own reasoning fields.
_REASONING_KEYS = ("effort", "summary", "max_tokens", "exclude", "enabled")
_ROLES = ("user", "assistant", "system", "developer")
_STATELESS = (
    "{field} is not supported: edgeproxy is stateless and stores no responses or conversations; "
    "send the whole conversation as `input` items instead (earlier output items included)"
)
# [object] the request settings a Response repeats, and what it shows when the request set none.
_ECHO_DEFAULTS: dict[str, Any] = {
    "instructions": None,
    "max_output_tokens": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "reasoning": None,
    "temperature": None,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_p": None,
    "user": None,
}
# [object] incomplete_details.reason for the chat finish reasons that end a response early.
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


class ResponsesCodec:
    """The `Codec` of the Responses API (ingress.base)."""

    name = "responses"

    def decode(self, body: bytes, headers: Mapping[str, str]) -> Decoded:
        doc = load_object(body)
        chat = chat_request(doc)  # validates what the echo repeats
        echo = {key: value for key, value in doc.items()
                if value is not None and key in _ECHO_DEFAULTS}
        return from_dict(chat, body=body, echo=echo)

    def encode(self, result: dict[str, Any], gen: Generation) -> bytes:
        return orjson.dumps(response_object(result, gen))

    def stream_encoder(self, gen: Generation) -> ResponsesStreamEncoder:
        return ResponsesStreamEncoder(gen)

    def error_body(self, exc: EdgeproxyError) -> bytes:
        # The openai SDK reads `error.message` of any error body; the gateway's one shape has it.
        return exc.to_body()


CODEC = ResponsesCodec()


# --------------------------------------------------------------------------- request


def chat_request(doc: dict[str, Any]) -> dict[str, Any]:
    """A Responses request -> the canonical OpenAI chat request (a pure function)."""
    for field in ("previous_response_id", "conversation"):
        if doc.get(field) is not None:
            raise BadRequest(_STATELESS.format(field=field))
    if doc.get("background") is True:
        raise BadRequest("background responses are not supported: edgeproxy is stateless and "
                         "answers every request in its own HTTP response (use stream instead)")
    if doc.get("prompt") is not None:
        raise BadRequest("prompt templates are stored at OpenAI and not available through "
                         "edgeproxy: send the prompt's text as `instructions` and `input`")
    out: dict[str, Any] = {"messages": _messages(doc)}
    # Typed here because the answer repeats them ([object] metadata, parallel_tool_calls).
    if doc.get("metadata") is not None and not isinstance(doc["metadata"], dict):
        raise BadRequest("metadata must be an object")
    if doc.get("parallel_tool_calls") is not None and type(doc["parallel_tool_calls"]) is not bool:
        raise BadRequest("parallel_tool_calls must be a boolean")
    for key in _COPIED:
        value = doc.get(key)
        if value is not None:  # a null is an omission, as in the openai SDK's requests
            out[key] = value
    limit = doc.get("max_output_tokens")
    if limit is not None:
        if type(limit) is not int or limit < 1:
            raise BadRequest("max_output_tokens must be a positive integer")
        out["max_tokens"] = limit
    if doc.get("tools") is not None:
        out["tools"] = _tools(doc["tools"])
    if doc.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(doc["tool_choice"])
    if doc.get("text") is not None:
        fmt = _response_format(doc["text"])
        if fmt is not None:
            out["response_format"] = fmt
    if doc.get("reasoning") is not None:
        reasoning = _reasoning(doc["reasoning"])
        if reasoning:
            out["reasoning"] = reasoning
    return out


def _messages(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    instructions = doc.get("instructions")
    if instructions is not None:
        # [create] instructions: "a system (or developer) message inserted into the model's context"
        if not isinstance(instructions, str):
            raise BadRequest("instructions must be a string")
        if instructions:
            out.append({"role": "system", "content": instructions})
    raw = doc.get("input")
    if isinstance(raw, str):
        out.append({"role": "user", "content": raw})  # [create] a string input is one user turn
    elif isinstance(raw, list):
        # Reasoning items go with the assistant turn they belong to: the next one, or the one
        # just before when none follows (hence held until the next item is placed).
        pending: list[dict[str, Any]] = []
        for i, item in enumerate(raw):
            if isinstance(item, dict) and item.get("type") == "reasoning":
                pending += _reasoning_details(item, i)
                continue
            before = len(out)
            _add_item(item, i, out)
            if pending:
                _attach(pending, out, len(out) if out[-1]["role"] == "assistant" else before)
                pending = []
        if pending:
            _attach(pending, out, len(out))
    elif raw is None:
        raise BadRequest("input is required: a string or an array of input items")
    else:
        raise BadRequest("input must be a string or an array of input items")
    if not out:
        raise BadRequest("input holds no message: send at least one message item")
    return out


def _path(where: tuple[str | int, ...]) -> str:
    """An error's location from its segments: ("input", 0, "content", 1) -> input[0].content[1].
    Locations are passed down as tuples and spelled out only when raising."""
    text = ""
    for seg in where:
        text += f"[{seg}]" if isinstance(seg, int) else f".{seg}" if text else seg
    return text


def _add_item(item: Any, i: int, out: list[dict[str, Any]]) -> None:
    """Input item `i` -> chat messages appended to `out`."""
    if not isinstance(item, dict):
        raise BadRequest(f"input[{i}] must be an object")
    kind = item.get("type", "message")  # [create] an "easy" input message may omit its type
    if kind == "message":  # the common item, first
        role = item.get("role")
        if role not in _ROLES:
            raise BadRequest(f"input[{i}].role must be one of {', '.join(_ROLES)}")
        content = item.get("content")
        if isinstance(content, list):
            content = _parts(content, i, "content")
        elif not isinstance(content, str):
            raise BadRequest(f"input[{i}].content must be a string or an array of content parts")
        out.append({"role": role, "content": content})
        return
    where = ("input", i)
    if kind == "function_call":
        call = {"id": _string(item, "call_id", where), "type": "function",
                "function": {"name": _string(item, "name", where),
                             "arguments": _string(item, "arguments", where, empty=True)}}
        # Responses lists the text of a turn and each of its calls as separate items; chat puts
        # them in one assistant message, which also gathers parallel calls.
        last = out[-1] if out else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            out.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        if isinstance(output, list):
            output = _parts(output, i, "output")
        elif not isinstance(output, str):
            raise BadRequest(f"input[{i}].output must be a string or an array of content parts")
        out.append({"role": "tool", "tool_call_id": _string(item, "call_id", where),
                    "content": output})
    elif kind == "item_reference":
        # Clients that assume OpenAI stores their outputs (`store` defaults to true) refer back
        # to them by id; the Vercel AI SDK does unless told `store: false`.
        raise BadRequest(_STATELESS.format(field=f"input[{i}] (an item_reference)")
                         + " (with the Vercel AI SDK: providerOptions.openai.store = false)")
    else:
        raise BadRequest(f"input[{i}]: input items of type {kind!r} are not supported; "
                         "edgeproxy offers messages and function calls only")


def _reasoning_details(item: dict[str, Any], i: int) -> list[dict[str, Any]]:
    """[object] a reasoning item of an earlier turn -> the reasoning_details the gateway returned
    as it: sealed in its encrypted_content (`_reasoning_item`), or an OpenAI item of another
    origin (summaries, reasoning text, encrypted_content, by its id)."""
    encrypted = item.get("encrypted_content")
    sealed = reasoning.unseal(encrypted)
    if sealed is not None:
        return sealed
    rid = item.get("id") if isinstance(item.get("id"), str) else None
    fmt = reasoning.OPENAI_RESPONSES
    out: list[dict[str, Any]] = []
    for field in ("summary", "content"):
        parts = item.get(field) or []
        if not isinstance(parts, list):
            raise BadRequest(f"input[{i}].{field} must be an array")
        for part in parts:
            text = part.get("text") if isinstance(part, dict) else None
            if not isinstance(text, str):
                raise BadRequest(f"input[{i}].{field}: each part needs a string `text`")
            out.append(reasoning.summary_item(text, fmt, len(out), rid) if field == "summary"
                       else reasoning.text_item(text, fmt, len(out), id=rid))
    if isinstance(encrypted, str) and encrypted:
        out.append(reasoning.encrypted_item(encrypted, fmt, len(out), rid))
    return out


def _attach(details: list[dict[str, Any]], out: list[dict[str, Any]], end: int) -> None:
    """Give `details` to the last assistant message of out[:end] (none there: dropped)."""
    for msg in reversed(out[:end]):
        if msg["role"] == "assistant":
            msg.setdefault("reasoning_details", []).extend(details)
            return


def _parts(parts: list[Any], i: int, field: str) -> list[dict[str, Any]]:
    """[create] input content parts (and the output parts of a replayed assistant message), those
    of input[i].<field> -> chat content parts."""
    out: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "input_text" or kind == "output_text":  # the common part, first
            text = part.get("text")
            if not isinstance(text, str):
                raise BadRequest(f"input[{i}].{field}[{j}].text must be a string")
            out.append({"type": "text", "text": text})
        elif not isinstance(part, dict):
            raise BadRequest(f"input[{i}].{field}[{j}] must be an object")
        elif kind == "refusal":
            out.append({"type": "refusal",
                        "refusal": _string(part, "refusal", ("input", i, field, j), empty=True)})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise BadRequest(f"input[{i}].{field}[{j}]: input_image needs image_url, a URL or "
                                 "a base64 data URL (file ids are not supported: edgeproxy "
                                 "stores no files)")
            image = {"url": url}
            if isinstance(part.get("detail"), str):
                image["detail"] = part["detail"]
            out.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            # Chat's `file` part takes a data URL in file_data (OpenRouter's also a plain URL).
            data = part.get("file_data", part.get("file_url"))
            if not isinstance(data, str):
                raise BadRequest(f"input[{i}].{field}[{j}]: input_file needs file_data, a base64 "
                                 "data URL (file ids are not supported: edgeproxy stores no "
                                 "files)")
            file = {"file_data": data}
            if isinstance(part.get("filename"), str):
                file["filename"] = part["filename"]
            out.append({"type": "file", "file": file})
        elif kind == "input_audio":
            if not isinstance(part.get("input_audio"), dict):
                raise BadRequest(
                    f"input[{i}].{field}[{j}]: input_audio needs an input_audio object")
            out.append({"type": "input_audio", "input_audio": part["input_audio"]})
        else:
            raise BadRequest(
                f"input[{i}].{field}[{j}]: content parts of type {kind!r} are not supported")
    return out


def _string(obj: dict[str, Any], key: str, where: tuple[str | int, ...],
            empty: bool = False) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not (value or empty):
        raise BadRequest(f"{_path(where)}.{key} must be a {'' if empty else 'non-empty '}string")
    return value


def _tools(raw: Any) -> list[dict[str, Any]]:
    """[create] tools: the flat function tool {type, name, description, parameters, strict} ->
    chat's {type: "function", function: {...}}. Hosted tools run on OpenAI's side only."""
    if not isinstance(raw, list):
        raise BadRequest("tools must be an array")
    out = []
    for j, tool in enumerate(raw):
        if not isinstance(tool, dict):
            raise BadRequest(f"tools[{j}] must be an object")
        kind = tool.get("type")
        if kind != "function":
            raise BadRequest(f"tools[{j}]: tools of type {kind!r} are not offered by edgeproxy; "
                             "only function tools are (hosted tools such as web_search, "
                             "file_search or computer use run on OpenAI's servers only)")
        function = {"name": _string(tool, "name", ("tools", j))}
        for key in ("description", "parameters", "strict"):
            value = tool.get(key)
            if value is not None:
                function[key] = value
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    # [create] tool_choice: "none" | "auto" | "required" | {type: "function", name}.
    if choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": _string(choice, "name", ("tool_choice",))}}
    raise BadRequest('tool_choice must be "none", "auto", "required" or '
                     '{"type": "function", "name": ...}')


def _response_format(text: Any) -> dict[str, Any] | None:
    """[create] text.format -> chat's response_format (None for plain text, the default)."""
    if not isinstance(text, dict):
        raise BadRequest("text must be an object")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise BadRequest("text.format must be an object")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise BadRequest("text.format.schema must be a JSON Schema object")
        spec: dict[str, Any] = {"name": _string(fmt, "name", ("text", "format")),
                                "schema": schema}
        for key in ("description", "strict"):
            if fmt.get(key) is not None:
                spec[key] = fmt[key]
        return {"type": "json_schema", "json_schema": spec}
    raise BadRequest('text.format.type must be "text", "json_object" or "json_schema"')


def _reasoning(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BadRequest("reasoning must be an object")
    return {key: raw[key] for key in _REASONING_KEYS if raw.get(key) is not None}


# --------------------------------------------------------------------------- result


def response_object(result: dict[str, Any], gen: Generation) -> dict[str, Any]:
    """A canonical chat.completion -> a Response object ([object])."""
    choices = result.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    finish = choice.get("finish_reason")
    incomplete = finish in _INCOMPLETE
    status = "incomplete" if incomplete else "completed"
    output: list[dict[str, Any]] = []
    thought, details = message.get("reasoning"), message.get("reasoning_details")
    if (isinstance(thought, str) and thought) or details:
        text = thought if isinstance(thought, str) else ""
        output.append(_reasoning_item(gen, len(output), [_reasoning_text(text)], "completed",
                                      details if isinstance(details, list) else None))
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    refusal = message.get("refusal")
    calls = message.get("tool_calls") or []
    if text or refusal or not calls:
        parts = [_output_text(text)] if text or not refusal else []
        if isinstance(refusal, str) and refusal:
            parts.append({"type": "refusal", "refusal": refusal})
        output.append(_message_item(gen, len(output), parts, status))
    for call in calls:
        fn = call.get("function") or {}
        index = len(output)
        output.append(_call_item(gen, index, call.get("id"), fn.get("name") or "",
                                 fn.get("arguments") or "", "completed"))
    return _response(gen, status, output, result.get("usage"), finish)


def _response(
    gen: Generation, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None,
    finish: str | None = None, error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """[object] The Response envelope, repeating the request's settings (`gen.echo`)."""
    return {
        **_ECHO_DEFAULTS,
        **(gen.echo or {}),
        "id": gen.id,
        "object": "response",
        "created_at": gen.created,
        "status": status,
        "error": error,
        "incomplete_details": ({"reason": _INCOMPLETE[finish]}
                               if status == "incomplete" and finish in _INCOMPLETE else None),
        "model": gen.model,
        "output": output,
        "previous_response_id": None,
        "truncation": "disabled",
        "usage": _usage(usage) if usage else None,
        "provider": gen.provider,  # OpenRouter's extra: the provider that served
    }


def _usage(usage: dict[str, Any]) -> dict[str, Any]:
    """[object] usage, from chat's usage; OpenRouter's `cost` and `is_byok` ride along."""
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    out = {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": prompt_details.get("cached_tokens") or 0,
            "cache_write_tokens": prompt_details.get("cache_write_tokens") or 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": completion_details.get("reasoning_tokens") or 0,
        },
        "total_tokens": usage.get("total_tokens") or prompt + completion,
    }
    for key in ("cost", "is_byok", "cost_details"):
        if key in usage:
            out[key] = usage[key]
    return out


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _item_id(prefix: str, gen: Generation, index: int) -> str:
    # Item ids carry the generation id, so any one of them leads to /generation.
    return f"{prefix}_{gen.id}_{index}"


def _message_item(gen: Generation, index: int, content: list[dict[str, Any]],
                  status: str) -> dict[str, Any]:
    return {"type": "message", "id": _item_id("msg", gen, index), "role": "assistant",
            "status": status, "content": content}


def _reasoning_text(text: str) -> dict[str, Any]:
    return {"type": "reasoning_text", "text": text}


def _reasoning_item(gen: Generation, index: int, content: list[dict[str, Any]], status: str,
                    details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    # Chat's `reasoning` is the model's reasoning text, not a summary: [object] reasoning.content
    # holds it as reasoning_text parts, and `summary` (required) stays empty. What the upstream
    # needs back next turn (signatures, redacted thinking, its own encrypted reasoning) is sealed
    # in encrypted_content, which a client sends back with the item as stateless clients do.
    item: dict[str, Any] = {"type": "reasoning", "id": _item_id("rs", gen, index), "summary": [],
                            "content": content, "status": status}
    if details:
        item["encrypted_content"] = reasoning.seal(details)
    return item


def _call_item(gen: Generation, index: int, call_id: Any, name: str, arguments: str,
               status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": _item_id("fc", gen, index),
            "call_id": call_id if isinstance(call_id, str) and call_id
            else _item_id("call", gen, index),
            "name": name, "arguments": arguments, "status": status}


# --------------------------------------------------------------------------- stream


class _Open:
    """An output item being streamed: its index, the text gathered so far, and for a reasoning
    item its reasoning_details pieces."""

    __slots__ = ("details", "index", "item", "pieces")

    def __init__(self, index: int, item: dict[str, Any]) -> None:
        self.index = index
        self.item = item
        self.pieces: list[str] = []
        self.details: list[dict[str, Any]] = []


class ResponsesStreamEncoder:
    """Canonical chunks -> the [streaming] event grammar, as `event: <type>` SSE frames.

        response.created, response.in_progress
        per output item: response.output_item.added
            message    content_part.added, output_text.delta…, output_text.done, content_part.done
            reasoning  content_part.added, reasoning_text.delta…, reasoning_text.done,
                       content_part.done
            call       function_call_arguments.delta…, function_call_arguments.done
        response.output_item.done
        response.completed | response.incomplete (with usage) | response.failed (with error)

    Reasoning and message items close when output of another kind starts, as OpenAI orders them;
    function calls, which a provider may interleave, close at the end. A repeated role-only
    opening (a fallback before any content) opens nothing.
    """

    __slots__ = ("_calls", "_current", "_finish", "_gen", "_output", "_seq", "_started")

    def __init__(self, gen: Generation) -> None:
        self._gen = gen
        self._seq = 0
        self._started = False
        self._output: list[dict[str, Any]] = []  # every item by output_index, as last sent
        self._current: _Open | None = None  # the open message or reasoning item
        self._calls: dict[int, _Open] = {}  # the open function calls by chat tool-call index
        self._finish: str | None = None

    def chunks(self, chunks: list[dict[str, Any]]) -> bytes:
        out: list[bytes] = []
        self._open(out)
        for chunk in chunks:
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0) != 0:
                    continue  # a Response has one output sequence; n > 1 is never asked for
                delta = choice.get("delta") or {}
                thought = delta.get("reasoning")
                details = delta.get("reasoning_details")
                if (isinstance(thought, str) and thought) or details:
                    self._text("reasoning", thought if isinstance(thought, str) else "", out)
                    if isinstance(details, list) and self._current is not None:
                        self._current.details += details
                content = delta.get("content")
                if isinstance(content, str) and content:
                    self._text("message", content, out)
                for call in delta.get("tool_calls") or ():
                    self._call(call, out)
                if choice.get("finish_reason") is not None:
                    self._finish = choice["finish_reason"]
        return b"".join(out)

    def finish(self, usage: dict[str, Any]) -> bytes:
        out: list[bytes] = []
        self._open(out)
        if not self._output:
            self._text("message", "", out)  # as in the non-streamed body: an answer has a message
        status = "incomplete" if self._finish in _INCOMPLETE else "completed"
        self._close_current(out, status)
        for call in self._calls.values():
            self._close(call, out, "completed")
        self._calls.clear()
        response = _response(self._gen, status, self._output, usage, self._finish)
        self._event(f"response.{status}", {"response": response}, out)
        return b"".join(out)

    def error(self, exc: EdgeproxyError) -> bytes:
        out: list[bytes] = []
        self._open(out)
        # [object] error.code is one of OpenAI's codes; the gateway's status and metadata (which
        # name the provider) ride along.
        code = "rate_limit_exceeded" if exc.status == 429 else "server_error"
        # What reached the client stays in the failed response, its open items "incomplete".
        for open_ in (self._current, *self._calls.values()):
            if open_ is not None:
                self._output[open_.index] = self._final(open_, "incomplete")
        error = {"code": code, "message": exc.message, "status": exc.status,
                 "metadata": exc.metadata}
        response = _response(self._gen, "failed", self._output, None, error=error)
        self._event("response.failed", {"response": response}, out)
        return b"".join(out)

    # -- events ---------------------------------------------------------------------------------

    def _event(self, kind: str, fields: dict[str, Any], out: list[bytes]) -> None:
        fields["type"] = kind
        fields["sequence_number"] = self._seq
        self._seq += 1
        out.extend((b"event: ", kind.encode(), b"\ndata: ", orjson.dumps(fields), b"\n\n"))

    def _open(self, out: list[bytes]) -> None:
        if not self._started:
            self._started = True
            response = _response(self._gen, "in_progress", [], None)
            self._event("response.created", {"response": response}, out)
            self._event("response.in_progress", {"response": response}, out)

    def _add(self, item: dict[str, Any], out: list[bytes]) -> _Open:
        index = len(self._output)
        self._output.append(item)
        self._event("response.output_item.added", {"output_index": index, "item": item}, out)
        return _Open(index, item)

    def _text(self, kind: str, text: str, out: list[bytes]) -> None:
        """A piece of message text or reasoning: opens the item it belongs to when needed."""
        current = self._current
        if current is None or current.item["type"] != kind:
            self._close_current(out, "completed")
            index = len(self._output)
            if kind == "message":
                item = _message_item(self._gen, index, [], "in_progress")
                part: dict[str, Any] = _output_text("")
            else:
                item = _reasoning_item(self._gen, index, [], "in_progress")
                part = _reasoning_text("")
            current = self._current = self._add(item, out)
            self._event("response.content_part.added", {
                "item_id": item["id"], "output_index": index, "content_index": 0, "part": part,
            }, out)
        if text:
            current.pieces.append(text)
            fields = {"item_id": current.item["id"], "output_index": current.index,
                      "content_index": 0, "delta": text}
            if kind == "message":
                fields["logprobs"] = []
            self._event("response.output_text.delta" if kind == "message"
                        else "response.reasoning_text.delta", fields, out)

    def _call(self, delta: dict[str, Any], out: list[bytes]) -> None:
        fn = delta.get("function") or {}
        key = delta.get("index", 0)
        call = self._calls.get(key)
        if call is None:
            self._close_current(out, "completed")
            item = _call_item(self._gen, len(self._output), delta.get("id"),
                              fn.get("name") or "", "", "in_progress")
            call = self._calls[key] = self._add(item, out)
        elif not call.item["name"] and fn.get("name"):
            call.item["name"] = fn["name"]
        arguments = fn.get("arguments")
        if isinstance(arguments, str) and arguments:
            call.pieces.append(arguments)
            self._event("response.function_call_arguments.delta", {
                "item_id": call.item["id"], "output_index": call.index, "delta": arguments,
            }, out)

    def _close_current(self, out: list[bytes], status: str) -> None:
        if self._current is not None:
            self._close(self._current, out, status)
            self._current = None

    def _final(self, open_: _Open, status: str) -> dict[str, Any]:
        """The item as it stands, with the text gathered so far."""
        item, text = open_.item, "".join(open_.pieces)
        kind = item["type"]
        if kind == "function_call":
            return {**item, "arguments": text, "status": status}
        if kind == "message":
            return _message_item(self._gen, open_.index, [_output_text(text)], status)
        return _reasoning_item(self._gen, open_.index, [_reasoning_text(text)], status,
                               reasoning.merge(open_.details))

    def _close(self, open_: _Open, out: list[bytes], status: str) -> None:
        """The item's closing events; its final form replaces the in-progress one in `_output`."""
        item = self._output[open_.index] = self._final(open_, status)
        where = {"item_id": item["id"], "output_index": open_.index}
        kind = item["type"]
        if kind == "function_call":
            self._event("response.function_call_arguments.done",
                        {**where, "arguments": item["arguments"]}, out)
        else:
            part = item["content"][0]
            if kind == "message":
                self._event("response.output_text.done", {
                    **where, "content_index": 0, "text": part["text"], "logprobs": [],
                }, out)
            else:
                self._event("response.reasoning_text.done",
                            {**where, "content_index": 0, "text": part["text"]}, out)
            self._event("response.content_part.done",
                        {**where, "content_index": 0, "part": part}, out)
        self._event("response.output_item.done", {"output_index": open_.index, "item": item}, out)
