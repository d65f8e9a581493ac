"""OpenAI chat completions <-> the OpenAI Responses API (SPEC §3, §4), sans-IO.

Some OpenAI models are served on POST /v1/responses only (gpt-5-pro, o3-pro): a provider with
`protocol = "openai-responses"` reaches them. Sources, cited below by section name
(platform.openai.com/docs):
  [create]     API reference, Responses › "Create a model response": input (items), instructions,
               tools, tool_choice, text.format, reasoning, max_output_tokens, store, stream
  [object]     API reference, Responses › "The response object": status, incomplete_details,
               output items (message / function_call / reasoning), usage, error
  [streaming]  API reference, Responses › "Streaming events" (every event carries `type` and
               `sequence_number`; the stream ends with response.completed, response.incomplete
               or response.failed, with no [DONE] sentinel)
  [functions]  Guide "Function calling": flat function tools, function_call and
               function_call_output items paired by call_id; "Strict mode" (on by default here)
  [structured] Guide "Structured Outputs": text.format {type: json_schema, name, schema, strict}
  [errors]     API reference "Error codes": the body {"error": {"message", "type", "param", "code"}}

The request side is plain functions over dicts; the response side is `parse_response` and one small
state machine, `ResponsesStreamDecoder`, fed raw bytes through the shared `SSEParser`.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import (
    BadRequest,
    EdgeproxyError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from ..reasoning import (
    OPENAI_RESPONSES,
    ask,
    details_of,
    encrypted_item,
    openai_effort,
    summary_item,
    text_item,
)
from ._openai_request import tool_arguments
from .base import SSEParser, Target, UpstreamCall, count_at, json_object, str_at, translated
from .openai import error_message

__all__ = ["ResponsesAdapter", "ResponsesStreamDecoder", "build_responses_body", "parse_response"]

# [create] max_output_tokens: the API refuses values below 16 (integer_below_min_value), where chat
# completions accepts any positive max_tokens; a smaller cap is raised to that floor.
MIN_OUTPUT_TOKENS = 16

# [object] incomplete_details.reason -> OpenAI chat's finish_reason; other reasons end as "stop"
# with the reason kept in native_finish_reason.
_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}

# [object] error.code of a failed response (and the `code` of a stream `error` event) -> the HTTP
# status it stands for; any other code is a server-side failure.
_ERROR_STATUS = {
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "invalid_prompt": 400,
    "context_length_exceeded": 400,
    "server_error": 500,
}

_TOOL_CHOICE = ("auto", "none", "required")


class ResponsesAdapter:
    """Translate OpenAI chat completions to the Responses API and back."""

    name = "openai-responses"
    needs_dict = True

    def build_request(
        self, req: dict[str, Any] | None, body: bytes, target: Target, stream: bool
    ) -> UpstreamCall:
        """POST {base_url}/responses with the translated body. Raises BadRequest (400) for what the
        Responses API cannot express (audio input, invalid tool-call arguments, unknown roles)."""
        payload = translated(req, lambda r: build_responses_body(r, target, stream))
        headers = {"Content-Type": "application/json"}
        if target.api_key:
            headers["Authorization"] = "Bearer " + target.api_key
        return UpstreamCall(f"{target.base_url.rstrip('/')}/responses", headers, payload)

    def parse_response(self, status: int, data: bytes) -> dict[str, Any]:
        """A Response object -> {"choices": [...], "usage": {...}}."""
        return parse_response(json_object(data, "openai-responses: response body"))

    def parse_error(self, status: int, data: bytes) -> tuple[str, Any]:
        """[errors] the same error body as chat completions."""
        return error_message(data)

    def effective_status(self, status: int, raw: Any) -> int:
        return status

    def stream_decoder(self) -> ResponsesStreamDecoder:
        return ResponsesStreamDecoder()


# --------------------------------------------------------------------------- request: chat -> Responses


def build_responses_body(req: dict[str, Any], target: Target, stream: bool) -> dict[str, Any]:
    """The Responses API body for one OpenAI chat request (a pure function)."""
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty array")
    instructions: list[str] = []
    items: list[dict[str, Any]] = []
    for msg in messages:
        if not isinstance(msg, dict):
            raise BadRequest("each message must be an object")
        role = msg.get("role")
        if role in ("system", "developer"):
            # [create] instructions: "a system (or developer) message inserted into the model's
            # context"; several system messages are joined in order.
            text = _plain_text(msg.get("content"), role)
            if text:
                instructions.append(text)
        elif role == "user":
            parts = _input_parts(msg.get("content"))
            if parts:
                items.append({"type": "message", "role": "user", "content": parts})
        elif role == "assistant":
            items.extend(_assistant_items(msg))
        elif role == "tool":
            items.append(_call_output(msg))
        else:
            raise BadRequest(f"unsupported message role: {role!r}")

    # store: false — the gateway is stateless, nothing is kept upstream for a later
    # previous_response_id; the whole conversation is sent as input items every time.
    out: dict[str, Any] = {"model": target.model, "input": items, "store": False}
    if instructions:
        out["instructions"] = "\n\n".join(instructions)
    tools = _tools(req.get("tools"))
    if tools:
        out["tools"] = tools
        choice = _tool_choice(req.get("tool_choice"))
        if choice is not None:
            out["tool_choice"] = choice
    parallel = req.get("parallel_tool_calls")
    if isinstance(parallel, bool) and tools:
        out["parallel_tool_calls"] = parallel
    fmt = _text_format(req.get("response_format"))
    if fmt is not None:
        out["text"] = {"format": fmt}
    max_tokens = _max_tokens(req)
    if max_tokens is not None:
        out["max_output_tokens"] = max(max_tokens, MIN_OUTPUT_TOKENS)
    for key in ("temperature", "top_p"):
        value = req.get(key)
        if value is not None:
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise BadRequest(f"{key} must be a number")
            out[key] = value
    reasoning = _reasoning(req, target)
    if reasoning:
        out["reasoning"] = reasoning
        if reasoning.get("effort") != "none" and not ask(req, target.thinking).exclude:
            # [create] include: the reasoning comes back encrypted, so that the next turn can
            # send it back (store is false: nothing is kept at OpenAI).
            out["include"] = ["reasoning.encrypted_content"]
    user, metadata = req.get("user"), req.get("metadata")
    if isinstance(user, str) and user:
        out["user"] = user
    if isinstance(metadata, dict) and metadata:
        out["metadata"] = metadata
    # stop, seed, n, logit_bias and the penalties have no [create] parameter: dropped, as OpenRouter
    # drops what an endpoint does not support (`provider.require_parameters` routes around it).
    if stream:
        out["stream"] = True
    return out


def _plain_text(content: Any, role: str) -> str:
    """System, developer and assistant content: a string or text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest("message content must be a string or an array of content parts")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind != "refusal":  # an earlier refusal carries nothing to replay
            raise BadRequest(f"only text parts are supported in {role} messages")
    return "".join(texts)


