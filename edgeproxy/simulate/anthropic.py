"""The Anthropic Messages API as the simulator speaks it.

Follows the Anthropic API reference: "Messages" (request validation, the `message` object,
content blocks text / image / tool_use / tool_result, stop_reason, usage with the prompt-caching
fields), "Streaming Messages" (event order message_start, content_block_start, ping,
content_block_delta with text_delta / input_json_delta, content_block_stop, message_delta,
message_stop, and `event: error` mid-stream), "Errors" (the body {"type": "error", "error":
{"type", "message"}} and the status of each error type, 529 overloaded_error), "Versioning"
(the anthropic-version header is required) and "Extended thinking" (`thinking` and what it rules
out; a signed thinking block first in the answer, signature_delta when streamed, a
redacted_thinking block when the prompt says "redact"; thinking blocks sent back must carry their
signature, and a tool-use continuation must start with its thinking). Routes: POST /v1/messages,
GET /v1/models.
"""

from __future__ import annotations

import base64
import hashlib
import time
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
_REDACTED_TOKENS = 8  # what a redacted_thinking block adds to output_tokens


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


# "Prompt caching": a breakpoint also hits a prefix cached up to 20 blocks before it; a cache lives
# 5 minutes from its last use, or 1 hour with "ttl": "1h". (The minimum cacheable length, 1024+
# tokens, is not simulated: the simulator's prompts are a few words.)
_LOOKBACK = 20
_KEEP_S = 10_000  # prefixes held before the expired ones are swept


def _ttl(mark: Any) -> float:
    if not isinstance(mark, dict):
        return 0.0
    return 3600.0 if mark.get("ttl") == "1h" else 300.0


def _cache_blocks(body: dict[str, Any]) -> list[tuple[bytes, int, float]]:
    """A validated request's prompt in prompt caching's order (tools, system, messages): each
    block's content without its mark, its tokens, and the TTL of a breakpoint on it (0: none).
    A top-level cache_control ("automatic caching") marks the last block."""
    out: list[tuple[bytes, int, float]] = []

    def add(role: str, block: Any, tokens: int) -> None:
        mark = block.get("cache_control") if isinstance(block, dict) else None
        bare = {k: v for k, v in block.items() if k != "cache_control"} \
            if isinstance(block, dict) else block
        out.append((orjson.dumps([role, bare], option=orjson.OPT_SORT_KEYS), tokens, _ttl(mark)))

    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        add("tool", tool, 0)  # (tool definitions add no prompt tokens in the simulator)
    system = body.get("system")
    if isinstance(system, str):
        add("system", system, count_tokens(system))
    for block in system if isinstance(system, list) else ():
        add("system", block, count_tokens(block.get("text", "")) if isinstance(block, dict) else 0)
    for msg in body["messages"]:
        content = msg["content"]
        if isinstance(content, str):
            add(msg["role"], content, count_tokens(content))
            continue
        for block in content:
            add(msg["role"], block, count_tokens(_block_text(block, "")))
    top = _ttl(body.get("cache_control"))
    if top and out and not out[-1][2]:
        out[-1] = (out[-1][0], out[-1][1], top)
    return out


def _cache_use(cache: dict[bytes, float], model: str, blocks: list[tuple[bytes, int, float]],
               now: float) -> tuple[int, int]:
    """(tokens read, tokens written) of one request: the longest prefix already cached at a
    breakpoint (or up to _LOOKBACK blocks before it) is read, the rest up to the last breakpoint
    is written; each breakpoint's prefix is then cached, and the one read kept alive."""
    marks = [i for i, b in enumerate(blocks) if b[2]]
    if not marks:
        return 0, 0
    running = hashlib.sha256(model.encode())
    digests, totals, total = [], [], 0
    for key, tokens, _ in blocks:
        running.update(len(key).to_bytes(8, "big") + key)
        digests.append(running.digest())
        total += tokens
        totals.append(total)
    hit = -1
    for m in marks:
        for j in range(m, max(-1, m - _LOOKBACK - 1), -1):
            if cache.get(digests[j], 0.0) > now:
                hit = max(hit, j)
                break
    if len(cache) > _KEEP_S:
        for d in [d for d, until in cache.items() if until <= now]:
            del cache[d]
    if hit >= 0:
        cache[digests[hit]] = max(cache[digests[hit]], now + 300.0)
    for m in marks:
        cache[digests[m]] = max(cache.get(digests[m], 0.0), now + blocks[m][2])
    read = totals[hit] if hit >= 0 else 0
    return read, max(0, totals[marks[-1]] - read)


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
    if kind == "redacted_thinking":
        if not _redacted_ok(block.get("data")):
            raise Invalid(f"{where}: Invalid `data` in `redacted_thinking` block")
        return ""
    # "Extended thinking": a thinking block must come back exactly as it was returned; the
    # signature vouches for the text.
    text = block.get("thinking")
    if not isinstance(text, str) or block.get("signature") != signature(text):
        raise Invalid(f"{where}: Invalid `signature` in `thinking` block")
    return text


def signature(thinking: str) -> str:
    """The signature the simulator gives a thinking block's text (opaque and checked, like
    Anthropic's)."""
    return base64.b64encode(b"EqSim" + hashlib.sha256(thinking.encode()).digest()).decode()


_REDACTED = b"sim-redacted-thinking:"
REDACT_WORD = "redact"  # a prompt with this word also gets a redacted_thinking block


def _redacted_ok(data: Any) -> bool:
    try:
        return isinstance(data, str) and base64.b64decode(data).startswith(_REDACTED)
    except ValueError:
        return False


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
    _parse_thinking(body, conv, messages)
    stops = body.get("stop_sequences")
    conv.stop = [s for s in stops if isinstance(s, str)] if isinstance(stops, list) else []
    conv.cache_blocks = _cache_blocks(body)
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


