"""OpenAI chat completions <-> Google Gemini generateContent (SPEC §3, §4), sans-IO.

Sources, cited below by section name (ai.google.dev/api and ai.google.dev/gemini-api/docs):
  [generate]   models.generateContent / models.streamGenerateContent: GenerateContentRequest,
               GenerateContentResponse, Candidate.FinishReason, PromptFeedback, UsageMetadata
  [content]    Content / Part: text, inline_data, file_data, functionCall, functionResponse, thought
  [config]     GenerationConfig: maxOutputTokens, temperature, topP, topK, stopSequences,
               candidateCount, seed, presencePenalty, frequencyPenalty, responseMimeType,
               responseSchema
  [functions]  Function calling guide; Tool.functionDeclarations; ToolConfig.functionCallingConfig
  [schema]     Schema: "a select subset of an OpenAPI 3.0 schema object"
  [signatures] "Thought signatures" guide (Gemini 3 function-calling replay rule)
  [thinking]   "Gemini thinking" guide (ai.google.dev/gemini-api/docs/thinking): thinkingConfig,
               thinkingBudget ranges per model, Gemini 3's thinkingLevel, includeThoughts
  [errors]     Google API errors: {"error": {"code", "message", "status"}}

The request side is plain functions over dicts; the response side is `parse_response` and one small
state machine, `GeminiStreamDecoder`, fed raw bytes through the shared `SSEParser`.
"""

from __future__ import annotations

import mimetypes
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from .. import reasoning
from ..errors import (
    BadRequest,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from ._openai_request import data_url, tool_arguments
from .base import SSEParser, Target, UpstreamCall, count_at, json_object, translated

__all__ = ["GeminiAdapter", "GeminiStreamDecoder", "clean_schema"]

# [generate] Candidate.FinishReason -> OpenAI. Every safety-style stop is a content filter; the rest
# (OTHER, LANGUAGE, MALFORMED_FUNCTION_CALL, later additions) end as "stop" with the native kept.
# STOP becomes "tool_calls" when the candidate called a function (Gemini has no separate reason).
_FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    **dict.fromkeys(
        (
            "SAFETY",
            "RECITATION",
            "BLOCKLIST",
            "PROHIBITED_CONTENT",
            "SPII",
            "IMAGE_SAFETY",
            "IMAGE_PROHIBITED_CONTENT",
            "IMAGE_RECITATION",
        ),
        "content_filter",
    ),
}

# [content] Content.role is "user" or "model"; tool results travel as functionResponse parts of a
# user turn ([functions]). System text goes to systemInstruction instead.
_ROLES = {"user": "user", "assistant": "model", "tool": "user"}

# [functions] FunctionCallingConfig.mode for OpenAI's string tool_choice.
_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}

# [schema] the keywords Gemini accepts; everything else (additionalProperties, $schema, $id,
# exclusiveMinimum, const, oneOf, allOf, examples, ...) is rewritten below or dropped.
_SCHEMA_TYPES = frozenset({"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"})
_SCHEMA_STRINGS = ("title", "description", "pattern")
_SCHEMA_NUMBERS = (
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
)
# [schema] format: "for NUMBER type: float, double; for INTEGER type: int32, int64"; STRING takes
# "enum" and "date-time". Other formats (uri, email, uuid) have been answered with a 400: dropped.
_FORMATS = {
    "STRING": frozenset({"enum", "date-time"}),
    "NUMBER": frozenset({"float", "double"}),
    "INTEGER": frozenset({"int32", "int64"}),
}
_SCHEMA_DEPTH = 64  # nesting bound, so a hostile schema cannot exhaust the Python stack
_SCHEMA_NODES = 10_000  # size bound on the cleaned schema, $refs inlined

# [signatures] Gemini 3 rejects a replayed functionCall without its thoughtSignature. The real one is
# returned to the client on the tool call (extra_content.google.thought_signature, the field Google's
# own OpenAI-compatible endpoint uses) and taken back from there; for calls that never had one (an
# earlier turn served by another model, or a client that drops unknown fields) the guide documents
# this placeholder that skips the check.
SKIP_SIGNATURE = "skip_thought_signature_validator"

