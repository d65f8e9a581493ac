"""The Anthropic Messages API as the simulator speaks it.

Follows the Anthropic API reference: "Messages" (request validation, the `message` object,
content blocks text / image / tool_use / tool_result, stop_reason, usage with the prompt-caching
fields), "Streaming Messages" (event order message_start, content_block_start, ping,
content_block_delta with text_delta / input_json_delta, content_block_stop, message_delta,
message_stop, and `event: error` mid-stream), "Errors" (the body {"type": "error", "error":
{"type", "message"}} and the status of each error type, 529 overloaded_error) and "Versioning"
(the anthropic-version header is required). Routes: POST /v1/messages, GET /v1/models.
"""

from __future__ import annotations

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
    open_sse,
    pieces,
    send_truncated,
    sever,
)

__all__ = ["routes"]

STOP_REASON = {
    "stop": "end_turn",
    "stop_sequence": "stop_sequence",
    "length": "max_tokens",
    "tool": "tool_use",
    "safety": "refusal",
}
DEFAULT_MODELS = ["claude-3-5-sonnet-20241022", "claude-3-5-haiku-20241022"]
BLOCK_TYPES = (
    "text",
    "image",
    "document",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
)
MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")

# "Errors › HTTP errors": the error type of each status.
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out."),
    529: ("overloaded_error", "Overloaded"),
}
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def error(status: int, message: str | None = None, request_id: str = "") -> web.Response:
    """The Anthropic error body for an HTTP status (unknown 5xx are api_error)."""
    kind, default = _ERRORS.get(status, ("api_error", "Internal server error"))
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message or default}}
    if request_id:
        body["request_id"] = request_id
        return json_response(body, status, {"request-id": request_id})
    return json_response(body, status)


def _wants_stream(_: web.Request, body: Any) -> bool:
    return isinstance(body, dict) and body.get("stream") is True


def _check_headers(request: web.Request, sim: Sim) -> None:
    key = request.headers.get("x-api-key")
    if not key:
        raise Invalid("x-api-key header is required", 401)
    if sim.opts.api_key is not None and key != sim.opts.api_key:
        raise Invalid("invalid x-api-key", 401)
    if not request.headers.get("anthropic-version"):
        raise Invalid("anthropic-version: header is required")


