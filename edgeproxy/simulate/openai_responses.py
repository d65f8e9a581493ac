"""The OpenAI Responses API as the simulator speaks it.

Follows the OpenAI API reference: "Responses › Create a model response" (request validation: `input`
as a string or items — message, function_call, function_call_output, reasoning —, `instructions`,
flat function tools, `tool_choice`, `text.format`, `reasoning`, `max_output_tokens` of at least 16,
chat-only parameters refused), "The response object" (output items message / function_call /
reasoning, status and incomplete_details, usage) and "Streaming events" (`event:` + `data:` frames
each with a sequence_number, ending in response.completed or response.incomplete, or
response.failed for a failure mid-stream; no [DONE]). The "Function calling" guide's strict mode:
function tools are strict unless `strict: false`, so an omitted `strict` makes every property
required, and an explicit `strict: true` refuses a schema that is not strict-ready. Errors, auth and
the overload status are the chat simulator's ("Error codes"). "Conversation state" and
"Reasoning": with `include: ["reasoning.encrypted_content"]` the reasoning item carries its
encrypted content, and with `store: false` a reasoning item comes back only with it. Routes: POST
/v1/responses (also /responses).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson
from aiohttp import web

from ._common import (
    BAD_JSON,
    Conversation,
    Dialect,
    Invalid,
    Pacer,
    Sim,
    count_tokens,
    endpoint,
    json_response,
    make_plan,
    nap,
    now,
    open_sse,
    pieces,
    send_truncated,
    sever,
)
from .openai import EFFORTS, _check_auth, _type_name, _wants_stream, error

__all__ = ["routes"]

MIN_OUTPUT_TOKENS = 16
ROLES = ("assistant", "system", "developer", "user")
SUMMARIES = ("auto", "concise", "detailed")
# Content part types per role: what a model said, or what it is given.
_OUTPUT_PARTS = ("output_text", "refusal")
_INPUT_PARTS = ("input_text", "input_image", "input_file")
# Chat completions parameters that have another name here, and ones that do not exist at all.
_MOVED = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "response_format": "text.format",
}
_UNKNOWN = ("stop", "seed", "n", "logit_bias", "frequency_penalty", "presence_penalty")
_FAILED = {
    "code": "server_error",
    "message": "The server had an error processing your request. Sorry about that!",
}


def _missing(name: str) -> Invalid:
    return Invalid(
        f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
    )


def _bad_value(value: Any, name: str, allowed: tuple[str, ...]) -> Invalid:
    supported = ", ".join(f"'{v}'" for v in allowed[:-1]) + f", and '{allowed[-1]}'"
    return Invalid(
        f"Invalid value: '{value}'. Supported values are: {supported}.",
        param=name,
        code="invalid_value",
    )


class _Request:
    """A validated request: the Conversation the fake model reads, plus what the response
    object echoes back."""

    def __init__(self, body: Any) -> None:
        if body is BAD_JSON or not isinstance(body, dict):
            raise Invalid("We could not parse the JSON body of your request.")
        self.body = body
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _missing("model")
        self.model = model
        for name, moved in _MOVED.items():
            if name in body:
                raise Invalid(
                    f"Unsupported parameter: '{name}'. In the Responses API, this parameter has "
                    f"moved to '{moved}'. Try again with the new parameter.",
                    param=name,
                    code="unsupported_parameter",
                )
        for name in _UNKNOWN:
            if name in body:
                raise Invalid(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
        self.conv = Conversation(max_tokens=self._max_output_tokens())
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            self.conv.prompt_texts.append(instructions)
        self._input(body.get("input"))
        self.tools = self._tools(body.get("tools"))
        self._tool_choice(body.get("tool_choice"))
        self._text_format(body.get("text"))
        self.reasoning = self._reasoning(body.get("reasoning"))
        include = body.get("include")
        # `include`: the reasoning comes back encrypted, to be sent back with a stateless request.
        self.encrypted = isinstance(include, list) and ENCRYPTED in include

    def _max_output_tokens(self) -> int | None:
        value = self.body.get("max_output_tokens")
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid(
                f"Invalid type for 'max_output_tokens': expected an integer, but got "
                f"{_type_name(value)} instead.",
                param="max_output_tokens",
                code="invalid_type",
            )
        if value < MIN_OUTPUT_TOKENS:
            raise Invalid(
                f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
                f"{MIN_OUTPUT_TOKENS}, but got {value} instead.",
                param="max_output_tokens",
                code="integer_below_min_value",
            )
        return value

    def _input(self, raw: Any) -> None:
        conv = self.conv
        if raw is None:
            raise _missing("input")
        if isinstance(raw, str):
            raw = [{"role": "user", "content": raw}]
        if not isinstance(raw, list):
            raise Invalid(
                f"Invalid type for 'input': expected one of a string or array of input items, "
                f"but got {_type_name(raw)} instead.",
                param="input",
                code="invalid_type",
            )
        calls: set[str] = set()
        for i, item in enumerate(raw):
            where = f"input[{i}]"
            if not isinstance(item, dict):
                raise Invalid(
                    f"Invalid type for '{where}': expected an input item, but got "
                    f"{_type_name(item)} instead.",
                    param=where,
                    code="invalid_type",
                )
            kind = item.get("type", "message")
            if kind == "message":
                self._message(item, where)
            elif kind == "function_call":
                for name in ("call_id", "name", "arguments"):
                    if not isinstance(item.get(name), str):
                        raise _missing(f"{where}.{name}")
                calls.add(item["call_id"])
                conv.prompt_texts.append(item["arguments"])
                conv.last_role = "assistant"
            elif kind == "function_call_output":
                call_id = item.get("call_id")
                if not isinstance(call_id, str):
                    raise _missing(f"{where}.call_id")
                if call_id not in calls:
                    # Stateless (store: false) requests must carry the call they answer.
                    raise Invalid(
                        f"No tool call found for function call output with call_id {call_id}.",
                        param="input",
                    )
                output = item.get("output")
                text = output if isinstance(output, str) else _parts_text(output, where)
                conv.prompt_texts.append(text)
                conv.last_role, conv.tool_result = "tool", text
            elif kind == "reasoning":  # earlier thinking, replayed: no prompt text
                self._reasoning_item(item)
            else:
                raise _bad_value(
                    kind, f"{where}.type", ("message", "function_call", "function_call_output")
                )

    def _reasoning_item(self, item: dict[str, Any]) -> None:
        """"Conversation state": with store false nothing is kept, so a reasoning item comes back
        only with its encrypted_content, which must be what the API gave."""
        rid = item.get("id")
        data = item.get("encrypted_content")
        if data is None:
            if self.body.get("store") is False:
                raise Invalid(
                    f"Item with id '{rid}' not found. Items are not persisted when `store` is set "
                    "to false. Try again with `store` set to true, or remove this item from your "
                    "input.", param="input")
            return
        if not isinstance(data, str) or not _sealed(data):
            raise Invalid(f"The encrypted content for item {rid} could not be verified.",
                          param="input", code="invalid_encrypted_content")

    def _message(self, item: dict[str, Any], where: str) -> None:
        role = item.get("role")
        if role not in ROLES:
            raise _bad_value(role, f"{where}.role", ROLES)
        content = item.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            allowed = _OUTPUT_PARTS if role == "assistant" else _INPUT_PARTS
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind not in allowed:
                    raise _bad_value(kind, f"{where}.content[{j}].type", allowed)
                if kind == "input_image" and not (part.get("image_url") or part.get("file_id")):
                    raise _missing(f"{where}.content[{j}].image_url")
            text = _parts_text(content, where)
        else:
            raise _missing(f"{where}.content")
        conv = self.conv
        conv.prompt_texts.append(text)
        conv.last_role = "system" if role == "developer" else role
        if role == "user":
            conv.last_user_text = text

    def _tools(self, raw: Any) -> list[dict[str, Any]]:
        tools = raw if isinstance(raw, list) else []
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type") != "function":
                continue  # hosted tools (web_search, file_search, ...) are not simulated
            if not isinstance(tool.get("name"), str):
                raise _missing(f"tools[{i}].name")
            schema = tool.get("parameters")
            schema = schema if isinstance(schema, dict) else {}
            strict = tool.get("strict")
            if strict is True:
                problem = _not_strict(schema)
                if problem:
                    raise Invalid(
                        f"Invalid schema for function '{tool['name']}': {problem}",
                        param=f"tools[{i}].parameters",
                        code="invalid_function_parameters",
                    )
            elif strict is None and isinstance(schema.get("properties"), dict):
                # Strict by default: the schema is normalised, every property becomes required.
                schema = {**schema, "required": list(schema["properties"])}
            self.conv.tools.append((tool["name"], schema))
        return tools

    def _tool_choice(self, choice: Any) -> None:
        conv = self.conv
        if choice is None:
            return
        if choice in ("none", "auto", "required"):
            conv.tool_choice = choice
        elif isinstance(choice, dict) and choice.get("type") == "function":
            if not isinstance(choice.get("name"), str):
                raise _missing("tool_choice.name")
            conv.forced_tool = choice["name"]
        else:
            raise _bad_value(choice, "tool_choice", ("none", "auto", "required"))

    def _text_format(self, text: Any) -> None:
        fmt = text.get("format") if isinstance(text, dict) else None
        if fmt is None:
            return
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "json_schema":
            for name in ("name", "schema"):
                if name not in fmt:
                    raise _missing(f"text.format.{name}")
            self.conv.json_schema = fmt["schema"]
        elif kind == "json_object":
            self.conv.json_mode = True
        elif kind != "text":
            raise _bad_value(kind, "text.format.type", ("text", "json_object", "json_schema"))

    def _reasoning(self, raw: Any) -> dict[str, Any] | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise Invalid("Invalid type for 'reasoning': expected an object.", param="reasoning")
        effort, summary = raw.get("effort", "medium"), raw.get("summary")
        if effort not in EFFORTS:
            raise _bad_value(effort, "reasoning.effort", EFFORTS)
        if summary is not None and summary not in SUMMARIES:
            raise _bad_value(summary, "reasoning.summary", SUMMARIES)
        return {"effort": effort, "summary": summary}


def _parts_text(parts: Any, where: str) -> str:
    if not isinstance(parts, list):
        raise _missing(f"{where}.content")
    return " ".join(
        p.get("text", "") for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)
    )


def _not_strict(schema: Any, path: tuple[str, ...] = ()) -> str | None:
    """Why a schema is not strict-ready ("Structured Outputs › Supported schemas": every object
    has additionalProperties false and lists all its properties as required), or None."""
    if not isinstance(schema, dict):
        return None
    props = schema.get("properties")
    if schema.get("type") == "object" or isinstance(props, dict):
        props = props if isinstance(props, dict) else {}
        if schema.get("additionalProperties") is not False:
            return (
                f"In context={path}, 'additionalProperties' is required to be supplied and to be "
                "false."
            )
        required = schema.get("required")
        missing = [p for p in props if not isinstance(required, list) or p not in required]
        if missing:
            return (
                f"In context={path}, 'required' is required to be supplied and to be an array "
                f"including every key in properties. Missing '{missing[0]}'."
            )
        for name, sub in props.items():
            problem = _not_strict(sub, (*path, "properties", name))
            if problem:
                return problem
    return _not_strict(schema.get("items"), (*path, "items"))


ENCRYPTED = "reasoning.encrypted_content"
_SEALED = b"sim-reasoning:"


def _sealed(data: str) -> bool:
    try:
        return base64.b64decode(data, validate=True).startswith(_SEALED)
    except binascii.Error:
        return False


class _Failed(Exception):
    """The stream ended with response.failed (midstream_error): return what was written."""

    def __init__(self, resp: web.StreamResponse) -> None:
        self.resp = resp


class _Responder:
    """Renders one plan as a Response object or its event stream."""

    def __init__(self, sim: Sim, request: web.Request, req: _Request) -> None:
        self.sim, self.request, self.req = sim, request, req
        self.plan = make_plan(req.conv, sim.opts)
        self.id = sim.new_id("resp_", 48)
        self.created = now()
        self.headers = {"x-request-id": sim.new_id("req_", 32), "openai-version": "2020-10-01"}
        # A reasoning model thinks before it answers; the summary is returned only when asked for.
        reasoning = req.reasoning
        self.thought = f"Considering: {req.conv.last_user_text}".strip() if reasoning else ""
        self.summary = bool(reasoning and reasoning["summary"])
        self.encrypted = bool(reasoning and req.encrypted)
        self.item_ids = {kind: sim.new_id(prefix, 48) for kind, prefix in _ITEM_PREFIX.items()}
        self.call_id = sim.new_id("call_")

    @property
    def status(self) -> str:
        return "incomplete" if self.plan.finish == "length" else "completed"

    def usage(self) -> dict[str, Any]:
        plan, reasoning = self.plan, count_tokens(self.thought)
        output = plan.completion_tokens + reasoning
        read, written = self.sim.opts.cache_split(plan.prompt_tokens)  # parts of input_tokens
        return {
            "input_tokens": plan.prompt_tokens,
            "input_tokens_details": {"cached_tokens": read, "cache_write_tokens": written},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": plan.prompt_tokens + output,
        }

    def response(self, status: str, output: list[dict[str, Any]], final: bool) -> dict[str, Any]:
        body = self.req.body
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "background": False,
            "error": _FAILED if status == "failed" else None,
            "incomplete_details": {"reason": "max_output_tokens"}
            if status == "incomplete"
            else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "metadata": body.get("metadata") or {},
            "model": self.req.model,
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": None,
            "reasoning": self.req.reasoning or {"effort": None, "summary": None},
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": {"format": fmt or {"type": "text"}, "verbosity": "medium"},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": self.req.tools,
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": self.usage() if final else None,
            "user": body.get("user"),
        }

    # -- output items, whole (as in the response object) or opening (as output_item.added)

    def reasoning_item(self, whole: bool) -> dict[str, Any]:
        summary = [{"type": "summary_text", "text": self.thought}] if whole and self.summary else []
        item = {"id": self.item_ids["reasoning"], "type": "reasoning", "summary": summary}
        if whole and self.encrypted:
            item["encrypted_content"] = base64.b64encode(_SEALED + self.thought.encode()).decode()
        return item

    def call_item(self, whole: bool) -> dict[str, Any]:
        return {
            "id": self.item_ids["function_call"],
            "type": "function_call",
            "status": "completed" if whole else "in_progress",
            "call_id": self.call_id,
            "name": self.plan.tool_name,
            "arguments": self.plan.tool_json if whole else "",
        }

    def text_part(self, whole: bool) -> dict[str, Any]:
        return {
            "type": "output_text",
            "text": self.plan.text if whole else "",
            "annotations": [],
            "logprobs": [],
        }

    def message_item(self, whole: bool) -> dict[str, Any]:
        return {
            "id": self.item_ids["message"],
            "type": "message",
            "status": (self.status if whole else "in_progress"),
            "role": "assistant",
            "content": [self.text_part(True)] if whole else [],
        }

    def output(self) -> list[dict[str, Any]]:
        out = [self.reasoning_item(True)] if self.summary or self.encrypted else []
        if self.plan.finish == "tool":
            return [*out, self.call_item(True)]
        return [*out, self.message_item(True)]

    async def whole(self) -> web.StreamResponse:
        if self.sim.opts.tokens_per_s:
            tokens = self.usage()["output_tokens"]
            await nap(self.request, tokens / self.sim.opts.tokens_per_s)
        body = self.response(self.status, self.output(), final=True)
        resp = json_response(body, headers=self.headers)
        if self.sim.cut() is not None:
            await send_truncated(self.request, resp)  # a drop: half the JSON, then EOF
        return resp

    def frames(self) -> list[tuple[bool, dict[str, Any]]]:
        """The events between response.in_progress and the terminal one, in order, each marked
        True when it carries generated tokens (paced, and counted for drop_after)."""
        frames = self._reasoning_frames() if self.summary or self.encrypted else []
        index = 1 if frames else 0  # the answer follows the reasoning item, if there is one
        if self.plan.finish == "tool":
            return frames + self._call_frames(index)
        return frames + self._message_frames(index)

    def _reasoning_frames(self) -> list[tuple[bool, dict[str, Any]]]:
        at = {"item_id": self.item_ids["reasoning"], "output_index": 0, "summary_index": 0}
        part = {"type": "summary_text", "text": ""}
        summary = [
            _plain("response.reasoning_summary_part.added", part=part, **at),
            *[
                _paced("response.reasoning_summary_text.delta", delta=piece, **at)
                for piece in pieces(self.thought)
            ],
            _plain("response.reasoning_summary_text.done", text=self.thought, **at),
            _plain(
                "response.reasoning_summary_part.done", part={**part, "text": self.thought}, **at
            ),
        ] if self.summary else []
        return [
            _plain("response.output_item.added", item=self.reasoning_item(False), output_index=0),
            *summary,
            _plain("response.output_item.done", item=self.reasoning_item(True), output_index=0),
        ]

    def _call_frames(self, index: int) -> list[tuple[bool, dict[str, Any]]]:
        at = {"item_id": self.item_ids["function_call"], "output_index": index}
        return [
            _plain("response.output_item.added", item=self.call_item(False), output_index=index),
            *[
                _paced("response.function_call_arguments.delta", delta=piece, **at)
                for piece in self.plan.tool_pieces
            ],
            _plain("response.function_call_arguments.done", arguments=self.plan.tool_json, **at),
            _plain("response.output_item.done", item=self.call_item(True), output_index=index),
        ]

    def _message_frames(self, index: int) -> list[tuple[bool, dict[str, Any]]]:
        at = {"item_id": self.item_ids["message"], "output_index": index, "content_index": 0}
        return [
            _plain("response.output_item.added", item=self.message_item(False), output_index=index),
            _plain("response.content_part.added", part=self.text_part(False), **at),
            *[
                _paced("response.output_text.delta", delta=piece, logprobs=[], **at)
                for piece in self.plan.pieces
            ],
            _plain("response.output_text.done", text=self.plan.text, logprobs=[], **at),
            _plain("response.content_part.done", part=self.text_part(True), **at),
            _plain("response.output_item.done", item=self.message_item(True), output_index=index),
        ]

    async def stream(self) -> web.StreamResponse:
        request = self.request
        resp = await open_sse(request, self.headers)
        seq = 0

        async def send(event: dict[str, Any]) -> None:
            nonlocal seq
            event["sequence_number"] = seq
            seq += 1
            kind = event["type"].encode()
            await resp.write(b"event: " + kind + b"\ndata: " + orjson.dumps(event) + b"\n\n")

        async def fail() -> None:
            """drop: close the connection; midstream_error: response.failed, then the end."""
            if self.sim.opts.fault != "midstream_error":
                sever(request)
            failed = self.response("failed", [], final=False)
            await send({"type": "response.failed", "response": failed})
            raise _Failed(resp)

        cut = self.sim.cut()
        pacer = Pacer(request, self.sim.opts.tokens_per_s)
        opening = self.response("in_progress", [], final=False)
        await send({"type": "response.created", "response": opening})
        await send({"type": "response.in_progress", "response": opening})
        sent = 0
        for counted, event in self.frames():
            if counted:
                if cut is not None and sent >= cut:
                    await fail()
                await pacer.tick()
                sent += 1
            await send(event)
        if cut is not None:
            await fail()  # the reply was shorter than drop_after
        final = self.response(self.status, self.output(), final=True)
        await send({"type": f"response.{self.status}", "response": final})
        return resp


_ITEM_PREFIX = {"message": "msg_", "function_call": "fc_", "reasoning": "rs_"}


def _plain(kind: str, **fields: Any) -> tuple[bool, dict[str, Any]]:
    return False, {"type": kind, **fields}


def _paced(kind: str, **fields: Any) -> tuple[bool, dict[str, Any]]:
    return True, {"type": kind, **fields}


def routes(sim: Sim) -> list[web.RouteDef]:
    """The Responses API routes of a simulator."""
    dialect = Dialect(error=error, overloaded_status=500, wants_stream=_wants_stream)

    async def create(request: web.Request, body: Any) -> web.StreamResponse:
        try:
            _check_auth(request, sim)
            req = _Request(body)
        except Invalid as exc:
            return error(exc.status, exc.message, **exc.extra)
        responder = _Responder(sim, request, req)
        if body.get("stream") is True:
            try:
                return await responder.stream()
            except _Failed as failed:
                return failed.resp
        return await responder.whole()

    handle = endpoint(sim, dialect, create)
    return [web.post("/v1/responses", handle), web.post("/responses", handle)]