# [config] OpenAI sampling parameter -> GenerationConfig field (same meaning and range; Gemini's
# temperature also spans 0..2), with the JSON type each must have.
_GENERATION_NUMBERS: tuple[tuple[str, str, type | tuple[type, ...]], ...] = (
    ("temperature", "temperature", (int, float)),
    ("top_p", "topP", (int, float)),
    ("top_k", "topK", int),
    ("presence_penalty", "presencePenalty", (int, float)),
    ("frequency_penalty", "frequencyPenalty", (int, float)),
    ("seed", "seed", int),
    ("n", "candidateCount", int),
)

# OpenAI input_audio.format -> MIME type for inline_data.
_AUDIO_MIME = {"wav": "audio/wav", "mp3": "audio/mp3", "flac": "audio/flac", "ogg": "audio/ogg"}


class GeminiAdapter:
    """Translate OpenAI chat completions to Gemini generateContent and back."""

    name = "gemini"
    needs_dict = True

    def build_request(
        self, req: dict[str, Any] | None, body: bytes, target: Target, stream: bool
    ) -> UpstreamCall:
        """POST {base_url}/models/{model}:generateContent (or :streamGenerateContent?alt=sse).
        Raises BadRequest (400) for what Gemini cannot express."""
        payload = translated(req, lambda r: build_generate_body(r, target))
        model = target.model.removeprefix("models/")
        method = ":streamGenerateContent?alt=sse" if stream else ":generateContent"
        url = f"{target.base_url.rstrip('/')}/models/{quote(model, safe='-._~')}{method}"
        headers = {"x-goog-api-key": target.api_key, "content-type": "application/json"}
        return UpstreamCall(url, headers, payload)

    def parse_response(self, status: int, data: bytes) -> dict[str, Any]:
        """A GenerateContentResponse -> {"choices": [...], "usage": {...}}."""
        return parse_generate_response(json_object(data, "gemini: response body"))

    def parse_error(self, status: int, data: bytes) -> tuple[str, Any]:
        """[errors] {"error": {"code", "message", "status"}} -> ("gemini: STATUS: message", the
        error object); any other body -> its first 500 characters."""
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, list) and obj:
            obj = obj[0]  # the non-SSE stream method wraps its error in an array
        if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
            err = obj["error"]
            return f"gemini: {err.get('status', status)}: {err.get('message', '')}", err
        text = data[:500].decode("utf-8", "replace").strip()
        return f"gemini: HTTP {status}: {text or 'empty body'}", text or None

    def effective_status(self, status: int, raw: Any) -> int:
        """Google answers a bad API key with 400 INVALID_ARGUMENT (reason API_KEY_INVALID): that is
        an authentication failure of the provider's key, not the client's request."""
        if status == 400 and isinstance(raw, dict):
            for d in raw.get("details") or ():
                if isinstance(d, dict) and d.get("reason") == "API_KEY_INVALID":
                    return 401
        return status

    def stream_decoder(self) -> GeminiStreamDecoder:
        return GeminiStreamDecoder()


# --------------------------------------------------------------------------- request: OpenAI -> Gemini


def build_generate_body(req: dict[str, Any], target: Target) -> dict[str, Any]:
    """The GenerateContentRequest body for one OpenAI chat request (a pure function)."""
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty array")
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool_call id -> function name, for functionResponse.name
    for msg in messages:
        if not isinstance(msg, dict):
            raise BadRequest("each message must be an object")
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(p["text"] for p in _parts(msg.get("content"), text_only=True))
            continue
        if role == "user":
            parts = _parts(msg.get("content"))
        elif role == "assistant":
            parts = _model_parts(msg, call_names)
        elif role == "tool":
            parts = [_function_response(msg, call_names)]
        else:
            raise BadRequest(f"unsupported message role: {role!r}")
        if not parts:
            continue
        native = _ROLES[role]
        # Turns alternate user/model: consecutive same-role messages merge into one Content, which
        # also gathers parallel function responses into one user turn as [functions] shows.
        if contents and contents[-1]["role"] == native:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": native, "parts": parts})

    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    declarations = _declarations(req.get("tools"))
    if declarations:
        out["tools"] = [{"functionDeclarations": declarations}]
        tool_config = _tool_config(req.get("tool_choice"))
        if tool_config:
            out["toolConfig"] = tool_config
    config = _generation_config(req)
    thinking = _thinking_config(req, target, config.get("maxOutputTokens"))
    if thinking is not None:
        config["thinkingConfig"] = thinking
    if config:
        out["generationConfig"] = config
    return out