def _input_parts(content: Any) -> list[dict[str, Any]]:
    """User (and tool result) content -> [create] input_text / input_image / input_file parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}] if content else []
    if not isinstance(content, list):
        raise BadRequest("message content must be a string or an array of content parts")
    out: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            raise BadRequest("each content part must be an object")
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise BadRequest("a text part needs a string `text`")
            out.append({"type": "input_text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise BadRequest("image_url.url must be a string")
            detail = image.get("detail") if isinstance(image, dict) else None
            # input_image takes an http(s) URL or a data URL as it is.
            out.append({"type": "input_image", "image_url": url, "detail": detail or "auto"})
        elif kind == "file":
            out.append(_input_file(part.get("file")))
        elif kind != "refusal":
            # input_audio and anything newer: [create] input content is text, image or file.
            raise BadRequest(
                f"content parts of type {kind!r} are not supported by openai-responses"
            )
    return out


def _input_file(file: Any) -> dict[str, Any]:
    # Chat's `file` part {file_id | file_data (a data URL), filename} maps member for member.
    if not isinstance(file, dict):
        raise BadRequest("a file part needs a `file` object")
    out: dict[str, Any] = {"type": "input_file"}
    for key in ("file_id", "file_data", "filename"):
        if isinstance(file.get(key), str):
            out[key] = file[key]
    if "file_id" not in out and "file_data" not in out:
        raise BadRequest("a file part needs file_id or file_data")
    return out


def _assistant_items(msg: dict[str, Any]) -> list[dict[str, Any]]:
    """An assistant turn -> a message item, then one function_call item per tool call
    ([functions]: the call's id travels as call_id, its arguments as a JSON string).

    [create] an input message with role assistant and string content is an earlier model output
    (the API types it as output_text; input_text parts would be refused in that role)."""
    items = _reasoning_items(msg)
    text = _plain_text(msg.get("content"), "assistant")
    if text:
        items.append({"type": "message", "role": "assistant", "content": text})
    calls = msg.get("tool_calls")
    if calls is None:
        return items
    if not isinstance(calls, list):
        raise BadRequest("tool_calls must be an array")
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequest("each tool call needs function.name")
        items.append(
            {
                "type": "function_call",
                "call_id": _call_id(call.get("id")),
                "name": fn["name"],
                "arguments": orjson.dumps(tool_arguments(fn.get("arguments"))).decode(),
            }
        )
    return items


def _call_output(msg: dict[str, Any]) -> dict[str, Any]:
    # [functions] a tool result is a function_call_output item; its output is a string or a list
    # of input parts.
    content = msg.get("content")
    output: str | list[dict[str, Any]] = (
        content if isinstance(content, str) else _input_parts(content)
    )
    return {
        "type": "function_call_output",
        "call_id": _call_id(msg.get("tool_call_id")),
        "output": output,
    }


def _call_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest("tool call ids must be non-empty strings")
    return value


def _tools(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequest("tools must be an array")
    tools = []
    for tool in raw:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type", "function") != "function":
            raise BadRequest("only tools of type 'function' are supported")
        if not isinstance(fn.get("name"), str):
            raise BadRequest("each tool needs function.name")
        params = fn.get("parameters")
        # [functions] the Responses API makes function tools strict unless told otherwise, which
        # rewrites optional fields into required ones; chat's default (not strict) is kept.
        entry: dict[str, Any] = {
            "type": "function",
            "name": fn["name"],
            "parameters": params if isinstance(params, dict) else {"type": "object"},
            "strict": fn.get("strict") is True,
        }
        if isinstance(fn.get("description"), str):
            entry["description"] = fn["description"]
        tools.append(entry)
    return tools


def _tool_choice(choice: Any) -> str | dict[str, Any] | None:
    if choice is None or choice in _TOOL_CHOICE:
        return choice
    fn = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(fn, dict) and isinstance(fn.get("name"), str):
        return {"type": "function", "name": fn["name"]}  # [create] tool_choice, function form
    raise BadRequest("tool_choice must be auto, none, required or a function")


def _text_format(fmt: Any) -> dict[str, Any] | None:
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind != "json_schema" or not isinstance(fmt.get("json_schema"), dict):
        raise BadRequest("response_format must be text, json_object or json_schema")
    # [structured] the json_schema members sit directly in text.format; name is required.
    spec = fmt["json_schema"]
    name = spec.get("name")
    out: dict[str, Any] = {
        "type": "json_schema",
        "name": name if isinstance(name, str) and name else "response",
        "schema": spec.get("schema") if isinstance(spec.get("schema"), dict) else {},
        "strict": spec.get("strict") is True,
    }
    if isinstance(spec.get("description"), str):
        out["description"] = spec["description"]
    return out


def _max_tokens(req: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = req.get(key)
        if value is not None:
            if type(value) is not int or value < 1:
                raise BadRequest(f"{key} must be a positive integer")
            return value
    return None


def _reasoning(req: dict[str, Any], target: Target) -> dict[str, Any]:
    """The request's reasoning (edgeproxy.reasoning) -> [create] reasoning {effort, summary}, for
    an endpoint that takes reasoning (an effort-only API). `summary` (OpenAI's own member)
    passes through: reasoning summaries come back only when asked for, and OpenAI grants them
    to verified organisations only."""
    if not target.reasoning:
        return {}
    asked = ask(req, target.thinking)
    out: dict[str, Any] = {}
    effort = openai_effort(asked, _max_tokens(req) or target.default_max_tokens)
    if effort is not None:
        out["effort"] = effort
    if asked.summary is not None:
        out["summary"] = asked.summary
    return out


def _reasoning_items(msg: dict[str, Any]) -> list[dict[str, Any]]:
    """[object] the reasoning items of an earlier assistant turn, from the reasoning_details the
    gateway returned with it: only those with their encrypted_content, the one form a
    stateless (store: false) request can send back; their summaries ride along."""
    items: dict[str, dict[str, Any]] = {}
    for detail in details_of(msg):
        rid = detail.get("id")
        if detail.get("format") != OPENAI_RESPONSES or not isinstance(rid, str):
            continue
        item = items.setdefault(rid, {"type": "reasoning", "id": rid, "summary": []})
        kind = detail.get("type")
        if kind == "reasoning.encrypted" and isinstance(detail.get("data"), str):
            item["encrypted_content"] = detail["data"]
        elif kind == "reasoning.summary" and isinstance(detail.get("summary"), str):
            item["summary"].append({"type": "summary_text", "text": detail["summary"]})
    return [item for item in items.values() if "encrypted_content" in item]


# --------------------------------------------------------------------------- response: Responses -> chat


def _str(obj: dict[str, Any], key: str) -> str:
    return str_at(obj, key, "openai-responses")


def _list(obj: dict[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise UpstreamProtocolError(f"openai-responses: `{key}` is not an array")
    return value


def _count(obj: Any, key: str) -> int:
    return count_at(obj, key, "openai-responses: usage")


def _usage(u: Any) -> dict[str, Any]:
    """[object] usage -> OpenAI usage. input_tokens already includes the cached part (read, and
    written where the model bills writes: `cache_write_tokens`, GPT-5.6 and later per OpenRouter's
    prompt-caching guide), and output_tokens the reasoning tokens (billed as completion tokens,
    SPEC §5.3)."""
    if not isinstance(u, dict):
        u = {}
    prompt = _count(u, "input_tokens")
    completion = _count(u, "output_tokens")
    details = u.get("input_tokens_details")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {
            "cached_tokens": _count(details, "cached_tokens"),
            "cache_write_tokens": _count(details, "cache_write_tokens"),
        },
        "completion_tokens_details": {
            "reasoning_tokens": _count(u.get("output_tokens_details"), "reasoning_tokens")
        },
    }


def _ending(resp: dict[str, Any], called: bool) -> tuple[str, str]:
    """(finish_reason, native_finish_reason) of a finished Response: a truncation or a filter from
    incomplete_details, else tool_calls when a function was called, else stop."""
    status = resp.get("status")
    if status == "incomplete":
        details = resp.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        if not isinstance(reason, str):
            return "length", "incomplete"
        return _INCOMPLETE.get(reason, "stop"), reason
    if status not in ("completed", None):
        raise UpstreamProtocolError(
            f"openai-responses: response is not finished (status {status!r})"
        )
    return ("tool_calls" if called else "stop"), "completed"


def _failed(err: Any) -> UpstreamStatusError:
    """A failed Response's `error` or a stream `error` event -> the error to record or relay."""
    err = err if isinstance(err, dict) else {}
    code, message = err.get("code"), err.get("message")
    code = code if isinstance(code, str) else "error"
    return UpstreamStatusError(
        f"openai-responses: {code}: {message if isinstance(message, str) else ''}",
        raw=err,
        upstream_status=_ERROR_STATUS.get(code, 500),
    )


def _call(item: dict[str, Any]) -> dict[str, Any]:
    # [functions] call_id is what the function_call_output of the next turn refers to.
    return {
        "id": _str(item, "call_id"),
        "type": "function",
        "function": {"name": _str(item, "name"), "arguments": _str(item, "arguments")},
    }


def _summary_text(item: dict[str, Any]) -> list[str]:
    # Reasoning summaries ("summary_text"), or the raw reasoning text some models return.
    parts = [*_list(item, "summary"), *_list(item, "content")]
    return [_str(p, "text") for p in parts if isinstance(p, dict) and "text" in p]


def _details(item: dict[str, Any], index: int) -> list[dict[str, Any]]:
    """[object] a reasoning item -> its reasoning_details (numbered from `index`), each with the
    item's id: summaries, reasoning text and the encrypted_content (asked for by `include`)."""
    rid = item.get("id") if isinstance(item.get("id"), str) else None
    out: list[dict[str, Any]] = []
    for part in _list(item, "summary"):
        if isinstance(part, dict) and "text" in part:
            out.append(summary_item(_str(part, "text"), OPENAI_RESPONSES, index + len(out), rid))
    for part in _list(item, "content"):
        if isinstance(part, dict) and "text" in part:
            out.append(text_item(_str(part, "text"), OPENAI_RESPONSES, index + len(out), id=rid))
    data = item.get("encrypted_content")
    if isinstance(data, str) and data:
        out.append(encrypted_item(data, OPENAI_RESPONSES, index + len(out), rid))
    return out


def parse_response(resp: dict[str, Any]) -> dict[str, Any]:
    """[object] a Response -> the OpenAI choices and usage."""
    if resp.get("status") == "failed":
        raise _failed(resp.get("error"))
    if "output" not in resp and isinstance(resp.get("error"), dict):
        raise _failed(resp["error"])
    texts: list[str] = []
    refusals: list[str] = []
    reasoning: list[str] = []
    details: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for item in _list(resp, "output"):
        if not isinstance(item, dict):
            raise UpstreamProtocolError("openai-responses: an output item is not an object")
        kind = item.get("type")
        if kind == "message":
            for part in _list(item, "content"):
                ptype = part.get("type") if isinstance(part, dict) else None
                if ptype == "output_text":
                    texts.append(_str(part, "text"))
                elif ptype == "refusal":
                    refusals.append(_str(part, "refusal"))
        elif kind == "function_call":
            calls.append(_call(item))
        elif kind == "reasoning":
            reasoning.extend(_summary_text(item))
            details.extend(_details(item, len(details)))
        # hosted-tool items (web_search_call, file_search_call, ...) have no chat field.
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if refusals:
        message["refusal"] = "".join(refusals)
    if reasoning:
        message["reasoning"] = "\n\n".join(reasoning)
    if details:
        message["reasoning_details"] = details
    if calls:
        message["tool_calls"] = calls
    finish, native = _ending(resp, bool(calls))
    return {
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish,
                "native_finish_reason": native,
            }
        ],
        "usage": _usage(resp.get("usage")),
    }


