"""The Google Gemini API (generativelanguage, v1beta) as the simulator speaks it.

Follows the Gemini API reference: "Generating content" (models.generateContent and
models.streamGenerateContent: contents/parts, systemInstruction, tools.functionDeclarations,
toolConfig.functionCallingConfig, inlineData, generationConfig with maxOutputTokens,
stopSequences, responseMimeType and responseSchema; the GenerateContentResponse with candidates,
finishReason and usageMetadata), "API keys" (x-goog-api-key header or ?key=), and "Troubleshooting
› Error codes" (the google.rpc body {"error": {"code", "message", "status"}}). streamGenerateContent
answers Server-Sent Events with CRLF line ends when called with ?alt=sse, and one JSON array
otherwise. Proto3 JSON: both camelCase and snake_case field names are accepted, zero counts are
left out. "Thinking" and "Thought signatures": generationConfig.thinkingConfig checked per model
family (thinkingBudget range, Gemini 3's thinkingLevel), thought parts with includeThoughts,
thoughtsTokenCount, signed answers, and signatures checked when they come back (Gemini 3 requires
them on the current turn's function calls). Routes: POST /v1beta/models/{model}:{method}, GET
/v1beta/models (v1 too).
"""

from __future__ import annotations

import base64
import hashlib
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
    endpoint,
    json_response,
    make_plan,
    nap,
    pieces,
    send_truncated,
    sever,
)

__all__ = ["routes"]

FINISH = {
    "stop": "STOP",
    "stop_sequence": "STOP",
    "length": "MAX_TOKENS",
    "tool": "STOP",
    "safety": "SAFETY",
}
DEFAULT_MODELS = ["gemini-2.5-flash", "gemini-2.5-pro"]
PART_FIELDS = (
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
)
# google.rpc.Code of each HTTP status, with the message Google sends for the common ones.
_STATUS: dict[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    402: ("FAILED_PRECONDITION", "Billing is not enabled for this project."),
    403: ("PERMISSION_DENIED", "The caller does not have permission."),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    500: ("INTERNAL", "An internal error has occurred. Please retry or report in the docs."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "The request timed out. Please try again."),
}
_SAFETY_RATINGS: list[dict[str, Any]] = [
    {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True},
]


def error(status: int, message: str | None = None, details: list[Any] | None = None):
    """The google.rpc error body for an HTTP status."""
    name, default = _STATUS.get(status, ("UNKNOWN", "Unknown error."))
    err: dict[str, Any] = {"code": status, "message": message or default, "status": name}
    if status == 429 and details is None:
        # Google tells when to come back in a RetryInfo detail (the Retry-After header, when
        # the fault sets one, says the same).
        details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]
    if details:
        err["details"] = details
    return json_response({"error": err}, status)


def _get(obj: dict[str, Any], camel: str, default: Any = None) -> Any:
    """A field by its camelCase or snake_case name, as proto3 JSON parsing accepts both."""
    if camel in obj:
        return obj[camel]
    snake = "".join("_" + c.lower() if c.isupper() else c for c in camel)
    return obj.get(snake, default)


def _wants_stream(request: web.Request, _: Any) -> bool:
    return request.match_info.get("target", "").endswith(":streamGenerateContent")


def _check_key(request: web.Request, sim: Sim) -> None:
    expected = sim.opts.api_key
    if expected is None:
        return
    key = request.headers.get("x-goog-api-key") or request.query.get("key")
    if not key:
        raise Invalid(
            "Method doesn't allow unregistered callers (callers without established identity). "
            "Please use API Key or other form of API consumer identity to call this API.",
            403,
        )
    if key != expected:
        # Google answers a wrong key with 400 INVALID_ARGUMENT and reason API_KEY_INVALID.
        raise Invalid(
            "API key not valid. Please pass a valid API key.",
            400,
            details=[
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ],
        )


# "Thinking": thinkingBudget per model family (lowest, highest, whether 0 turns thinking off);
# Gemini 3 takes thinkingLevel (Pro: low and high only).
_BUDGETS = (("2.5-flash-lite", (512, 24576, True)), ("2.5-pro", (128, 32768, False)),
            ("flash", (1, 24576, True)))
_LEVELS = ("minimal", "low", "medium", "high")
_PRO_LEVELS = ("low", "high")
# "Thought signatures": the documented value that skips the check.
SKIP_SIGNATURE = "skip_thought_signature_validator"


def signature(part: dict[str, Any]) -> str:
    """The thoughtSignature the simulator gives a part (a functionCall, or an answer's text):
    opaque and checked when it comes back, like Google's."""
    call = _get(part, "functionCall")
    what = orjson.dumps(call if call is not None else part.get("text", ""),
                        option=orjson.OPT_SORT_KEYS)
    return base64.b64encode(b"sim-thought:" + hashlib.sha256(what).digest()[:16]).decode()