def _media_part(url: Any, default_mime: str) -> dict[str, Any]:
    if not isinstance(url, str):
        raise BadRequest("image_url.url must be a string")
    if url.startswith("data:"):
        mime, data = data_url(url)
        return {"inline_data": {"mime_type": mime, "data": data}}  # [content] Blob
    if url.startswith(("https://", "http://")):
        # [content] FileData {file_uri, mime_type}. Gemini fetches the URI itself; public http(s)
        # URLs are accepted by current models (Files API and YouTube URIs everywhere). The MIME type
        # is guessed from the path, without I/O.
        mime = mimetypes.guess_type(urlsplit(url).path)[0] or default_mime
        return {"file_data": {"file_uri": url, "mime_type": mime}}
    raise BadRequest("media URLs must be http(s) URLs or base64 data URLs")


def _parts(content: Any, text_only: bool = False) -> list[dict[str, Any]]:
    """OpenAI message content (a string or content parts) -> Gemini parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
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
            if text:
                out.append({"text": text})
        elif kind == "refusal":
            continue
        elif text_only:
            raise BadRequest(f"{kind!r} parts are not supported in system or assistant messages")
        elif kind == "image_url":
            image = part.get("image_url")
            out.append(
                _media_part(image.get("url") if isinstance(image, dict) else image, "image/jpeg")
            )
        elif kind == "input_audio":
            audio = part.get("input_audio")
            if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
                raise BadRequest("input_audio needs base64 `data` and a `format`")
            fmt = audio.get("format")
            mime = _AUDIO_MIME.get(fmt) if isinstance(fmt, str) else None
            if mime is None:
                raise BadRequest(f"unsupported input_audio format: {fmt!r}")
            out.append({"inline_data": {"mime_type": mime, "data": audio["data"]}})
        elif kind == "file":
            file = part.get("file")
            data_url = file.get("file_data") if isinstance(file, dict) else None
            if not isinstance(data_url, str) or not data_url.startswith("data:"):
                raise BadRequest("file parts need file_data as a base64 data URL")
            out.append(_media_part(data_url, "application/octet-stream"))
        else:
            raise BadRequest(f"content parts of type {kind!r} are not supported by gemini")
    return out



def _model_parts(msg: dict[str, Any], call_names: dict[str, str]) -> list[dict[str, Any]]:
    parts = _parts(msg.get("content"), text_only=True)
    # [signatures] the thought signatures the gateway returned with this turn (reasoning_details
    # of Gemini's format): by tool call id for a functionCall part, else the turn's last part's.
    signed = {item.get("id"): item["data"] for item in reasoning.details_of(msg)
              if item.get("format") == reasoning.GEMINI and item.get("type") == "reasoning.encrypted"
              and isinstance(item.get("data"), str)}
    calls = msg.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise BadRequest("tool_calls must be an array")
    for n, call in enumerate(calls or ()):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequest("each tool call needs function.name")
        if isinstance(call.get("id"), str):
            call_names[call["id"]] = fn["name"]
        part: dict[str, Any] = {
            "functionCall": {"name": fn["name"], "args": tool_arguments(fn.get("arguments"))}
        }
        # [signatures] the signature sits on the first functionCall part of each model step (the
        # later calls of a parallel batch carry none); a real one is always passed back.
        signature = signed.pop(call.get("id"), None) or _signature(call)
        if signature is None and n == 0:
            signature = SKIP_SIGNATURE
        if signature is not None:
            part["thoughtSignature"] = signature
        parts.append(part)
    if None in signed and parts and "thoughtSignature" not in parts[-1]:
        parts[-1]["thoughtSignature"] = signed[None]
    return parts


def _signature(call: dict[str, Any]) -> str | None:
    extra = call.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    sig = google.get("thought_signature") if isinstance(google, dict) else None
    return sig if isinstance(sig, str) and sig else None


def _function_response(msg: dict[str, Any], call_names: dict[str, str]) -> dict[str, Any]:
    # [functions] functionResponse names the function, not the call: look it up by tool_call_id.
    call_id = msg.get("tool_call_id")
    name = call_names.get(call_id) if isinstance(call_id, str) else None
    if name is None:
        name = msg.get("name")
        if not isinstance(name, str):
            raise BadRequest("tool message refers to no earlier tool call (tool_call_id)")
    content = msg.get("content")
    if isinstance(content, list):
        # Only the text of the parts: a functionResponse carries JSON, not media.
        content = "".join(p["text"] for p in _parts(content, text_only=True))
    elif content is None:
        content = ""
    elif not isinstance(content, str):
        raise BadRequest("tool message content must be a string or text parts")
    try:
        value: Any = orjson.loads(content)
    except orjson.JSONDecodeError:
        value = content
    # [functions] response is a JSON object whose keys the caller chooses: the result goes under
    # "content", parsed when it is JSON, the plain text otherwise.
    return {"functionResponse": {"name": name, "response": {"content": value}}}


def _declarations(tools: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise BadRequest("tools must be an array")
    out: list[dict[str, Any]] = []
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type", "function") != "function":
            raise BadRequest("only tools of type 'function' are supported")
        if not isinstance(fn.get("name"), str):
            raise BadRequest("each tool needs function.name")
        decl: dict[str, Any] = {"name": fn["name"]}
        if isinstance(fn.get("description"), str):
            decl["description"] = fn["description"]
        params = fn.get("parameters")
        if isinstance(params, dict):
            schema = clean_schema(params)
            # An OBJECT with no properties is rejected as parameters: a function without arguments
            # simply has no parameters field ([functions] FunctionDeclaration.parameters optional).
            if schema.get("properties") or schema.get("type") not in (None, "OBJECT"):
                decl["parameters"] = schema
        out.append(decl)
    return out


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in _MODES:
        return {"functionCallingConfig": {"mode": _MODES[choice]}}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if isinstance(name, str):
            # [functions] mode ANY restricted to one allowed function forces that function.
            return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    raise BadRequest("tool_choice must be auto, none, required or a function")


def _generation_config(req: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for key in ("max_completion_tokens", "max_tokens"):
        value = req.get(key)
        if value is not None:
            if type(value) is not int or value < 1:
                raise BadRequest(f"{key} must be a positive integer")
            config["maxOutputTokens"] = value
            break
    for src, dst, kind in _GENERATION_NUMBERS:
        value = req.get(src)
        if value is not None:
            if not isinstance(value, kind) or isinstance(value, bool):
                raise BadRequest(f"{src} must be {'an integer' if kind is int else 'a number'}")
            config[dst] = value
    stop = req.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        if not all(isinstance(s, str) for s in stop):
            raise BadRequest("stop must be a string or an array of strings")
        config["stopSequences"] = stop
    fmt = req.get("response_format")
    if fmt is not None:
        fmt_type = fmt.get("type") if isinstance(fmt, dict) else None
        if fmt_type == "json_schema" and isinstance(fmt.get("json_schema"), dict):
            # [config] JSON mode with a schema: responseMimeType + responseSchema (OpenAPI subset).
            config["responseMimeType"] = "application/json"
            schema = fmt["json_schema"].get("schema")
            if isinstance(schema, dict):
                config["responseSchema"] = clean_schema(schema)
        elif fmt_type == "json_object":
            config["responseMimeType"] = "application/json"
        elif fmt_type != "text":
            raise BadRequest("response_format must be text, json_object or json_schema")
    return config


# [thinking] thinkingBudget by model family: (lowest budget, highest, whether 0 turns thinking off).
# Families are told apart by the upstream model id; an unknown one is taken for a Flash.
_BUDGETS = (
    ("2.5-flash-lite", (512, 24576, True)),
    ("2.5-pro", (128, 32768, False)),
    ("flash", (1, 24576, True)),
)
_FLASH = (1, 24576, True)
# [thinking] Gemini 3 takes thinkingLevel: Flash has all four, Pro only low and high ("Gemini 3
# Pro Preview ... low and high"); OpenRouter maps effort to the nearest level the model has.
_LEVELS = ("minimal", "low", "medium", "high")
_PRO_LEVELS = ("low", "high")
_EFFORT_LEVEL = {"max": "high", "xhigh": "high", "high": "high", "medium": "medium",
                 "low": "low", "minimal": "minimal", "none": "minimal"}


def _thinking_config(req: dict[str, Any], target: Target, max_output: Any) -> dict[str, Any] | None:
    """[thinking] ThinkingConfig for the request's reasoning (reasoning.Ask), or None to leave the
    model's default (2.5 models think dynamically, and show no thoughts). includeThoughts returns
    thought summaries, which become `reasoning`; `exclude` leaves them out (still billed)."""
    if not target.reasoning:
        return None
    asked = reasoning.ask(req, target.thinking)
    if asked.on is None:
        return None
    model = target.model.lower()
    config: dict[str, Any] = {}
    if "gemini-3" in model and asked.budget is None:
        levels = _PRO_LEVELS if "pro" in model else _LEVELS
        want = _LEVELS.index(_EFFORT_LEVEL[(asked.effort or "medium") if asked.on else "none"])
        # The nearest level the model has; a tie goes up (the higher one is the default).
        config["thinkingLevel"] = min(
            levels, key=lambda lv: (abs(_LEVELS.index(lv) - want), -_LEVELS.index(lv)))
    else:
        lowest, highest, can_stop = next(
            (r for name, r in _BUDGETS if name in model), _FLASH)
        if not asked.on:
            config["thinkingBudget"] = 0 if can_stop else lowest
        else:
            limit = max_output if isinstance(max_output, int) else target.default_max_tokens
            config["thinkingBudget"] = min(
                reasoning.thinking_budget(asked, limit, lowest, highest), highest)
    if asked.on and not asked.exclude:
        config["includeThoughts"] = True
    return config


def clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema (as OpenAI tools and response_format carry it) -> the [schema] subset Gemini
    accepts: local $refs inlined, type lists and null variants folded into `nullable`, oneOf read
    as anyOf, allOf merged, const as a one-value enum, unknown keywords dropped. Raises BadRequest
    for a recursive or unresolvable $ref and for schemas that would expand past a size bound."""
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            defs.update(schema[key])
    return _SchemaCleaner(defs).clean(schema, 0)


