"""The OpenAI wire format as the simulator speaks it.

Follows the OpenAI API reference: "Chat › Create chat completion" (the request, the
`chat.completion` object, the `chat.completion.chunk` stream and `stream_options.include_usage`),
"Completions (legacy)", "Embeddings › Create embeddings", "Models › List", and "Error codes" for
the error body {"error": {"message", "type", "param", "code"}}; "Reasoning models":
`reasoning_effort`, whose hidden reasoning is counted in usage (OpenRouter's own `reasoning` is an
unknown argument here). Routes: POST /v1/chat/completions
(also /chat/completions), POST /v1/completions, POST /v1/embeddings, GET /v1/models.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import Any

import orjson
from aiohttp import web

from ._common import (
    BAD_JSON,
    Conversation,
    Dialect,
    Invalid,
    Pacer,
    Plan,
    Sim,
    SimOptions,
    count_tokens,
    endpoint,
    json_response,
    make_plan,
    nap,
    now,
    open_sse,
    send_truncated,
    sever,
)

__all__ = ["routes"]

ROLES = ("system", "assistant", "user", "function", "tool", "developer")
FINISH = {
    "stop": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "tool": "tool_calls",
    "safety": "content_filter",
}
DEFAULT_MODELS = ["gpt-4o-mini", "gpt-4o"]
# "Reasoning models": reasoning_effort values (models differ in which they take).
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
FINGERPRINT = "fp_edgeproxy_sim"
# "Embeddings › Create embeddings" and the embeddings guide: 1536 numbers a vector (3072 for
# text-embedding-3-large); `dimensions` "only supported in text-embedding-3 and later models";
# at most 2048 inputs of at most 8192 tokens each, none empty.
EMBEDDING_SIZES = {"text-embedding-3-large": 3072}
DEFAULT_EMBEDDING_SIZE = 1536
NO_DIMENSIONS = frozenset({"text-embedding-ada-002"})
MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDING_TOKENS = 8192
_INVALID_INPUT = (
    "'$.input' is invalid. Please check the API reference: "
    "https://platform.openai.com/docs/api-reference."
)

# "Error codes": the type and code OpenAI sends with each status.
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    402: ("invalid_request_error", "payment_required", "Payment required."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def error(status: int, message: str | None = None, **extra: Any) -> web.Response:
    """The OpenAI error body for an HTTP status."""
    kind, code, default = _ERRORS.get(status, ("server_error", None, "Upstream error."))
    body = {
        "error": {
            "message": message or default,
            "type": kind,
            "param": extra.get("param"),
            "code": extra.get("code", code),
        }
    }
    return json_response(body, status)


def _invalid_response(exc: Invalid) -> web.Response:
    return error(exc.status, exc.message, **exc.extra)


def _wants_stream(_: web.Request, body: Any) -> bool:
    return isinstance(body, dict) and body.get("stream") is True


def _check_auth(request: web.Request, sim: Sim) -> None:
    expected = sim.opts.api_key
    if expected is None:
        return
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer ") or not auth[7:].strip():
        raise Invalid(
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            401,
            code=None,
        )
    key = auth[7:].strip()
    if key != expected:
        masked = key[:3] + "*" * 4 + key[-4:] if len(key) > 8 else "****"
        raise Invalid(f"Incorrect API key provided: {masked}.", 401, code="invalid_api_key")


def _type_name(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", float: "a number", list: "an array"}
    return names.get(type(value), "an object" if isinstance(value, dict) else "null")


def _int_param(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid(
            f"Invalid type for '{name}': expected an integer, but got {_type_name(value)} instead.",
            param=name,
            code="invalid_type",
        )
    if value < 1:
        raise Invalid(
            f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got "
            f"{value} instead.",
            param=name,
            code="integer_below_min_value",
        )
    return value


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _model_of(body: Any) -> str:
    if body is BAD_JSON or not isinstance(body, dict):
        raise Invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON.)"
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Invalid("you must provide a model parameter")
    return model


def _common_params(body: Any) -> tuple[str, Conversation]:
    model = _model_of(body)
    conv = Conversation()
    for name in ("max_tokens", "max_completion_tokens"):
        value = _int_param(body, name)
        conv.max_tokens = value if value is not None else conv.max_tokens
    stop = body.get("stop")
    conv.stop = [stop] if isinstance(stop, str) else [s for s in stop or [] if isinstance(s, str)]
    return model, conv


def parse_chat(body: Any) -> tuple[str, Conversation]:
    """Validate a chat request the way OpenAI does and reduce it to a Conversation."""
    model, conv = _common_params(body)
    messages = body.get("messages")
    if messages is None:
        raise Invalid(
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(messages, list):
        raise Invalid(
            f"Invalid type for 'messages': expected an array of objects, but got "
            f"{_type_name(messages)} instead.",
            param="messages",
            code="invalid_type",
        )
    if not messages:
        raise Invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got "
            "an empty array instead.",
            param="messages",
            code="empty_array",
        )
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg:
            raise Invalid(
                f"Missing required parameter: 'messages[{i}].role'.",
                param=f"messages[{i}].role",
                code="missing_required_parameter",
            )
        role = msg["role"]
        if role not in ROLES:
            supported = ", ".join(f"'{r}'" for r in ROLES[:-1]) + f", and '{ROLES[-1]}'"
            raise Invalid(
                f"Invalid value: '{role}'. Supported values are: {supported}.",
                param=f"messages[{i}].role",
                code="invalid_value",
            )
        if role == "tool" and not msg.get("tool_call_id"):
            raise Invalid(
                "Missing parameter 'tool_call_id': messages with role 'tool' must have a "
                "'tool_call_id'.",
                param=f"messages.[{i}].tool_call_id",
                code=None,
            )
        text = _text_of(msg.get("content"))
        conv.prompt_texts.append(text)
        for call in msg.get("tool_calls") or []:
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                conv.prompt_texts.append(str(call["function"].get("arguments", "")))
        if role == "user":
            conv.last_user_text = text
    last = messages[-1]
    conv.last_role = "system" if last["role"] == "developer" else last["role"]
    if conv.last_role in ("tool", "function"):
        conv.last_role, conv.tool_result = "tool", _text_of(last.get("content"))
    _parse_tools(body, conv)
    _parse_reasoning(body, conv)
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        conv.json_schema = spec.get("schema", {}) if isinstance(spec, dict) else {}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        conv.json_mode = True
    return model, conv


def _parse_reasoning(body: dict[str, Any], conv: Conversation) -> None:
    """reasoning_effort turns hidden reasoning on (its tokens are reported in usage, never
    shown); OpenRouter's own `reasoning` members are unknown arguments to OpenAI."""
    for name in ("reasoning", "include_reasoning"):
        if name in body:
            raise Invalid(f"Unrecognized request argument supplied: {name}", code=None)
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in EFFORTS:
            supported = ", ".join(f"'{e}'" for e in EFFORTS[:-1]) + f", and '{EFFORTS[-1]}'"
            raise Invalid(f"Invalid value: '{effort}'. Supported values are: {supported}.",
                          param="reasoning_effort", code="invalid_value")
        conv.reasoning = effort != "none"