def _part_text(part: Any, where: str) -> tuple[str, str | None]:
    """Validate a part; returns (prompt text, tool result text or None)."""
    if not isinstance(part, dict):
        raise Invalid(f"Invalid JSON payload received. Expected an object at '{where}'.")
    present = [f for f in PART_FIELDS if _get(part, f) is not None]
    if not present:
        raise Invalid(
            f"* GenerateContentRequest.{where}.data: required oneof field 'data' must have one "
            "initialized field\n"
        )
    sig = _get(part, "thoughtSignature")
    if sig is not None and sig != SKIP_SIGNATURE and sig != signature(part):
        raise Invalid(f"Thought signature is not valid ({where}).")
    if isinstance(part.get("text"), str):
        return part["text"], None
    inline = _get(part, "inlineData")
    if inline is not None:
        if not isinstance(inline, dict) or not _get(inline, "mimeType") or "data" not in inline:
            raise Invalid(f"* GenerateContentRequest.{where}.inline_data: mime_type is required\n")
        return "", None
    response = _get(part, "functionResponse")
    if isinstance(response, dict):
        text = orjson.dumps(response.get("response", {})).decode()
        return text, text
    call = _get(part, "functionCall")
    if isinstance(call, dict):
        return orjson.dumps(call.get("args", {})).decode(), None
    return "", None


def parse_thinking(body: dict[str, Any], model: str, conv: Conversation) -> bool:
    """"Thinking": validate generationConfig.thinkingConfig for `model`; sets conv.reasoning
    when the model thinks, and returns whether its thoughts are included in the answer. Gemini 3
    also requires each model step of the current turn that calls functions to carry its
    thought signature ("Thought signatures")."""
    if "gemini-3" in model:
        _check_signatures(body["contents"])
    config = _get(_get(body, "generationConfig") or {}, "thinkingConfig")
    if config is None:
        return False
    if not isinstance(config, dict):
        raise Invalid('Invalid JSON payload received. Unknown name "thinkingConfig".')
    budget, level = _get(config, "thinkingBudget"), _get(config, "thinkingLevel")
    if budget is not None and level is not None:
        raise Invalid("You can only set only one of thinking budget and thinking level.")
    if level is not None:
        levels = _PRO_LEVELS if "pro" in model else _LEVELS
        if "gemini-3" not in model:
            raise Invalid("Thinking level is not supported for this model.")
        if level not in levels:
            raise Invalid(f"Thinking level {level} is not supported for this model. Supported "
                          f"levels: {', '.join(levels)}.")
    elif budget is not None:
        lowest, highest, can_stop = next((r for name, r in _BUDGETS if name in model),
                                         _BUDGETS[-1][1])
        if not isinstance(budget, int) or isinstance(budget, bool):
            raise Invalid(f"Invalid value at 'generation_config.thinking_config.thinking_budget'"
                          f" (TYPE_INT32), {budget!r}")
        if budget == 0 and not can_stop:
            raise Invalid("Budget 0 is invalid. This model only works in thinking mode.")
        if budget not in (0, -1) and not lowest <= budget <= highest:
            raise Invalid(f"The thinking budget {budget} is invalid. Please choose a value "
                          f"between {lowest} and {highest}.")
        if budget == 0:
            return False
    conv.reasoning = True
    return _get(config, "includeThoughts") is True


def _check_signatures(contents: list[dict[str, Any]]) -> None:
    """The current turn (after the last user text) must send back the signature of the first
    functionCall part of each model step."""
    start = 0
    for i, content in enumerate(contents):
        if content.get("role", "user") == "user" and any(
                isinstance(p, dict) and "text" in p for p in content["parts"]):
            start = i + 1
    for content in contents[start:]:
        calls = [(j, p) for j, p in enumerate(content["parts"])
                 if content.get("role") == "model" and _get(p, "functionCall") is not None]
        if calls and _get(calls[0][1], "thoughtSignature") is None:
            j, part = calls[0]
            name = _get(part, "functionCall").get("name")
            raise Invalid(
                "Function call is missing a thought_signature in functionCall parts. This is "
                "required for tools to work correctly, and missing thought_signature may lead to "
                f"degraded model performance. Additional data, function call `default_api:{name}`"
                f" , position {j + 1}. Please refer to "
                "https://ai.google.dev/gemini-api/docs/thought-signatures for more details.")