_DOCS = " Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/"


def _parse_thinking(body: dict[str, Any], conv: Conversation, messages: list[Any]) -> None:
    """"Extended thinking": the `thinking` setting and what it rules out ("Feature
    compatibility"), and the tool-use rule of "Preserving thinking blocks"."""
    thinking = body.get("thinking")
    if thinking is None:
        return
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind not in ("enabled", "disabled", "adaptive"):
        raise Invalid("thinking: Input tag found using 'type' does not match any of the expected "
                      "tags: 'enabled', 'disabled', 'adaptive'")
    if kind == "disabled":
        return
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool):
            raise Invalid("thinking.enabled.budget_tokens: Field required")
        if budget < 1024:
            raise Invalid("thinking.enabled.budget_tokens: Input should be greater than or "
                          "equal to 1024")
        if conv.max_tokens is not None and budget >= conv.max_tokens:
            raise Invalid("`max_tokens` must be greater than `thinking.budget_tokens`."
                          + _DOCS + "extended-thinking#max-tokens-and-context-window-size")
    if body.get("temperature") not in (None, 1, 1.0):
        raise Invalid("`temperature` may only be set to 1 when thinking is enabled."
                      + _DOCS + "extended-thinking#feature-compatibility")
    if body.get("top_k") is not None:
        raise Invalid("`top_k` must be unset when thinking is enabled."
                      + _DOCS + "extended-thinking#feature-compatibility")
    top_p = body.get("top_p")
    if isinstance(top_p, int | float) and top_p < 0.95:
        raise Invalid("`top_p` must be greater than or equal to 0.95 or unset when thinking is "
                      "enabled." + _DOCS + "extended-thinking#feature-compatibility")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        raise Invalid("Thinking may not be enabled when tool_choice forces tool use.")
    last = messages[-1]
    content = last.get("content")
    if len(messages) > 1 and last["role"] == "user" and isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
        turn = messages[-2].get("content")
        first = turn[0].get("type") if isinstance(turn, list) and turn else "text"
        if first not in ("thinking", "redacted_thinking"):
            raise Invalid(
                f"messages.{len(messages) - 2}.content.0.type: Expected `thinking` or "
                f"`redacted_thinking`, but found `{first}`. When `thinking` is enabled, a final "
                "`assistant` message must start with a thinking block (preceeding the lastmost "
                "set of `tool_use` and `tool_result` blocks). We recommend you include thinking "
                "blocks from previous turns. To avoid this requirement, disable `thinking`."
                + _DOCS + "extended-thinking")
    conv.reasoning = True


class _Responder:
    """Renders a plan as a Messages response or its event stream."""

    def __init__(self, sim: Sim, request: web.Request, model: str, conv: Conversation):
        plan = make_plan(conv, sim.opts)
        self.sim, self.request, self.model, self.plan = sim, request, model, plan
        self.id = sim.new_id("msg_01", 22)
        self.tool_id = sim.new_id("toolu_01", 22)
        self.request_id = sim.new_id("req_011", 22)
        # [prompt caching] input_tokens counts only what was neither read from nor written to
        # the cache: the three counts add up to the prompt.
        read, written = sim.opts.cache_split(plan.prompt_tokens)
        if not (read or written):
            read, written = _cache_use(sim.prompt_cache, model, conv.cache_blocks,
                                       time.monotonic())
        self.cache_read = min(read, plan.prompt_tokens)
        self.cache_write = min(written, plan.prompt_tokens - self.cache_read)
        self.input_tokens = plan.prompt_tokens - self.cache_read - self.cache_write
        # Claude usually says a few words before a tool call it was not forced to make.
        self.preamble = ""
        if plan.finish == "tool" and conv.tool_choice == "auto" and not conv.forced_tool:
            self.preamble = f"I'll use the {plan.tool_name} tool."
        # With thinking on, the answer starts with a signed thinking block (and a redacted one
        # when the prompt asks for it); thinking is billed as output.
        self.redacted = ""
        if plan.thought and REDACT_WORD in conv.last_user_text.lower():
            self.redacted = base64.b64encode(_REDACTED + sim.new_id("", 32).encode()).decode()
        self.output_tokens = (plan.completion_tokens + count_tokens(self.preamble)
                              + plan.thought_tokens + (_REDACTED_TOKENS if self.redacted else 0))

    def usage(self, output_tokens: int) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_write,
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

    def thinking(self) -> list[dict[str, Any]]:
        thought = self.plan.thought
        if not thought:
            return []
        out = [{"type": "thinking", "thinking": thought, "signature": signature(thought)}]
        if self.redacted:
            out.append({"type": "redacted_thinking", "data": self.redacted})
        return out

    def blocks(self) -> list[dict[str, Any]]:
        plan = self.plan
        if plan.finish != "tool":
            return [*self.thinking(), *([{"type": "text", "text": plan.text}] if plan.text else [])]
        out = [*self.thinking(), *([{"type": "text", "text": self.preamble}]
                                   if self.preamble else [])]
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
        if plan.thought:
            # "Streaming": thinking_delta pieces, then one signature_delta before the stop; a
            # redacted_thinking block comes whole in its content_block_start.
            deltas = [{"type": "thinking_delta", "thinking": p} for p in pieces(plan.thought)]
            deltas.append({"type": "signature_delta", "signature": signature(plan.thought)})
            blocks.append(({"type": "thinking", "thinking": "", "signature": ""}, deltas))
            if self.redacted:
                blocks.append(({"type": "redacted_thinking", "data": self.redacted}, []))
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
