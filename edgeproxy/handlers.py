"""Request phases of the HTTP API: validate → authorise → route → attempt(s) → respond.

Each phase either returns the next phase's input or raises an EdgeproxyError, which the app's
middleware turns into the JSON error body. Streaming responses live in `streaming`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from . import pipeline, routing
from .autorouter import classify, is_auto
from .billing.charge import charge
from .billing.pricing import usd_str
from .billing.service import Caller
from .errors import BadRequest, EdgeproxyError, NoEndpoint, PayloadTooLarge, RequestTimeout
from .gateway import Gateway, Generation
from .ingress import anthropic_messages
from .ingress.base import Codec, Decoded
from .schema import ChatRequest, convert_chat
from .sticky import pin_key
from .streaming import SSEResponse
from .transforms import (
    CHARS_PER_TOKEN,
    MEDIA_PART_TOKEN_BOUND,
    TOOLS_PROMPT_TOKENS,
    estimate_tokens,
    media_chars,
    media_parts,
    middle_out,
)

__all__ = [
    "GATEWAY",
    "Handler",
    "dialect",
    "get_model",
    "healthz",
    "list_models",
    "messages_count_tokens",
    "metrics",
    "readyz",
    "serve",
]

GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
# Why this endpoint: the routing rule (e.g. "default (1/price² weighted)", "auto:code").
ROUTE_HEADER = "X-Edgeproxy-Route"
_JSON = "application/json"
_APP_NAME_MAX = 200
_encode = msgspec.json.Encoder().encode

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type=_JSON)


async def read_body(request: web.Request, gw: Gateway) -> bytes:
    """The whole body, at most `max_body_bytes`; a client that stops sending it for
    `body_timeout_s` gets a 408 (aiohttp itself would wait for ever)."""
    server = gw.cfg.server
    limit = server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    stream = request.content
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            # What has arrived is taken without a timer: most bodies are whole by now.
            chunk = stream.read_nowait()
            if not chunk and not stream.at_eof():
                async with asyncio.timeout(server.body_timeout_s):
                    chunk = await stream.readany()
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    except TimeoutError:
        raise RequestTimeout(f"the request body stalled: no byte came for "
                             f"{server.body_timeout_s:g} s") from None
    except RequestPayloadError as exc:  # a malformed chunked or compressed body
        raise BadRequest(f"malformed request body: {exc}") from None


def validate(req: ChatRequest, gw: Gateway) -> None:
    if len(req.messages) > gw.cfg.server.max_messages:
        raise BadRequest(
            f"too many messages: {len(req.messages)} (at most {gw.cfg.server.max_messages})"
        )
    if not req.model and not req.models:
        raise BadRequest("request names no model: set `model` or `models`")
    routing.check_plugins(req)


def app_name(request: web.Request) -> str | None:
    """The calling app's name, for the ledger and /generation: a header holds any bytes (aiohttp
    keeps the undecodable ones as lone surrogates), so only printable text of it, 200 characters
    at most, is kept."""
    h = request.headers
    name = h.get("X-Title") or h.get("X-OpenRouter-Title") or h.get("HTTP-Referer")
    if not name:
        return None
    name = name[:_APP_NAME_MAX]
    if not name.isprintable():  # (a lone surrogate is not printable either)
        name = "".join(c for c in name if c.isprintable())
    return name or None


def session_header(request: web.Request) -> str | None:
    """The `x-session-id` header, OpenRouter's alternative to the body's `session_id` (which wins
    when both are sent), held to the same 256 characters."""
    sid = request.headers.get("x-session-id")
    if sid is not None and len(sid) > 256:
        raise BadRequest("x-session-id: at most 256 characters", {"length": len(sid)})
    return sid or None


def authorization(request: web.Request) -> str | None:
    """The caller's key: `Authorization: Bearer …`, or Anthropic's `x-api-key` header."""
    h = request.headers
    auth = h.get("Authorization")
    if auth is None:
        key = h.get("x-api-key")
        if key:
            auth = "Bearer " + key
    return auth


def estimate_prompt_tokens(decoded: Decoded) -> int:
    """The prompt's size before the upstream says the real count, to filter on context length
    and reserve credits: text at ~4 characters a token and a fixed count per image or file, tool
    definitions included. Every other byte the client sent may reach the upstream too (a schema,
    fields the gateway does not read), so the body less its inline media is a floor."""
    req = decoded.route
    body = len(decoded.body)
    for m in req.messages:
        if type(m.content) is list:  # parts: maybe inline media, which the body's size overstates
            break
    else:
        if body:  # all text: the body's size says as much as a count of its text would
            return body // CHARS_PER_TOKEN
    tokens = estimate_tokens(req.messages)
    if req.tools:
        tokens += -(-len(_encode(req.tools)) // CHARS_PER_TOKEN)
    return max(tokens, (body - media_chars(req.messages)) // CHARS_PER_TOKEN)


def prompt_token_bound(decoded: Decoded) -> int:
    """The most prompt tokens the request can be billed for, which its reservation holds
    (SPEC §5.3): the estimate above is a typical count, and a token-dense prompt ("a a a …", digits,
    base64) makes up to four times as many. Byte-level BPE and SentencePiece tokens each span at
    least one byte, so text cannot make more tokens than it has bytes; the body less its inline
    media bounds the text (its JSON framing covers each message's role tokens). Media parts and a
    provider's tool prompt count their bounds."""
    req = decoded.route
    body = len(decoded.body) if decoded.body else len(_encode(decoded.as_dict()))
    for m in req.messages:
        if type(m.content) is list:
            body += (media_parts(req.messages) * MEDIA_PART_TOKEN_BOUND
                     - media_chars(req.messages))
            break
    return body + (TOOLS_PROMPT_TOKENS if req.tools else 0)


def auto_route(gw: Gateway, req: ChatRequest, caller: Caller, prompt_tokens: int) -> str:
    """`model: "auto"`: pick the models from the request itself (SPEC §7); returns the rule."""
    rule, models = classify(
        gw.auto, req.messages, bool(req.tools), prompt_tokens,
        gw.billing.spend_last_hour(caller.account.id),
        tool_names=[t.function.name for t in req.tools or ()],
    )
    if not models:
        raise NoEndpoint(f"the auto router's rule {rule!r} names no model this gateway serves")
    req.model = models[0]
    req.models = models[1:] + [m for m in req.models or () if m not in models]
    return rule


def fit_context(gw: Gateway, decoded: Decoded, prompt_tokens: int) -> int:
    """A prompt over the model's context is a 400 naming both numbers, unless the request asks
    for `transforms: ["middle-out"]` (or its new name, the context-compression plugin), which
    drops the middle of the conversation to fit."""
    req = decoded.route
    if not req.model:
        return prompt_tokens
    entry = gw.routes.primary(req)
    max_tokens = req.max_completion_tokens or req.max_tokens or 0
    context = max(e.context_length for e in entry.endpoints)
    if prompt_tokens + max_tokens <= context:
        return prompt_tokens
    if not (req.transforms and "middle-out" in req.transforms) and not any(
            p.id == "context-compression" and p.enabled is not False for p in req.plugins or ()):
        raise BadRequest(
            f"this request needs about {prompt_tokens + max_tokens} tokens (~{prompt_tokens} "
            f"prompt + {max_tokens} max_tokens) but {entry.id} has a context of {context}; "
            'shorten it or send transforms: ["middle-out"]',
            {"context_length": context, "requested_tokens": prompt_tokens + max_tokens},
        )
    doc = decoded.as_dict()
    doc["messages"] = middle_out(doc["messages"], max(1, context - max_tokens))
    trimmed = convert_chat(doc)
    # The routing decisions already taken (auto router) stay with the trimmed request.
    trimmed.model, trimmed.models = req.model, req.models
    decoded.replace(doc, trimmed)
    return estimate_prompt_tokens(decoded)


def embedding_endpoints(plan: routing.Plan) -> None:
    """Embeddings are served by openai-protocol endpoints only (SPEC §1.1)."""
    plan.endpoints = [e for e in plan.endpoints if e.provider_cfg.protocol == "openai"]
    if not plan.endpoints:
        raise NoEndpoint("no endpoint of this model serves embeddings (openai protocol only)")


async def serve(request: web.Request, codec: Codec) -> web.StreamResponse:
    """One request of any dialect: decode → authorise → route → reserve → pipeline → encode."""
    gw = request.app[GATEWAY]
    caller = await gw.billing.authenticate(authorization(request))
    body = await read_body(request, gw)
    decoded = codec.decode(body, request.headers)
    req = decoded.route
    validate(req, gw)
    prompt_tokens = estimate_prompt_tokens(decoded)
    rule = auto_route(gw, req, caller, prompt_tokens) if is_auto(req.model) else ""
    if decoded.kind == "embeddings":
        # The context limit holds per input, and the estimate is of all inputs together (for the
        # reservation): the upstream enforces its own limit, and its 400 is relayed.
        plan = gw.routes.plan(req, 0)
        embedding_endpoints(plan)
    else:
        prompt_tokens = fit_context(gw, decoded, prompt_tokens)
        req = decoded.route
        plan = gw.routes.plan(req, prompt_tokens)
    if rule:
        plan.rule = f"auto:{rule}"
    session: str | tuple[str, str, ChatRequest, str | None] = ""
    if gw.pins is not None and decoded.kind == "chat" and not (req.provider and req.provider.order):
        # (OpenRouter: an explicit provider.order wins over stickiness)
        header = session_header(request)
        session = (caller.account.id, plan.endpoints[0].model_id, req, header)
        if gw.pins.may_hold(req, header):
            session = pin_key(*session)
            await gw.stick(plan, req, session)
        # else no pin can exist for it yet: its key is made only if its answer pins it
    if all(ep.is_free for ep in plan.endpoints):
        await gw.billing.check_free(caller)
    max_tokens = req.max_completion_tokens or req.max_tokens or 0
    gen = Generation(plan.endpoints[0].model_id, req.stream, app_name(request), caller)
    gen.route = plan.rule
    gen.session = session
    gen.prompt_estimate = prompt_tokens
    gen.echo = decoded.echo
    # Reserve the most this request can cost before any upstream is contacted (402 otherwise).
    cost = gw.max_cost(caller, plan, prompt_token_bound(decoded), max_tokens,
                       req.n or 1 if decoded.kind == "chat" else 0)
    async with charge(gw.billing, caller, cost) as gen.reservation:
        if not req.stream:
            result = await pipeline.complete(gw, gen, decoded, plan)
            return web.Response(body=codec.encode(result, gen), content_type=_JSON,
                                headers={ROUTE_HEADER: gen.route})
        sink = SSEResponse(request, {ROUTE_HEADER: gen.route}, gw.cfg.server.keepalive_s)
        try:
            await pipeline.stream(gw, gen, decoded, plan, codec.stream_encoder(gen), sink)
        except pipeline.ClientGone:
            pass  # recorded as cancelled; nobody is left to answer
        finally:
            await sink.flowing()
        # None only when the client left before the head could go out: nobody reads this one.
        return sink.response or web.Response()


def dialect(codec: Codec) -> Handler:
    """The route handler of one dialect: its errors in its own shape."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await serve(request, codec)
        except EdgeproxyError as exc:
            return web.Response(body=codec.error_body(exc), status=exc.status,
                                content_type=_JSON, headers=exc.headers())

    return handle


def model_object(entry: routing.ModelEntry, api: str) -> dict[str, Any]:
    """One model in OpenRouter's model-object schema (pricing: USD per token, as strings); `api`
    is the path prefix the request came by (/v1 or /api/v1), for its links. Fields the gateway
    has no value for carry the schema's null."""
    m = entry.cfg
    cheapest = min(entry.endpoints, key=lambda e: e.prompt_price + e.completion_price)
    return {
        "id": entry.id,
        "canonical_slug": entry.id,
        "name": m.name or entry.id,
        "created": m.created,
        "description": m.description,
        "context_length": m.context_length,
        "architecture": {
            "modality": "+".join(m.input_modalities) + "->" + "+".join(m.output_modalities),
            "input_modalities": m.input_modalities,
            "output_modalities": m.output_modalities,
            "tokenizer": m.tokenizer,
            "instruct_type": None,
        },
        "pricing": {
            "prompt": _per_token(cheapest.prompt_price),
            "completion": _per_token(cheapest.completion_price),
            "request": _per_token(cheapest.request_price * 1_000_000),
            "image": _per_token(cheapest.image_price * 1_000_000),
            **_cache_pricing(cheapest),
        },
        "top_provider": {
            "context_length": cheapest.context_length,
            "max_completion_tokens": cheapest.max_output if "text" in m.output_modalities
            else None,
            "is_moderated": False,
        },
        "supported_parameters": m.supported_parameters,
        "default_parameters": None,
        "per_request_limits": None,
        "supported_voices": None,  # (text models: no text-to-speech voices)
        "links": {"details": f"{api}/models/{entry.id}/endpoints"},
    }


async def messages_count_tokens(request: web.Request) -> web.Response:
    """Anthropic's `POST /v1/messages/count_tokens`: the gateway's own estimate of the prompt."""
    gw = request.app[GATEWAY]
    try:
        await gw.billing.authenticate(authorization(request))
        body = await read_body(request, gw)
        return json_response(anthropic_messages.count_tokens(body))
    except EdgeproxyError as exc:
        return web.Response(body=anthropic_messages.CODEC.error_body(exc), status=exc.status,
                            content_type=_JSON, headers=exc.headers())


async def get_model(request: web.Request) -> web.Response:
    """`GET /models/{author}/{slug}`: one model object (the openai SDK's models.retrieve)."""
    gw = request.app[GATEWAY]
    m = request.match_info
    # The openai SDK sends the id as one path segment, its slash encoded (%2F).
    model_id = m["model_id"] if "model_id" in m else f"{m['author']}/{m['slug']}"
    entry = gw.routes.models.get(model_id)
    if entry is None:
        raise NoEndpoint(f"unknown model {model_id!r}", {"model": model_id})
    return json_response(model_object(entry, _api(request)))


async def list_models(request: web.Request) -> web.Response:
    """The catalog, filtered as the query asks, a page of it when `offset`/`limit` are given (the
    OpenRouter SDK always sends them): `total_count` counts every match, `links.next` is the next
    page's path or null on the last."""
    gw = request.app[GATEWAY]
    q = request.query
    params = [p for p in q.get("supported_parameters", "").split(",") if p]
    # As OpenRouter's /models: text models unless the query asks for others (or "all").
    outputs = [p for p in q.get("output_modalities", "text").split(",") if p]
    offset = _query_int(q, "offset", 0, 0)
    limit = _query_int(q, "limit", len(gw.routes.models) or 1, 1)
    matches = []
    for entry in gw.routes.models.values():
        m = entry.cfg
        if params and not all(p in m.supported_parameters for p in params):
            continue
        if outputs and "all" not in outputs and not any(o in m.output_modalities for o in outputs):
            continue
        matches.append(entry)
    api = _api(request)
    end = offset + limit
    return json_response({
        "data": [model_object(entry, api) for entry in matches[offset:end]],
        "total_count": len(matches),
        "links": {"next": str(request.rel_url.update_query(offset=end, limit=limit))
                  if end < len(matches) else None},
    })


def _query_int(q: Mapping[str, str], name: str, default: int, least: int) -> int:
    text = q.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise BadRequest(f"query parameter `{name}` must be an integer >= {least}",
                         {name: text})
    return value


def _api(request: web.Request) -> str:
    """The API prefix (/v1 or /api/v1) a models request came by, for the links it answers."""
    return request.path[:request.path.index("/models")]


async def model_endpoints(request: web.Request) -> web.Response:
    """A model's endpoints with live health from the router's windows (SPEC §1.1)."""
    gw = request.app[GATEWAY]
    model_id = f"{request.match_info['author']}/{request.match_info['slug']}"
    entry = gw.routes.models.get(model_id)
    if entry is None:
        raise NoEndpoint(f"unknown model {model_id!r}", {"model": model_id})
    now = routing.now_ms()
    router = gw.routes.router
    history = gw.routes.history
    endpoints = []
    for e in entry.endpoints:
        ok, failed = router.window(e.index, now)
        uptime_5m, uptime_30m, uptime_1d = history.uptime(e.index, now, 5, 30, 24 * 60)
        tool_choice = "tool_choice" in e.parameters  # each adapter maps all four forms
        endpoints.append({
            "name": f"{e.provider} | {e.upstream_model}",
            "model_id": entry.id,
            "provider_name": e.provider,
            "tag": e.provider,  # what `provider.order` / `only` name to pick this endpoint
            "model_name": entry.cfg.name or entry.id,
            "context_length": e.context_length,
            "max_completion_tokens": e.max_output,
            "max_prompt_tokens": None,  # no limit of its own: prompt + output fit the context
            "quantization": e.quantization,
            "pricing": {"prompt": _per_token(e.prompt_price),
                        "completion": _per_token(e.completion_price),
                        "request": _per_token(e.request_price * 1_000_000),
                        "image": _per_token(e.image_price * 1_000_000),
                        **_cache_pricing(e)},
            "supported_parameters": sorted(e.parameters - {"image_input"}),
            "status": _DEGRADED if router.is_degraded(e.index, now) else _OK,
            # Share of successful attempts in the live window (30 s by default); None: no traffic.
            "uptime_last_30s": round(ok / (ok + failed), 4) if ok + failed else None,
            "requests_last_30s": ok + failed,
            "latency_ms": round(router.latency(e.index), 2),
            "throughput_tokens_per_s": round(router.throughput(e.index), 2),
            # OpenRouter's: this node's record of the last 5 and 30 minutes and day (history).
            "uptime_last_5m": uptime_5m,
            "uptime_last_30m": uptime_30m,
            "uptime_last_1d": uptime_1d,
            "latency_last_30m": history.latency(e.index, now),
            "throughput_last_30m": history.throughput(e.index, now),
            "supports_implicit_caching": _implicit_caching(e),
            "service_tier": None,  # a standard endpoint
            "native_tools": {},  # none of OpenRouter's server tools (web search, …) is offered
            "supports_tool_choice": {"auto": tool_choice, "none": tool_choice,
                                     "required": tool_choice, "function": tool_choice},
            "supports_diarization": False,  # (no speech-to-text)
        })
    return json_response({"data": {
        "id": entry.id, "name": entry.cfg.name or entry.id, "created": entry.cfg.created,
        "description": entry.cfg.description,
        "architecture": model_object(entry, _api(request))["architecture"],
        "endpoints": endpoints,
    }})


# OpenRouter's endpoint `status` is an integer: 0 for a healthy endpoint (its spec's example);
# the negative values (-1, -2, -3, -5, -10) have no published meaning, so a degraded endpoint
# (tried last, SPEC §2.4) takes the mildest of them.
_OK = 0
_DEGRADED = -1


def _implicit_caching(e: routing.Endpoint) -> bool:
    """Whether the provider caches prompts on its own: one that prices cached reads does
    (OpenAI, DeepSeek, Gemini), except Anthropic, which caches only at the request's
    `cache_control` breakpoints (Anthropic's "Prompt caching" guide)."""
    return e.prices.cache_read != e.prompt_price and e.provider_cfg.protocol != "anthropic"


def _per_token(micro_per_million: int) -> str:
    # micro-USD per 1M tokens is pico-USD per token: OpenRouter lists USD per token as a string.
    return usd_str(micro_per_million)


def _cache_pricing(e: routing.Endpoint) -> dict[str, str]:
    """OpenRouter's `input_cache_read` / `input_cache_write`, listed where the endpoint prices
    cached tokens apart from the prompt (SPEC §5.3)."""
    out = {}
    if e.prices.cache_read != e.prompt_price:
        out["input_cache_read"] = _per_token(e.prices.cache_read)
    if e.prices.cache_write != e.prompt_price:
        out["input_cache_write"] = _per_token(e.prices.cache_write)
    return out


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    now = routing.now_ms()
    degraded = [
        f"{e.model_id}@{e.provider}" for e in gw.routes.endpoints if gw.routes.is_degraded(e, now)
    ]
    usable = len(gw.routes.endpoints) - len(degraded)
    ready = usable > 0
    doc: dict[str, Any] = {
        "status": "ready" if ready else "unavailable",
        "endpoints": len(gw.routes.endpoints),
        "degraded": degraded,
        "router": "compiled" if routing.EXTENSION else "python-fallback",
        "ledger": gw.billing.ledger.db.name,
    }
    if gw.shared is not None:
        # Serving goes on with local state while Redis is away; readiness says so, stays ready.
        doc["state"] = "redis" if gw.shared.up else f"local (redis unreachable: {gw.shared.last_error})"
    return json_response(
        doc,
        status=200 if ready else 503,
    )


async def metrics(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return web.Response(body=gw.metrics.render(), content_type="text/plain", charset="utf-8")