def parse(body: Any) -> Conversation:
    """Validate a GenerateContentRequest as Google does and reduce it to a Conversation."""
    if body is BAD_JSON or not isinstance(body, dict):
        raise Invalid("Invalid JSON payload received. Unexpected token.")
    conv = Conversation()
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise Invalid("* GenerateContentRequest.contents: contents is not specified\n")
    system = _get(body, "systemInstruction")
    if isinstance(system, dict):
        conv.prompt_texts += [p.get("text", "") for p in system.get("parts") or [] if p]
    for i, content in enumerate(contents):
        if not isinstance(content, dict):
            raise Invalid(f"Invalid JSON payload received. Expected an object at 'contents[{i}]'.")
        role = content.get("role") or "user"
        if role not in ("user", "model"):
            raise Invalid("Please use a valid role: user, model.")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise Invalid(
                f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n"
            )
        texts, results = [], []
        for j, part in enumerate(parts):
            text, result = _part_text(part, f"contents[{i}].parts[{j}]")
            texts.append(text)
            if result is not None:
                results.append(result)
        conv.prompt_texts += texts
        if role == "user":
            conv.last_user_text = " ".join(texts)
            conv.last_role = "tool" if results else "user"
            conv.tool_result = " ".join(results)
        else:
            conv.last_role = "assistant"
    _parse_generation_config(body, conv)
    _parse_tools(body, conv)
    return conv


def _parse_generation_config(body: dict[str, Any], conv: Conversation) -> None:
    config = _get(body, "generationConfig") or {}
    if not isinstance(config, dict):
        raise Invalid('Invalid JSON payload received. Unknown name "generationConfig".')
    limit = _get(config, "maxOutputTokens")
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise Invalid(
                f"Invalid value at 'generation_config.max_output_tokens' (TYPE_INT32), {limit!r}"
            )
        conv.max_tokens = max(limit, 1)  # Google treats 0 as "unset" for most models
    stops = _get(config, "stopSequences") or []
    conv.stop = [s for s in stops if isinstance(s, str)]
    if _get(config, "responseMimeType") == "application/json":
        schema = _get(config, "responseSchema") or _get(config, "responseJsonSchema")
        if isinstance(schema, dict):
            conv.json_schema = schema
        else:
            conv.json_mode = True


def _parse_tools(body: dict[str, Any], conv: Conversation) -> None:
    for tool in body.get("tools") or []:
        decls = _get(tool, "functionDeclarations") if isinstance(tool, dict) else None
        for decl in decls or []:
            if not isinstance(decl, dict) or not isinstance(decl.get("name"), str):
                raise Invalid(
                    "* GenerateContentRequest.tools[0].function_declarations[0].name: Function "
                    "name cannot be empty.\n"
                )
            schema = decl.get("parameters") or _get(decl, "parametersJsonSchema") or {}
            conv.tools.append((decl["name"], schema))
    config = _get(_get(body, "toolConfig") or {}, "functionCallingConfig") or {}
    mode = str(config.get("mode", "AUTO")).upper()
    conv.tool_choice = {"ANY": "required", "NONE": "none"}.get(mode, "auto")
    allowed = _get(config, "allowedFunctionNames")
    if mode == "ANY" and isinstance(allowed, list) and allowed:
        conv.forced_tool = allowed[0]