def _has_cache_control(value: Any) -> bool:
    if isinstance(value, dict):
        return "cache_control" in value or any(_has_cache_control(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_cache_control(v) for v in value)
    return False


def _block_text(block: dict[str, Any], where: str) -> str:
    """Validate one content block and return the text it adds to the prompt."""
    kind = block.get("type")
    if kind not in BLOCK_TYPES:
        expected = ", ".join(f"'{t}'" for t in BLOCK_TYPES)
        raise Invalid(
            f"{where}.type: Input tag '{kind}' found using 'type' does not match any of the "
            f"expected tags: {expected}"
        )
    if kind == "text":
        if not isinstance(block.get("text"), str) or not block["text"]:
            raise Invalid("messages: text content blocks must be non-empty")
        return block["text"]
    if kind == "image":
        source = block.get("source")
        if not isinstance(source, dict) or source.get("type") not in ("base64", "url"):
            raise Invalid(f"{where}.source: Field required")
        if source["type"] == "base64":
            if source.get("media_type") not in MEDIA_TYPES:
                raise Invalid(
                    f"{where}.source.base64.media_type: Input should be 'image/jpeg', "
                    "'image/png', 'image/gif' or 'image/webp'"
                )
            if not isinstance(source.get("data"), str):
                raise Invalid(f"{where}.source.base64.data: Field required")
        return ""
    if kind == "tool_use":
        for name in ("id", "name"):
            if not isinstance(block.get(name), str):
                raise Invalid(f"{where}.tool_use.{name}: Field required")
        return orjson.dumps(block.get("input", {})).decode()
    if kind == "tool_result":
        if not isinstance(block.get("tool_use_id"), str):
            raise Invalid(f"{where}.tool_result.tool_use_id: Field required")
        content = block.get("content", "")
        if isinstance(content, list):
            return " ".join(b.get("text", "") for b in content if isinstance(b, dict))
        return str(content)
    return str(block.get("thinking", ""))


def parse(body: Any) -> tuple[str, Conversation]:
    """Validate a Messages request as the API does and reduce it to a Conversation."""
    if body is BAD_JSON or not isinstance(body, dict):
        raise Invalid("There was an issue with your request body: it is not valid JSON")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Invalid("model: Field required")
    conv = Conversation()
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise Invalid("max_tokens: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise Invalid("max_tokens: Input should be a valid integer")
    if max_tokens < 1:
        raise Invalid("max_tokens: Input should be greater than or equal to 1")
    conv.max_tokens = max_tokens
    messages = body.get("messages")
    if messages is None:
        raise Invalid("messages: Field required")
    if not isinstance(messages, list) or not messages:
        raise Invalid("messages: at least one message is required")
    system = body.get("system")
    if isinstance(system, str):
        conv.prompt_texts.append(system)
    elif isinstance(system, list):
        conv.prompt_texts += [b.get("text", "") for b in system if isinstance(b, dict)]
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role == "system":
            # "Messages › messages": there is no "system" role; system goes top-level.
            raise Invalid(
                'messages: Unexpected role "system". The Messages API accepts a top-level '
                '`system` parameter, not "system" as an input message role.'
            )
        if role not in ("user", "assistant"):
            raise Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if i == 0 and role != "user":
            raise Invalid('messages: first message must use the "user" role')
        content = msg.get("content")
        if isinstance(content, str):
            if not content and not (role == "assistant" and i == len(messages) - 1):
                raise Invalid("messages: text content blocks must be non-empty")
            texts, results = [content], []
        elif isinstance(content, list):
            where = f"messages.{i}.content"
            blocks = [b if isinstance(b, dict) else {} for b in content]
            texts = [_block_text(b, f"{where}.{j}") for j, b in enumerate(blocks)]
            results = [t for b, t in zip(blocks, texts, strict=True) if b["type"] == "tool_result"]
        else:
            raise Invalid(f"messages.{i}.content: Input should be a valid list")
        conv.prompt_texts += texts
        if role == "user":
            conv.last_user_text = " ".join(texts)
            conv.last_role = "tool" if results else "user"
            conv.tool_result = " ".join(results)
        else:
            conv.last_role = "assistant"
    _parse_tools(body, conv)
    stops = body.get("stop_sequences")
    conv.stop = [s for s in stops if isinstance(s, str)] if isinstance(stops, list) else []
    conv.cache_control = _has_cache_control([system, messages, body.get("tools")])
    return model, conv


def _parse_tools(body: dict[str, Any], conv: Conversation) -> None:
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise Invalid(f"tools.{i}.name: Field required")
        if "type" in tool and tool["type"] != "custom":
            continue  # server tools (web_search, …) have no input_schema
        if not isinstance(tool.get("input_schema"), dict):
            raise Invalid(f"tools.{i}.custom.input_schema: Field required")
        conv.tools.append((tool["name"], tool["input_schema"]))
    choice = body.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        raise Invalid(
            "tool_choice: Input tag found using 'type' does not match any of the expected "
            "tags: 'auto', 'any', 'tool', 'none'"
        )
    if kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise Invalid("tool_choice.tool.name: Field required")
        conv.forced_tool = choice["name"]
    conv.tool_choice = {"any": "required", "tool": "auto"}.get(kind, str(kind))


class _Responder:
    """Renders a plan as a Messages response or its event stream."""

    def __init__(self, sim: Sim, request: web.Request, model: str, conv: Conversation):
        plan = make_plan(conv, sim.opts)
        self.sim, self.request, self.model, self.plan = sim, request, model, plan
        self.id = sim.new_id("msg_01", 22)
        self.tool_id = sim.new_id("toolu_01", 22)
        self.request_id = sim.new_id("req_011", 22)
        # With prompt caching the cached part is read, not input: input_tokens counts the rest.
        self.cache_read = plan.prompt_tokens // 2 if conv.cache_control else 0
        self.input_tokens = plan.prompt_tokens - self.cache_read
        # Claude usually says a few words before a tool call it was not forced to make.
        self.preamble = ""
        if plan.finish == "tool" and conv.tool_choice == "auto" and not conv.forced_tool:
            self.preamble = f"I'll use the {plan.tool_name} tool."
        self.output_tokens = plan.completion_tokens + count_tokens(self.preamble)

    def usage(self, output_tokens: int) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": self.cache_read,
            "output_tokens": output_tokens,
        }

    def message(self, content: list[dict[str, Any]], stop: str | None) -> dict[str, Any]:
        plan = self.plan
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": plan.stop_sequence if stop else None,
            "usage": self.usage(self.output_tokens if stop else 1),
        }

    def blocks(self) -> list[dict[str, Any]]:
        plan = self.plan
        if plan.finish != "tool":
            return [{"type": "text", "text": plan.text}] if plan.text else []
        out = [{"type": "text", "text": self.preamble}] if self.preamble else []
        tool = {"type": "tool_use", "id": self.tool_id, "name": plan.tool_name}
        return [*out, {**tool, "input": plan.tool_args}]

    async def whole(self) -> web.StreamResponse:
        if self.sim.opts.tokens_per_s:
            await nap(self.request, self.output_tokens / self.sim.opts.tokens_per_s)
        body = self.message(self.blocks(), STOP_REASON[self.plan.finish])
        resp = json_response(body, headers={"request-id": self.request_id})
        if self.sim.cut() is not None:
            await send_truncated(self.request, resp)
        return resp

    async def stream(self) -> web.StreamResponse:
        request, plan = self.request, self.plan
        resp = await open_sse(request, {"request-id": self.request_id})

        def event(kind: str, data: dict[str, Any]) -> bytes:
            return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

        # Each block: (content_block_start payload, [content_block_delta deltas]).
        blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        text = self.preamble if plan.finish == "tool" else plan.text
        if text:
            deltas = [{"type": "text_delta", "text": p} for p in pieces(text)]
            blocks.append(({"type": "text", "text": ""}, deltas))
        if plan.finish == "tool":
            start = {"type": "tool_use", "id": self.tool_id, "name": plan.tool_name, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in plan.tool_pieces]
            blocks.append((start, deltas))
        cut = self.sim.cut()
        pacer = Pacer(request, self.sim.opts.tokens_per_s)
        await resp.write(
            event("message_start", {"type": "message_start", "message": self.message([], None)})
        )
        sent = 0
        for index, (start, deltas) in enumerate(blocks):
            block_start = {"type": "content_block_start", "index": index, "content_block": start}
            await resp.write(event("content_block_start", block_start))
            if index == 0:
                await resp.write(event("ping", {"type": "ping"}))
            for delta in deltas:
                if cut is not None and sent >= cut:
                    await self._fail(resp)
                await pacer.tick()
                data = {"type": "content_block_delta", "index": index, "delta": delta}
                await resp.write(event("content_block_delta", data))
                sent += 1
            if cut is not None and index == len(blocks) - 1:
                await self._fail(resp)  # the reply was shorter than drop_after
            stop = {"type": "content_block_stop", "index": index}
            await resp.write(event("content_block_stop", stop))
        if cut is not None:
            await self._fail(resp)  # no content block at all
        ending = {"stop_reason": STOP_REASON[plan.finish], "stop_sequence": plan.stop_sequence}
        tail = {
            "type": "message_delta",
            "delta": ending,
            "usage": {"output_tokens": self.output_tokens},
        }
        await resp.write(event("message_delta", tail))
        await resp.write(event("message_stop", {"type": "message_stop"}))
        return resp

    async def _fail(self, resp: web.StreamResponse) -> None:
        """drop: close the connection; midstream_error: an `event: error` overloaded_error
        ("Streaming Messages › Error events"), after which the stream ends."""
        if self.sim.opts.fault != "midstream_error":
            sever(self.request)
        payload = b"event: error\ndata: " + orjson.dumps(OVERLOADED) + b"\n\n"
        await resp.write(payload)
        raise _Ended(resp)


class _Ended(Exception):
    def __init__(self, resp: web.StreamResponse) -> None:
        self.resp = resp


def routes(sim: Sim) -> list[web.RouteDef]:
    """The Anthropic routes of a simulator."""

    def injected(status: int, message: str | None) -> web.Response:
        return error(status, message, sim.new_id("req_011", 22))

    dialect = Dialect(error=injected, overloaded_status=529, wants_stream=_wants_stream)

    async def messages(request: web.Request, body: Any) -> web.StreamResponse:
        try:
            _check_headers(request, sim)
            model, conv = parse(body)
        except Invalid as exc:
            return error(exc.status, exc.message, sim.new_id("req_011", 22))
        responder = _Responder(sim, request, model, conv)
        if body.get("stream") is True:
            try:
                return await responder.stream()
            except _Ended as ended:
                return ended.resp
        return await responder.whole()

    async def models(_: web.Request) -> web.Response:
        names = sim.opts.models or DEFAULT_MODELS
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
            for m in names
        ]
        body = {"data": data, "has_more": False, "first_id": names[0], "last_id": names[-1]}
        return json_response(body)

    return [
        web.post("/v1/messages", endpoint(sim, dialect, messages)),
        web.get("/v1/models", models),
    ]