def _parse_tools(body: dict[str, Any], conv: Conversation) -> None:
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise Invalid(
                f"Missing required parameter: 'tools[{i}].function.name'.",
                param=f"tools[{i}].function.name",
                code="missing_required_parameter",
            )
        conv.tools.append((fn["name"], fn.get("parameters") or {}))
    choice = body.get("tool_choice")
    if choice in ("none", "auto", "required"):
        conv.tool_choice = choice
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        conv.forced_tool = choice["function"].get("name")


def parse_completion(body: Any) -> tuple[str, Conversation]:
    """Validate a legacy completions request; its prompt is the one user turn."""
    model, conv = _common_params(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise Invalid(
            "Missing required parameter: 'prompt'.",
            param="prompt",
            code="missing_required_parameter",
        )
    if isinstance(prompt, list):
        prompt = " ".join(p for p in prompt if isinstance(p, str))
    conv.last_user_text = str(prompt)
    conv.prompt_texts.append(conv.last_user_text)
    return model, conv


def _is_tokens(value: Any) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value))


def _input_tokens(item: str | list[int]) -> int:
    return count_tokens(item) if isinstance(item, str) else len(item)


def parse_embeddings(body: Any) -> tuple[str, list[Any], int, str]:
    """Validate an embeddings request the way OpenAI does: (model, inputs, size, encoding)."""
    model = _model_of(body)
    inputs = body.get("input")
    if inputs is None:
        raise Invalid(
            "Missing required parameter: 'input'.", param="input",
            code="missing_required_parameter",
        )
    if isinstance(inputs, str) or _is_tokens(inputs):
        inputs = [inputs]
    if (
        not isinstance(inputs, list) or not inputs or len(inputs) > MAX_EMBEDDING_INPUTS
        or not all((isinstance(i, str) and i) or _is_tokens(i) for i in inputs)
    ):
        raise Invalid(_INVALID_INPUT)
    for item in inputs:
        n = _input_tokens(item)
        if n > MAX_EMBEDDING_TOKENS:
            raise Invalid(
                f"This model's maximum context length is {MAX_EMBEDDING_TOKENS} tokens, however "
                f"you requested {n} tokens ({n} in your prompt; 0 for the completion). Please "
                "reduce your prompt; or completion length."
            )
    size = EMBEDDING_SIZES.get(model, DEFAULT_EMBEDDING_SIZE)
    dimensions = _int_param(body, "dimensions")
    if dimensions is not None:
        if model in NO_DIMENSIONS:
            raise Invalid("This model does not support specifying dimensions.")
        if dimensions > size:
            raise Invalid(
                f"Invalid 'dimensions': integer above maximum value. Expected a value <= {size}, "
                f"but got {dimensions} instead.",
                param="dimensions",
                code="integer_above_max_value",
            )
        size = dimensions
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise Invalid(
            f"Invalid value: '{encoding}'. Supported values are: 'float' and 'base64'.",
            param="encoding_format",
            code="invalid_value",
        )
    return model, inputs, size, encoding