class _SchemaCleaner:
    __slots__ = ("budget", "defs", "refs")

    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs
        self.refs: list[str] = []  # the $refs being expanded on the current path
        # Inlining $refs can grow a schema exponentially (A uses B twice, B uses C twice, ...).
        self.budget = _SCHEMA_NODES

    def clean(self, node: Any, depth: int) -> dict[str, Any]:
        self.budget -= 1
        if depth > _SCHEMA_DEPTH or self.budget < 0:
            raise BadRequest("JSON schema too deep or too large to translate for gemini")
        if not isinstance(node, dict):
            return {}  # boolean schemas: no constraint
        ref = node.get("$ref")
        if isinstance(ref, str):
            name = ref.rpartition("/")[2]
            if not ref.startswith(("#/$defs/", "#/definitions/")) or name not in self.defs:
                raise BadRequest(f"unsupported $ref in JSON schema: {ref}")
            if ref in self.refs:
                raise BadRequest(f"recursive JSON schemas cannot be expressed for gemini: {ref}")
            self.refs.append(ref)
            merged = {**self.defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
            try:
                return self.clean(merged, depth + 1)
            finally:
                self.refs.pop()
        all_of = node.get("allOf")
        if isinstance(all_of, list):
            merged = {k: v for k, v in node.items() if k != "allOf"}
            for sub in all_of:
                if isinstance(sub, dict):
                    merged = {**sub, **merged}
            return self.clean(merged, depth + 1)

        out: dict[str, Any] = {}
        nullable = node.get("nullable") is True
        kind = node.get("type")
        if isinstance(kind, list):
            kinds = [str(k).upper() for k in kind if k != "null"]
            nullable = nullable or len(kinds) < len(kind)
            kind = kinds[0] if len(kinds) == 1 else None
            if len(kinds) > 1:
                out["anyOf"] = [{"type": k} for k in kinds if k in _SCHEMA_TYPES]
        if isinstance(kind, str) and kind.upper() in _SCHEMA_TYPES:
            out["type"] = kind.upper()

        variants = node.get("anyOf", node.get("oneOf"))
        if isinstance(variants, list):
            real = [v for v in variants if not (isinstance(v, dict) and v.get("type") == "null")]
            nullable = nullable or len(real) < len(variants)
            if len(real) == 1:
                # Optional[X] as pydantic writes it: X itself, nullable; the outer keywords win.
                out = {**self.clean(real[0], depth + 1), **out}
            elif real:
                out["anyOf"] = [self.clean(v, depth + 1) for v in real]

        for key in _SCHEMA_STRINGS:
            if isinstance(node.get(key), str):
                out[key] = node[key]
        for key in _SCHEMA_NUMBERS:
            value = node.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[key] = value

        enum = node.get("enum")
        if "const" in node and enum is None:
            enum = [node["const"]]
        if isinstance(enum, list):
            nullable = nullable or None in enum
            values = [v for v in enum if v is not None]
            # [schema] enum is a list of strings; an enum of numbers or mixed values is dropped
            # rather than turned into strings, which would change the type of the answer.
            if values and all(isinstance(v, str) for v in values):
                out["enum"] = values
                out.setdefault("type", "STRING")
                out["format"] = "enum"
        fmt = node.get("format")
        if (
            "format" not in out
            and isinstance(fmt, str)
            and fmt in _FORMATS.get(out.get("type", ""), ())
        ):
            out["format"] = fmt

        props = node.get("properties")
        if isinstance(props, dict):
            out["properties"] = {k: self.clean(v, depth + 1) for k, v in props.items()}
            required = node.get("required")
            if isinstance(required, list):
                out["required"] = [r for r in required if isinstance(r, str) and r in props]
            ordering = node.get("propertyOrdering")
            if isinstance(ordering, list):
                out["propertyOrdering"] = [p for p in ordering if isinstance(p, str) and p in props]
        items = node.get("items")
        if isinstance(items, dict):
            out["items"] = self.clean(items, depth + 1)
        elif isinstance(items, list) and items:  # tuple form: any of the listed item schemas
            out["items"] = {"anyOf": [self.clean(i, depth + 1) for i in items]}
        if nullable:
            out["nullable"] = True
        return out


# --------------------------------------------------------------------------- response: Gemini -> OpenAI


def _count(meta: dict[str, Any], key: str) -> int:
    return count_at(meta, key, "gemini: usageMetadata")


def _usage(meta: dict[str, Any]) -> dict[str, Any]:
    """[generate] UsageMetadata -> OpenAI usage. promptTokenCount already includes the cached part;
    thinking tokens are billed as output, so they are completion tokens (SPEC §5.3)."""
    prompt = _count(meta, "promptTokenCount")
    thoughts = _count(meta, "thoughtsTokenCount")
    completion = _count(meta, "candidatesTokenCount") + thoughts
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": _count(meta, "cachedContentTokenCount")},
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    }


