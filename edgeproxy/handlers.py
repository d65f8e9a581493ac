"""Request phases of the HTTP API: validate → authorise → route → attempt(s) → respond.

Each phase either returns the next phase's input or raises an EdgeproxyError, which the app's
middleware turns into the JSON error body. Streaming responses live in `streaming`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import orjson
from aiohttp import web

from . import pipeline, routing
from .autorouter import classify, is_auto
from .billing.charge import charge
from .billing.pricing import usd_str
from .billing.service import Caller
from .errors import BadRequest, EdgeproxyError, NoEndpoint, PayloadTooLarge
from .gateway import Gateway, Generation
from .ingress import anthropic_messages
from .ingress.base import Codec, Decoded
from .schema import ChatRequest, convert_chat
from .streaming import SSEResponse
from .transforms import CHARS_PER_TOKEN, estimate_tokens, media_chars, middle_out

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
_encode = msgspec.json.Encoder().encode

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type=_JSON)


async def read_body(request: web.Request, gw: Gateway) -> bytes:
    limit = gw.cfg.server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes") from None


def validate(req: ChatRequest, gw: Gateway) -> None:
    if len(req.messages) > gw.cfg.server.max_messages:
        raise BadRequest(
            f"too many messages: {len(req.messages)} (at most {gw.cfg.server.max_messages})"
        )
    if not req.model and not req.models:
        raise BadRequest("request names no model: set `model` or `models`")


def app_name(request: web.Request) -> str | None:
    h = request.headers
    return h.get("X-Title") or h.get("X-OpenRouter-Title") or h.get("HTTP-Referer")


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
    for `transforms: ["middle-out"]`, which drops the middle of the conversation to fit."""
    req = decoded.route
    if not req.model:
        return prompt_tokens
    entry, _ = gw.routes.resolve(req.model)
    max_tokens = req.max_completion_tokens or req.max_tokens or 0
    context = max(e.context_length for e in entry.endpoints)
    if prompt_tokens + max_tokens <= context:
        return prompt_tokens
    if not req.transforms or "middle-out" not in req.transforms:
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
    if all(ep.is_free for ep in plan.endpoints):
        await gw.billing.check_free(caller)
    max_tokens = req.max_completion_tokens or req.max_tokens or 0
    gen = Generation(plan.endpoints[0].model_id, req.stream, app_name(request), caller)
    gen.route = plan.rule
    gen.prompt_estimate = prompt_tokens
    gen.echo = decoded.echo
    # Reserve the most this request can cost before any upstream is contacted (402 otherwise).
    cost = gw.max_cost(caller, plan, prompt_tokens, max_tokens, output=decoded.kind == "chat")
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


def model_object(entry: routing.ModelEntry) -> dict[str, Any]:
    """One model in OpenRouter's model-object schema (pricing: USD per token, as strings)."""
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
        },
        "pricing": {
            "prompt": _per_token(cheapest.prompt_price),
            "completion": _per_token(cheapest.completion_price),
            "request": _per_token(cheapest.request_price * 1_000_000),
            "image": _per_token(cheapest.image_price * 1_000_000),
        },
        "top_provider": {
            "context_length": cheapest.context_length,
            "max_completion_tokens": cheapest.max_output if "text" in m.output_modalities
            else None,
            "is_moderated": False,
        },
        "supported_parameters": m.supported_parameters,
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
    return json_response(model_object(entry))


async def list_models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    q = request.query
    params = [p for p in q.get("supported_parameters", "").split(",") if p]
    # As OpenRouter's /models: text models unless the query asks for others (or "all").
    outputs = [p for p in q.get("output_modalities", "text").split(",") if p]
    data = []
    for entry in gw.routes.models.values():
        m = entry.cfg
        if params and not all(p in m.supported_parameters for p in params):
            continue
        if outputs and "all" not in outputs and not any(o in m.output_modalities for o in outputs):
            continue
        data.append(model_object(entry))
    return json_response({"data": data})


async def model_endpoints(request: web.Request) -> web.Response:
    """A model's endpoints with live health from the router's windows (SPEC §1.1)."""
    gw = request.app[GATEWAY]
    model_id = f"{request.match_info['author']}/{request.match_info['slug']}"
    entry = gw.routes.models.get(model_id)
    if entry is None:
        raise NoEndpoint(f"unknown model {model_id!r}", {"model": model_id})
    now = routing.now_ms()
    router = gw.routes.router
    endpoints = []
    for e in entry.endpoints:
        ok, failed = router.window(e.index, now)
        endpoints.append({
            "name": f"{e.provider} | {e.upstream_model}",
            "provider_name": e.provider,
            "model_name": entry.cfg.name or entry.id,
            "context_length": e.context_length,
            "max_completion_tokens": e.max_output,
            "quantization": e.quantization,
            "pricing": {"prompt": _per_token(e.prompt_price),
                        "completion": _per_token(e.completion_price),
                        "request": _per_token(e.request_price * 1_000_000),
                        "image": _per_token(e.image_price * 1_000_000)},
            "supported_parameters": sorted(e.parameters - {"image_input"}),
            "status": "degraded" if router.is_degraded(e.index, now) else "ok",
            # Share of successful attempts in the live window (30 s by default); None: no traffic.
            "uptime_last_30s": round(ok / (ok + failed), 4) if ok + failed else None,
            "requests_last_30s": ok + failed,
            "latency_ms": round(router.latency(e.index), 2),
            "throughput_tokens_per_s": round(router.throughput(e.index), 2),
        })
    return json_response({"data": {
        "id": entry.id, "name": entry.cfg.name or entry.id, "created": entry.cfg.created,
        "description": entry.cfg.description,
        "architecture": model_object(entry)["architecture"], "endpoints": endpoints,
    }})


def _per_token(micro_per_million: int) -> str:
    # micro-USD per 1M tokens is pico-USD per token: OpenRouter lists USD per token as a string.
    return usd_str(micro_per_million)


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