def embedding_vector(item: str | list[int], size: int) -> bytes:
    """A deterministic unit-length vector for one input, as little-endian float32 (the layout of
    OpenAI's base64 encoding). Its numbers come from SHAKE-256 of the input, so a shorter
    `dimensions` gives a prefix of the full vector, renormalised, as text-embedding-3 does."""
    seed = item.encode() if isinstance(item, str) else orjson.dumps(item)
    raw = struct.unpack(f"<{size}H", hashlib.shake_256(seed).digest(2 * size))
    values = [v - 32767.5 for v in raw]
    norm = math.sqrt(sum(v * v for v in values))
    return struct.pack(f"<{size}f", *(v / norm for v in values))


def _headers(sim: Sim) -> dict[str, str]:
    return {"x-request-id": sim.new_id("req_", 32), "openai-version": "2020-10-01"}


def _usage(plan: Plan, opts: SimOptions, n: int = 1) -> dict[str, Any]:
    # "Prompt caching": cached_tokens is the part of prompt_tokens read from the cache;
    # cache_write_tokens appears only where writes are billed (GPT-5.6 and later).
    read, written = opts.cache_split(plan.prompt_tokens)
    prompt_details = {"cached_tokens": read, "audio_tokens": 0}
    if written:
        prompt_details["cache_write_tokens"] = written
    # "Reasoning models": reasoning_tokens are the hidden part of completion_tokens.
    completion = (plan.completion_tokens + plan.thought_tokens) * n
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": plan.prompt_tokens + completion,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {
            "reasoning_tokens": plan.thought_tokens * n,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