def _finish(reason: str, called: bool) -> str:
    finish = _FINISH.get(reason, "stop")
    return "tool_calls" if finish == "stop" and reason == "STOP" and called else finish


class _Ids:
    """Tool-call ids for one response: Gemini's own functionCall.id when it sends one, else
    call_0, call_1, ... in order, so the same response always yields the same ids."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def next(self, call: dict[str, Any]) -> str:
        own = call.get("id")
        self.n += 1
        return own if isinstance(own, str) and own else f"call_{self.n - 1}"


class _Details:
    """One candidate's reasoning_details as its parts come: consecutive thought pieces make one
    reasoning.text item (one index, as clients join a stream's pieces), and each thought
    signature an encrypted item of its own, with the tool call's id when it signs a functionCall
    ([signatures]: the client sends them back, see _model_parts)."""

    __slots__ = ("n", "thinking")

    def __init__(self) -> None:
        self.n = 0
        self.thinking = False

    def thought(self, text: str) -> dict[str, Any]:
        if not self.thinking:
            self.thinking = True
            self.n += 1
        return reasoning.text_item(text, reasoning.GEMINI, self.n - 1)

    def signature(self, sig: str, call_id: str | None) -> dict[str, Any]:
        self.thinking = False
        self.n += 1
        return reasoning.encrypted_item(sig, reasoning.GEMINI, self.n - 1, call_id)


def _read_parts(
    candidate: dict[str, Any], ids: _Ids, details: _Details
) -> tuple[list[str], list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """[content] a candidate's parts -> (text pieces, thought pieces, OpenAI tool calls,
    reasoning_details items)."""
    content = candidate.get("content")
    if content is None:
        return [], [], [], []  # e.g. a SAFETY stop carries no content
    if not isinstance(content, dict):
        raise UpstreamProtocolError("gemini: candidate content is not an object")
    parts = content.get("parts", [])
    if not isinstance(parts, list):
        raise UpstreamProtocolError("gemini: content.parts is not an array")
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    for part in parts:
        if not isinstance(part, dict):
            raise UpstreamProtocolError("gemini: a part is not an object")
        call_id = None
        sig = part.get("thoughtSignature")
        if not isinstance(sig, str) or not sig:
            sig = None
        if "text" in part:
            text = part["text"]
            if not isinstance(text, str):
                raise UpstreamProtocolError("gemini: part.text is not a string")
            if part.get("thought") is True:  # [thinking] a thought summary (includeThoughts)
                thoughts.append(text)
                if text:
                    items.append(details.thought(text))
            else:
                texts.append(text)
                details.thinking = False
        elif "functionCall" in part:
            fc = part["functionCall"]
            if not isinstance(fc, dict) or not isinstance(fc.get("name"), str):
                raise UpstreamProtocolError("gemini: functionCall without a name")
            args = fc.get("args", {})
            call: dict[str, Any] = {
                "id": ids.next(fc),
                "type": "function",
                "function": {"name": fc["name"], "arguments": orjson.dumps(args).decode()},
            }
            call_id = call["id"]
            if sig is not None:
                call["extra_content"] = {"google": {"thought_signature": sig}}
            calls.append(call)
        # inlineData (generated images), executableCode, codeExecutionResult: no OpenAI field.
        if sig is not None:
            items.append(details.signature(sig, call_id))
    return texts, thoughts, calls, items


def _candidates(obj: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    raw = obj.get("candidates", [])
    if not isinstance(raw, list):
        raise UpstreamProtocolError("gemini: candidates is not an array")
    out = []
    for pos, cand in enumerate(raw):
        if not isinstance(cand, dict):
            raise UpstreamProtocolError("gemini: a candidate is not an object")
        index = cand.get("index", pos)  # proto3 JSON omits index 0
        if type(index) is not int or index < 0:
            raise UpstreamProtocolError("gemini: candidate.index is not an integer")
        out.append((index, cand))
    return out


def _block_reason(obj: dict[str, Any]) -> str | None:
    feedback = obj.get("promptFeedback")
    reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
    return reason if isinstance(reason, str) else None


def _reason(cand: dict[str, Any]) -> str | None:
    reason = cand.get("finishReason")
    if reason is not None and not isinstance(reason, str):
        raise UpstreamProtocolError("gemini: finishReason is not a string")
    return reason


def _usage_meta(obj: dict[str, Any]) -> dict[str, Any] | None:
    meta = obj.get("usageMetadata")
    if meta is not None and not isinstance(meta, dict):
        raise UpstreamProtocolError("gemini: usageMetadata is not an object")
    return meta


def parse_generate_response(obj: dict[str, Any]) -> dict[str, Any]:
    """[generate] a GenerateContentResponse -> the OpenAI choices and usage."""
    if isinstance(obj.get("error"), dict):
        raise _error(obj["error"])
    ids = _Ids()
    choices = []
    for index, cand in _candidates(obj):
        texts, thoughts, calls, items = _read_parts(cand, ids, _Details())
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
        if thoughts:
            message["reasoning"] = "".join(thoughts)
        if items:
            message["reasoning_details"] = reasoning.merge(items)
        if calls:
            message["tool_calls"] = calls
        reason = _reason(cand)
        choices.append(
            {
                "index": index,
                "message": message,
                "finish_reason": _finish(reason or "STOP", bool(calls)),
                "native_finish_reason": reason,
            }
        )
    if not choices:
        # [generate] PromptFeedback: "If set, the prompt was blocked and no candidates are returned".
        reason = _block_reason(obj)
        if reason is None:
            raise UpstreamProtocolError("gemini: response has neither candidates nor a blockReason")
        choices.append(
            {
                "index": 0,
                "message": {"role": "assistant", "content": None},
                "finish_reason": "content_filter",
                "native_finish_reason": reason,
            }
        )
    return {"choices": choices, "usage": _usage(_usage_meta(obj) or {})}


def _error(err: dict[str, Any]) -> UpstreamStatusError:
    status, message, code = err.get("status"), err.get("message"), err.get("code")
    return UpstreamStatusError(
        f"gemini: {status if isinstance(status, str) else 'ERROR'}: "
        f"{message if isinstance(message, str) else ''}",
        raw=err,
        upstream_status=code if type(code) is int else 500,
    )


# --------------------------------------------------------------------------- streaming


class GeminiStreamDecoder:
    """[generate] streamGenerateContent?alt=sse -> OpenAI chat.completion.chunk fields.

    Every SSE `data:` is a whole GenerateContentResponse (CRLF-framed; SSEParser copes). Text parts
    arrive as increments and become content deltas; a functionCall arrives whole and becomes one
    complete tool_calls delta. usageMetadata is repeated, growing, in every event: only the last is
    kept and reported once, at close(). The stream is complete once every candidate has sent its
    finishReason (or the prompt was blocked, which ends it with no candidate at all).
    """

    __slots__ = ("_details", "_failed", "_finished", "_ids", "_meta", "_seen", "_sse", "_tools")

    def __init__(self) -> None:
        self._sse = SSEParser()
        self._failed: UpstreamError | None = None
        self._ids = _Ids()
        self._meta: dict[str, Any] | None = None
        self._seen: set[int] = set()  # candidate indexes that have had their role chunk
        self._finished: set[int] = set()
        self._tools: dict[int, int] = {}  # candidate index -> tool calls so far
        self._details: dict[int, _Details] = {}  # candidate index -> its reasoning items

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Bytes as they arrive -> chunks; raises UpstreamStatusError for an in-stream error object
        and UpstreamProtocolError for an event that is not a GenerateContentResponse.

        When a failure follows events of the same read, their chunks are returned first and the
        error is raised by the next feed() or close(), so no content that arrived is dropped."""
        if self._failed is not None:
            raise self._failed
        out: list[dict[str, Any]] = []
        try:
            for _event, payload in self._sse.feed(data):
                self._event(json_object(payload, "gemini: stream event"), out)
        except UpstreamError as exc:
            if not out:
                raise
            self._failed = exc
        return out

    def close(self) -> list[dict[str, Any]]:
        """The body ended: the usage chunk, or UpstreamProtocolError if the stream was cut short."""
        # A last event left without its blank line is dispatched; if it was cut short, its JSON
        # fails to parse.
        out = self.feed(b"\n\n") if self._sse.pending() else []
        if self._failed is not None:
            raise self._failed
        if not self._finished or self._seen - self._finished:
            raise UpstreamProtocolError("gemini: stream ended early (no finishReason)")
        out.append({"choices": [], "usage": _usage(self._meta or {})})
        return out

    def _event(self, obj: dict[str, Any], out: list[dict[str, Any]]) -> None:
        if isinstance(obj.get("error"), dict):
            raise _error(obj["error"])
        meta = _usage_meta(obj)
        if meta is not None:
            self._meta = meta
        candidates = _candidates(obj)
        if not candidates:
            reason = _block_reason(obj)
            if reason is not None:  # the prompt was blocked: the only event of the stream
                self._delta(0, {}, out)
                out.append(_finish_chunk(0, "content_filter", reason))
                self._finished.add(0)
            return
        for index, cand in candidates:
            details = self._details.get(index)
            if details is None:
                details = self._details[index] = _Details()
            texts, thoughts, calls, items = _read_parts(cand, self._ids, details)
            self._delta(index, {}, out)
            # The event's reasoning_details ride on its first delta (or one of their own).
            pending = {"reasoning_details": reasoning.merge(items)} if items else {}
            if any(thoughts):
                self._delta(index, {"reasoning": "".join(thoughts), **pending}, out)
                pending = {}
            if any(texts):
                self._delta(index, {"content": "".join(texts), **pending}, out)
                pending = {}
            if calls:
                start = self._tools.get(index, 0)
                self._tools[index] = start + len(calls)
                for n, call in enumerate(calls):
                    call["index"] = start + n
                self._delta(index, {"tool_calls": calls, **pending}, out)
                pending = {}
            if pending:
                self._delta(index, pending, out)
            reason = _reason(cand)
            if reason is not None and index not in self._finished:
                self._finished.add(index)
                out.append(_finish_chunk(index, _finish(reason, index in self._tools), reason))

    def _delta(self, index: int, delta: dict[str, Any], out: list[dict[str, Any]]) -> None:
        if index not in self._seen:
            self._seen.add(index)
            out.append(_chunk(index, {"role": "assistant", "content": ""}))
        if delta:
            out.append(_chunk(index, delta))


def _chunk(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    return {"choices": [{"index": index, "delta": delta, "finish_reason": None}]}


def _finish_chunk(index: int, finish: str, native: str) -> dict[str, Any]:
    return {
        "choices": [
            {"index": index, "delta": {}, "finish_reason": finish, "native_finish_reason": native}
        ]
    }
