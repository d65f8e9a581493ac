"""Request phases of the HTTP API: validate → authorise → route → attempt(s) → respond.

Each phase either returns the next phase's input or raises an EdgeproxyError, which the app's
middleware turns into the JSON error body. Streaming responses live in `streaming`.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from . import routing
from .autorouter import classify, is_auto
from .billing.pricing import usd_str
from .billing.service import Caller
from .errors import BadRequest, EdgeproxyError, NoEndpoint, PayloadTooLarge, UpstreamError
from .gateway import Gateway, Generation, request_dict
from .schema import ChatRequest, decode_chat
from .streaming import stream_chat
from .transforms import estimate_tokens, middle_out

__all__ = ["GATEWAY", "chat_completions", "healthz", "list_models", "metrics", "readyz"]

GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
# Why this endpoint: the routing rule (e.g. "default (1/price² weighted)", "auto:code").
ROUTE_HEADER = "X-Edgeproxy-Route"
_JSON = "application/json"


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


def validate_chat(req: ChatRequest, gw: Gateway) -> None:
    if len(req.messages) > gw.cfg.server.max_messages:
        raise BadRequest(
            f"too many messages: {len(req.messages)} (at most {gw.cfg.server.max_messages})"
        )
    if not req.model and not req.models:
        raise BadRequest("request names no model: set `model` or `models`")


def app_name(request: web.Request) -> str | None:
    h = request.headers
    return h.get("X-Title") or h.get("X-OpenRouter-Title") or h.get("HTTP-Referer")


def estimate_prompt_tokens(body: bytes) -> int:
    # About 4 bytes of JSON a token: good enough to filter on context length and reserve credits
    # before the upstream says the real count.
    return len(body) // 4


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


def fit_context(
    gw: Gateway, req: ChatRequest, body: bytes, prompt_tokens: int
) -> tuple[bytes, int, dict[str, Any] | None]:
    """A prompt over the model's context is a 400 naming both numbers, unless the request asks
    for `transforms: ["middle-out"]`, which drops the middle of the conversation to fit."""
    if not req.model:
        return body, prompt_tokens, None
    entry, _ = gw.routes.resolve(req.model)
    max_tokens = req.max_completion_tokens or req.max_tokens or 0
    context = max(e.context_length for e in entry.endpoints)
    if prompt_tokens + max_tokens <= context:
        return body, prompt_tokens, None
    if not req.transforms or "middle-out" not in req.transforms:
        raise BadRequest(
            f"this request needs about {prompt_tokens + max_tokens} tokens (~{prompt_tokens} "
            f"prompt + {max_tokens} max_tokens) but {entry.id} has a context of {context}; "
            'shorten it or send transforms: ["middle-out"]',
            {"context_length": context, "requested_tokens": prompt_tokens + max_tokens},
        )
    doc = request_dict(body)
    doc["messages"] = middle_out(doc["messages"], max(1, context - max_tokens))
    body = orjson.dumps(doc)
    trimmed = decode_chat(body)
    req.messages = trimmed.messages
    return body, estimate_tokens(doc["messages"]), doc


async def chat_completions(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    caller = await gw.billing.authenticate(request.headers.get("Authorization"))
    body = await read_body(request, gw)
    req = decode_chat(body)
    validate_chat(req, gw)
    prompt_tokens = estimate_prompt_tokens(body)
    rule = auto_route(gw, req, caller, prompt_tokens) if is_auto(req.model) else ""
    body, prompt_tokens, req_dict = fit_context(gw, req, body, prompt_tokens)
    plan = gw.routes.plan(req, prompt_tokens)
    if rule:
        plan.rule = f"auto:{rule}"
    if all(ep.is_free for ep in plan.endpoints):
        await gw.billing.check_free(caller)
    max_tokens = req.max_completion_tokens or req.max_tokens or 0
    gen = Generation(plan.endpoints[0].model_id, req.stream, app_name(request), caller)
    gen.route = plan.rule
    gen.prompt_estimate = prompt_tokens
    # Reserve the most this request can cost before any upstream is contacted (402 otherwise).
    gen.reservation = await gw.billing.reserve(
        caller, gw.max_cost(caller, plan, prompt_tokens, max_tokens))
    try:
        if req_dict is None and _needs_dict(plan.endpoints):
            req_dict = request_dict(body)
        if req.stream:
            return await stream_chat(request, gw, gen, plan, body, req_dict)
        return await complete_chat(gw, gen, plan, body, req_dict)
    finally:
        gw.billing.release(gen.reservation)


def _needs_dict(endpoints: list[routing.Endpoint]) -> bool:
    return any(e.provider_cfg.protocol != "openai" for e in endpoints)


async def complete_chat(
    gw: Gateway,
    gen: Generation,
    plan: routing.Plan,
    body: bytes,
    req_dict: dict[str, Any] | None,
) -> web.Response:
    errors: list[UpstreamError] = []
    all_degraded = gw.routes.is_degraded(plan.endpoints[0])
    waited = 0.0
    for n, ep in enumerate(plan.endpoints):
        att = gw.prepare(gen, ep, body, req_dict, stream=False)
        try:
            resp = await gw.upstreams.post(ep.provider, att.call)
            try:
                data = await gw.upstreams.read(ep.provider, resp)
            finally:
                resp.release()
            if resp.status >= 300:
                raise gw.status_error(att, resp.status, data, resp.headers)
            out = att.adapter.parse_response(resp.status, data)
        except UpstreamError as err:
            waited += time.perf_counter() - att.started
            gw.failed(att, err)
            errors.append(err)
            if not err.retryable:
                break
            continue
        elapsed = time.perf_counter() - att.started
        waited += elapsed
        usage = gw.finish_usage(gen, att, out.get("usage"), 0)
        gw.succeeded(att, 0.0, elapsed, usage["completion_tokens"])
        if n:
            gw.m_fallbacks.inc((gen.model,))
        out["id"] = gen.id
        out["object"] = "chat.completion"
        out["created"] = gen.created
        out["model"] = gen.model
        out["provider"] = ep.provider
        out["usage"] = usage
        choices = out.get("choices")
        if choices:
            gen.finish_reason = choices[0].get("finish_reason")
            gen.native_finish_reason = choices[0].get("native_finish_reason")
        gen.generation_s = elapsed
        gw.record(gen)
        total = time.perf_counter() - gen.started
        gw.m_overhead.observe(max(0.0, total - waited))
        gw.m_latency.observe(total, (gen.model,))
        gw.m_requests.inc((gen.model, ep.provider, "200"))
        return web.Response(body=orjson.dumps(out), content_type=_JSON,
                            headers={ROUTE_HEADER: gen.route})
    exc = gw.final_error(errors, all_degraded)
    if isinstance(exc, EdgeproxyError):
        gw.m_requests.inc((gen.model, errors[-1].provider, str(exc.status)))
    raise exc


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
            "max_completion_tokens": cheapest.max_output,
            "is_moderated": False,
        },
        "supported_parameters": m.supported_parameters,
    }


async def list_models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    q = request.query
    params = [p for p in q.get("supported_parameters", "").split(",") if p]
    outputs = [p for p in q.get("output_modalities", "").split(",") if p]
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