class _Responder:
    """Renders one plan as a chat.completion, a text_completion, or their streams."""

    def __init__(self, sim: Sim, request: web.Request, model: str, plan: Plan, legacy: bool,
                 n: int = 1):
        self.sim, self.request, self.model = sim, request, model
        self.plan, self.legacy = plan, legacy
        self.n = n  # choices of a whole chat answer (each the same here), billed n times
        self.id = sim.new_id("cmpl-" if legacy else "chatcmpl-")
        self.created = now()
        self.headers = _headers(sim)

    def _envelope(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
        }

    async def whole(self) -> web.StreamResponse:
        plan = self.plan
        if self.sim.opts.tokens_per_s:
            await nap(self.request, plan.completion_tokens / self.sim.opts.tokens_per_s)
        finish = FINISH[plan.finish]
        if self.legacy:
            choice: dict[str, Any] = {"text": plan.text, "index": 0, "logprobs": None}
            body = {**self._envelope("text_completion"), "choices": [choice]}
        else:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": plan.text,
                "refusal": None,
                "annotations": [],
            }
            if plan.finish == "tool":
                message["content"] = None
                message["tool_calls"] = [self._call(plan.tool_json)]
            choice = {"index": 0, "message": message, "logprobs": None}
            body = {**self._envelope("chat.completion"), "choices": [choice]}
            body["service_tier"] = "default"
        choice["finish_reason"] = finish
        body["choices"] += [{**choice, "index": i} for i in range(1, self.n)]
        body["usage"] = _usage(plan, self.sim.opts, self.n)
        resp = json_response(body, headers=self.headers)
        if self.sim.cut() is not None:
            await send_truncated(self.request, resp)  # a drop: half the JSON, then EOF
        return resp

    def _call(self, arguments: str) -> dict[str, Any]:
        fn = {"name": self.plan.tool_name, "arguments": arguments}
        return {"id": self.sim.new_id("call_"), "type": "function", "function": fn}

    async def stream(self, include_usage: bool) -> web.StreamResponse:
        plan, request = self.plan, self.request
        obj = "text_completion" if self.legacy else "chat.completion.chunk"
        base = self._envelope(obj)
        if include_usage:
            base["usage"] = None  # "All other chunks will also include a usage field, null"

        def event(choice: dict[str, Any]) -> bytes:
            choice = {"logprobs": None, "finish_reason": None, **choice}
            return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

        resp = await open_sse(request, self.headers)
        cut = self.sim.cut()
        pacer = Pacer(request, self.sim.opts.tokens_per_s)
        if self.legacy:
            chunks = [event({"text": p, "index": 0}) for p in plan.pieces]
        elif plan.finish == "tool":
            # The first chunk names the call (id, type, function.name, empty arguments), the
            # following ones carry only arguments pieces — as in "Function calling › Streaming".
            call = {"index": 0, **self._call("")}
            first = {"role": "assistant", "content": None, "tool_calls": [call]}
            await resp.write(event({"index": 0, "delta": first}))
            chunks = [
                event({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": args}]}})
                for args in [{"arguments": p} for p in plan.tool_pieces]
            ]
        else:
            role = {"role": "assistant", "content": "", "refusal": None}
            await resp.write(event({"index": 0, "delta": role}))
            chunks = [event({"index": 0, "delta": {"content": p}}) for p in plan.pieces]
        for i, chunk in enumerate(chunks):
            if cut is not None and i >= cut:
                sever(request)
            await pacer.tick()
            await resp.write(chunk)
        if cut is not None:
            sever(request)  # the reply was shorter than drop_after: drop before the finish
        last = {"text": "", "index": 0} if self.legacy else {"index": 0, "delta": {}}
        last["finish_reason"] = FINISH[plan.finish]
        await resp.write(event(last))
        if include_usage:
            tail = {**base, "choices": [], "usage": _usage(plan, self.sim.opts)}
            await resp.write(b"data: " + orjson.dumps(tail) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp


def routes(sim: Sim) -> list[web.RouteDef]:
    """The OpenAI routes of a simulator."""
    dialect = Dialect(error=error, overloaded_status=500, wants_stream=_wants_stream)

    def generation(legacy: bool):
        parse = parse_completion if legacy else parse_chat

        async def handle(request: web.Request, body: Any) -> web.StreamResponse:
            try:
                _check_auth(request, sim)
                model, conv = parse(body)
            except Invalid as exc:
                return _invalid_response(exc)
            plan = make_plan(conv, sim.opts)
            n = body.get("n")
            n = n if type(n) is int and 1 <= n <= 128 and not legacy else 1
            responder = _Responder(sim, request, model, plan, legacy, n)
            if body.get("stream") is True:
                options = body.get("stream_options")
                include = isinstance(options, dict) and options.get("include_usage") is True
                return await responder.stream(include)
            return await responder.whole()

        return endpoint(sim, dialect, handle)

    async def embed(request: web.Request, body: Any) -> web.StreamResponse:
        try:
            _check_auth(request, sim)
            model, inputs, size, encoding = parse_embeddings(body)
        except Invalid as exc:
            return _invalid_response(exc)
        data = []
        for i, item in enumerate(inputs):
            packed = embedding_vector(item, size)
            vector: Any = (base64.b64encode(packed).decode() if encoding == "base64"
                           else list(struct.unpack(f"<{size}f", packed)))
            data.append({"object": "embedding", "index": i, "embedding": vector})
        tokens = sum(_input_tokens(item) for item in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        resp = json_response({"object": "list", "data": data, "model": model, "usage": usage},
                             headers=_headers(sim))
        if sim.cut() is not None:
            await send_truncated(request, resp)  # a drop: half the JSON, then EOF
        return resp

    async def models(_: web.Request) -> web.Response:
        data = [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "edgeproxy-sim"}
            for m in sim.opts.models or DEFAULT_MODELS
        ]
        return json_response({"object": "list", "data": data})

    chat = generation(legacy=False)
    embeddings = endpoint(sim, dialect, embed)
    return [
        web.post("/v1/chat/completions", chat),
        web.post("/chat/completions", chat),
        web.post("/v1/completions", generation(legacy=True)),
        web.post("/completions", generation(legacy=True)),
        web.post("/v1/embeddings", embeddings),
        web.post("/embeddings", embeddings),
        web.get("/v1/models", models),
        web.get("/models", models),
    ]