# --------------------------------------------------------------------------- streaming


def _chunk(delta: dict[str, Any]) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise UpstreamProtocolError("openai-responses: expected a string in a stream event")
    return value


class ResponsesStreamDecoder:
    """[streaming] semantic events -> OpenAI chat.completion.chunk fields.

    response.created opens the message; output_text deltas become content, reasoning summary
    (or reasoning text) deltas become reasoning, and each function_call output item becomes one
    tool call: announced by response.output_item.added (id = call_id, name), then its
    function_call_arguments deltas. Tool-call indexes count function calls only, as chat numbers
    them. response.completed / response.incomplete carry the finished Response: its status gives
    the finish chunk and its usage the usage chunk. Events not listed (content_part.*, *.done,
    annotations, hosted tools, events added later) carry nothing new and are skipped.
    """

    __slots__ = ("_args", "_details", "_done", "_failed", "_part", "_sse", "_started", "_tools")

    def __init__(self) -> None:
        self._sse = SSEParser()
        self._failed: UpstreamError | None = None
        self._started = False
        self._done = False
        self._tools: dict[str, int] = {}  # output item id (or output_index) -> tool-call index
        self._args: list[bool] = []  # per tool call: whether argument text has gone out
        self._part: tuple[str, Any] | None = None  # the reasoning part deltas last came from
        self._details = 0  # reasoning_details items so far

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Bytes as they arrive -> chunks; raises UpstreamStatusError for response.failed or an
        `error` event and UpstreamProtocolError for an event that is not of the documented shape.

        When a failure follows events of the same read, their chunks are returned first and the
        error is raised by the next feed() or close(), so no content that arrived is dropped."""
        if self._failed is not None:
            raise self._failed
        out: list[dict[str, Any]] = []
        try:
            for event, payload in self._sse.feed(data):
                if not self._done:
                    self._event(event, payload, out)
        except UpstreamError as exc:
            if not out:
                raise
            self._failed = exc
        return out

    def close(self) -> list[dict[str, Any]]:
        """The body ended: fine after response.completed / .incomplete, UpstreamProtocolError
        before it (a last event left without its blank line is dispatched first)."""
        out = self.feed(b"\n\n") if self._sse.pending() else []
        if self._failed is not None:
            raise self._failed
        if not self._done:
            raise UpstreamProtocolError("openai-responses: stream ended before response.completed")
        return out

    def _event(self, event: str, payload: bytes, out: list[dict[str, Any]]) -> None:
        obj = json_object(payload, f"openai-responses: {event!r} event")
        kind = obj.get("type", event)
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            return
        try:
            handler(self, obj, out)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            if isinstance(exc, EdgeproxyError):
                raise
            raise UpstreamProtocolError(f"openai-responses: malformed {kind!r} event") from None

    def _emit(self, out: list[dict[str, Any]], delta: dict[str, Any]) -> None:
        if not self._started:
            self._started = True
            out.append(_chunk({"role": "assistant", "content": ""}))
        if delta:
            out.append(_chunk(delta))

    @staticmethod
    def _key(ev: dict[str, Any]) -> str:
        # Deltas name their item by item_id; output_index is the fallback for servers without ids.
        item_id = ev.get("item_id")
        if item_id is None and isinstance(ev.get("item"), dict):
            item_id = ev["item"].get("id")
        return item_id if isinstance(item_id, str) and item_id else f"#{ev['output_index']}"

    def _created(self, ev: dict[str, Any], out: list[dict[str, Any]]) -> None:
        self._emit(out, {})

    def _text_delta(self, ev: dict[str, Any], out: list[dict[str, Any]]) -> None:
        self._emit(out, {"content": _text(ev["delta"])})

    def _refusal_delta(self, ev: dict[str, Any], out: list[dict[str, Any]]) -> None:
        self._emit(out, {"refusal": _text(ev["delta"])})

    def _reasoning_delta(self, ev: dict[str, Any], out: list[dict[str, Any]]) -> None:
        # Summary parts (and reasoning items) are separated by a blank line, as parse_response
        # joins them.
        part = (self._key(ev), ev.get("summary_index", ev.get("content_index")))
        text = _text(ev["delta"])
        if self._part is not None and part != self._part:
            text = "\n\n" + text
        self._part = part
        self._emit(out, {"reasoning": text})

    def _item_added(self, ev: dict[str, Any], out: list[dict[str, Any]]) -> None:
        item = ev["item"]
        if item["type"] == "function_call":
            self._announce(ev, item, out)

    def _announce(self, ev: dict[str, Any], item: dict[str, Any], out: list[dict[str, Any]]) -> int:
        index = len(self._args)
        self._tools[self._key(ev)] = index
        args = item.get("arguments") or ""
        self._args.append(bool(args))
        call = {
            "index": index,
            "id": _text(item["call_id"]),
            "type": "function",
            "function": {"name": _text(item["name"]), "arguments": _text(args)},
        }
        self._emit(out, {"tool_calls": [call]})
        return index

    def _arguments(self, index: int, piece: str, out: list[dict[str, Any]]) -> None:
        if piece:
            self._args[index] = True
            self._emit(out, {"tool_calls": [{"index": index, "function": {"arguments": piece}}]})

    def _args_delta(self, ev: dict[str, Any], out: list[dict[str, Any]]) -> None:
        index = self._tools.get(self._key(ev))
        if index is None:
            raise UpstreamProtocolError("openai-responses: arguments for an unannounced call")
        self._arguments(index, _text(ev["delta"]), out)

    def _args_done(self, ev: dict[str, Any], out: list[dict[str, Any]]) -> None:
        # A server that sends the arguments whole, without deltas: they go out here, once.
        index = self._tools.get(self._key(ev))
        if index is not None and not self._args[index]:
            self._arguments(index, _text(ev["arguments"]), out)

    def _item_done(self, ev: dict[str, Any], out: list[dict[str, Any]]) -> None:
        item = ev["item"]
        if item["type"] == "reasoning":
            # Its text went out as reasoning deltas; the item's reasoning_details go whole.
            details = _details(item, self._details)
            if details:
                self._details += len(details)
                self._emit(out, {"reasoning_details": details})
            return
        if item["type"] != "function_call":
            return
        index = self._tools.get(self._key(ev))
        if index is None:
            self._announce(ev, item, out)  # a call that arrived whole, with no `added` event
        elif not self._args[index]:
            self._arguments(index, _text(item.get("arguments") or ""), out)

    def _finished(self, ev: dict[str, Any], out: list[dict[str, Any]]) -> None:
        resp = ev["response"]
        if not isinstance(resp, dict):
            raise UpstreamProtocolError("openai-responses: `response` is not an object")
        finish, native = _ending(resp, bool(self._args))
        self._emit(out, {})
        self._done = True
        out.append(
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {},
                        "finish_reason": finish,
                        "native_finish_reason": native,
                    }
                ]
            }
        )
        out.append({"choices": [], "usage": _usage(resp.get("usage"))})

    def _response_failed(self, ev: dict[str, Any], out: list[dict[str, Any]]) -> None:
        resp = ev.get("response")
        raise _failed(resp.get("error") if isinstance(resp, dict) else None)

    def _error(self, ev: dict[str, Any], out: list[dict[str, Any]]) -> None:
        raise _failed(ev)


_HANDLERS = {
    "response.created": ResponsesStreamDecoder._created,
    "response.output_text.delta": ResponsesStreamDecoder._text_delta,
    "response.refusal.delta": ResponsesStreamDecoder._refusal_delta,
    "response.reasoning_summary_text.delta": ResponsesStreamDecoder._reasoning_delta,
    "response.reasoning_text.delta": ResponsesStreamDecoder._reasoning_delta,
    "response.output_item.added": ResponsesStreamDecoder._item_added,
    "response.function_call_arguments.delta": ResponsesStreamDecoder._args_delta,
    "response.function_call_arguments.done": ResponsesStreamDecoder._args_done,
    "response.output_item.done": ResponsesStreamDecoder._item_done,
    "response.completed": ResponsesStreamDecoder._finished,
    "response.incomplete": ResponsesStreamDecoder._finished,
    "response.failed": ResponsesStreamDecoder._response_failed,
    "error": ResponsesStreamDecoder._error,
}