class _Responder:
    """Renders a plan as one GenerateContentResponse or a stream of them. A thinking model
    ("Thinking") reports thoughtsTokenCount, answers with its thought summary first when asked
    (includeThoughts), and signs its answer ("Thought signatures": the first functionCall part
    of a step; on Gemini 3 also the last part of a text answer)."""

    def __init__(self, sim: Sim, request: web.Request, model: str, plan: Plan,
                 thoughts: bool = False) -> None:
        self.sim, self.request, self.model, self.plan = sim, request, model, plan
        self.response_id = sim.new_id("", 22)
        self.thoughts = thoughts and bool(plan.thought)

    def chunk(self, parts: list[dict[str, Any]] | None, finish: bool, emitted: int):
        plan = self.plan
        candidate: dict[str, Any] = {}
        if parts is not None:
            candidate["content"] = {"parts": parts, "role": "model"}
        if finish:
            candidate["finishReason"] = FINISH[plan.finish]
            if plan.finish == "safety":
                candidate["safetyRatings"] = _SAFETY_RATINGS
        candidate["index"] = 0
        usage = {"promptTokenCount": plan.prompt_tokens}
        # `UsageMetadata`: cachedContentTokenCount is the cached part of promptTokenCount;
        # there is no write count (a cache is billed as storage).
        cached = self.sim.opts.cache_split(plan.prompt_tokens)[0]
        if cached:  # proto3 JSON leaves zero counts out
            usage["cachedContentTokenCount"] = cached
        if emitted:
            usage["candidatesTokenCount"] = emitted
        thoughts = plan.thought_tokens if plan.finish != "safety" else 0
        if thoughts:  # billed as output, beside candidatesTokenCount
            usage["thoughtsTokenCount"] = thoughts
        usage["totalTokenCount"] = plan.prompt_tokens + emitted + thoughts
        return {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": self.model,
            "responseId": self.response_id,
        }

    def signed(self, part: dict[str, Any], text: bool = False) -> dict[str, Any]:
        if self.plan.thought and (not text or "gemini-3" in self.model):
            part["thoughtSignature"] = signature(part if not text else {"text": self.plan.text})
        return part

    def call_part(self) -> dict[str, Any]:
        plan = self.plan
        return self.signed({"functionCall": {"name": plan.tool_name, "args": plan.tool_args}})

    def chunks(self) -> list[dict[str, Any]]:
        """The stream: the thought summary's pieces, then one chunk per token, finishReason on
        the last; a function call comes whole in one chunk (Gemini does not stream partial
        arguments)."""
        plan = self.plan
        if plan.finish == "safety":
            return [self.chunk(None, True, 0)]
        thought = [self.chunk([{"text": p, "thought": True}], False, 0)
                   for p in (pieces(plan.thought) if self.thoughts else [])]
        if plan.finish == "tool":
            return [*thought, self.chunk([self.call_part()], True, plan.completion_tokens)]
        tokens = plan.pieces or [""]
        last = len(tokens) - 1
        return thought + [
            self.chunk([self.signed({"text": p}, True) if i == last else {"text": p}],
                       i == last, min(i + 1, len(plan.pieces)))
            for i, p in enumerate(tokens)
        ]

    async def whole(self) -> web.StreamResponse:
        plan = self.plan
        if self.sim.opts.tokens_per_s:
            tokens = plan.completion_tokens + plan.thought_tokens
            await nap(self.request, tokens / self.sim.opts.tokens_per_s)
        thought = [{"text": plan.thought, "thought": True}] if self.thoughts else []
        if plan.finish == "safety":
            body = self.chunk(None, True, 0)
        elif plan.finish == "tool":
            body = self.chunk([*thought, self.call_part()], True, plan.completion_tokens)
        else:
            body = self.chunk([*thought, self.signed({"text": plan.text}, True)], True,
                              plan.completion_tokens)
        resp = json_response(body)
        if self.sim.cut() is not None:
            await send_truncated(self.request, resp)
        return resp

    async def stream(self, sse: bool) -> web.StreamResponse:
        request = self.request
        content_type = "text/event-stream" if sse else "application/json; charset=UTF-8"
        resp = web.StreamResponse(
            headers={"Content-Type": content_type, "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        chunks = self.chunks()
        cut = self.sim.cut()
        if cut is not None:
            cut = min(cut, len(chunks) - 1)  # always drop before the finishReason chunk
        pacer = Pacer(request, self.sim.opts.tokens_per_s)
        for i, chunk in enumerate(chunks):
            if cut is not None and i >= cut:
                sever(request)
            await pacer.tick()
            data = orjson.dumps(chunk)
            if sse:
                await resp.write(b"data: " + data + b"\r\n\r\n")
            else:
                await resp.write((b"[" if i == 0 else b",\r\n") + data)
        if not sse:
            await resp.write(b"]")
        return resp


def routes(sim: Sim) -> list[web.RouteDef]:
    """The Gemini routes of a simulator."""
    dialect = Dialect(error=error, overloaded_status=503, wants_stream=_wants_stream)

    async def generate(request: web.Request, body: Any) -> web.StreamResponse:
        model, _, method = request.match_info["target"].partition(":")
        if method not in ("generateContent", "streamGenerateContent"):
            return error(404, f"Method {method!r} is not found for models/{model}.")
        try:
            _check_key(request, sim)
            conv = parse(body)
            thoughts = parse_thinking(body, model, conv)
        except Invalid as exc:
            return error(exc.status, exc.message, exc.extra.get("details"))
        responder = _Responder(sim, request, model, make_plan(conv, sim.opts, safety_word="unsafe"),
                               thoughts)
        if method == "streamGenerateContent":
            return await responder.stream(sse=request.query.get("alt") == "sse")
        return await responder.whole()

    async def models(request: web.Request) -> web.Response:
        data = [
            {
                "name": f"models/{m}",
                "version": "001",
                "displayName": m,
                "inputTokenLimit": 1048576,
                "outputTokenLimit": 65536,
                "supportedGenerationMethods": ["generateContent", "countTokens"],
            }
            for m in sim.opts.models or DEFAULT_MODELS
        ]
        return json_response({"models": data})

    handler = endpoint(sim, dialect, generate)
    out: list[web.RouteDef] = []
    for version in ("v1beta", "v1"):
        out += [
            web.post(f"/{version}/models/{{target}}", handler),
            web.get(f"/{version}/models", models),
        ]
    return out
