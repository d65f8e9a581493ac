"""Chooses the compiled router or its twin, and maps config endpoints to router indices.

The router itself (`_fastroute`) sees only integers: prices in micro-USD per 1M tokens, bitmasks
and indices. This module turns a request's model, variant and `provider` preferences into those
integers once per request, and the router's answer back into Endpoint objects.
"""

from __future__ import annotations

import logging
import os
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .config import Config, EndpointConfig, ModelConfig, ProviderConfig
from .errors import BadRequest, NoEndpoint

if TYPE_CHECKING:
    from .schema import ChatRequest

log = logging.getLogger("edgeproxy.routing")

__all__ = ["EXTENSION", "Endpoint", "ModelEntry", "Plan", "RouteTable", "now_ms"]


def _load_impl() -> tuple[Any, bool, str]:
    if os.environ.get("EDGEPROXY_NO_EXTENSIONS"):
        from . import _fastroute_py

        return _fastroute_py, False, "EDGEPROXY_NO_EXTENSIONS is set"
    try:
        from . import _fastroute  # type: ignore[attr-defined]

        return _fastroute, True, ""
    except ImportError as exc:
        if os.environ.get("EDGEPROXY_REQUIRE_EXTENSIONS") == "1":
            raise ImportError(
                "edgeproxy._fastroute is not built and EDGEPROXY_REQUIRE_EXTENSIONS=1"
            ) from exc
        from . import _fastroute_py

        return _fastroute_py, False, str(exc)


_impl, EXTENSION, FALLBACK_REASON = _load_impl()

# Request parameters an endpoint may or may not support (bit positions of params_mask).
PARAMETERS = (
    "tools",
    "tool_choice",
    "response_format",
    "structured_outputs",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "logprobs",
    "top_logprobs",
    "reasoning",
    "image_input",
)
PARAM_BIT = {name: 1 << i for i, name in enumerate(PARAMETERS)}

_REASONS = {
    _impl.REASON_PROVIDER: "provider.only / provider.ignore / :free",
    _impl.REASON_DATA_COLLECTION: 'provider.data_collection = "deny"',
    _impl.REASON_ZDR: "provider.zdr (zero data retention)",
    _impl.REASON_QUANTIZATION: "provider.quantizations",
    _impl.REASON_MAX_PRICE: "provider.max_price",
    _impl.REASON_CONTEXT: "context length",
    _impl.REASON_PARAMETERS: "supported parameters",
}
_SORTS = {
    None: _impl.SORT_DEFAULT,
    "price": _impl.SORT_PRICE,
    "throughput": _impl.SORT_THROUGHPUT,
    "latency": _impl.SORT_LATENCY,
}
VARIANTS = ("nitro", "floor", "free")
_MICRO = Decimal(1_000_000)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def micro(usd: Decimal) -> int:
    """USD -> integer micro-USD (a price per 1M tokens keeps its unit)."""
    return int((usd * _MICRO).to_integral_value())


class Endpoint:
    """One provider serving one model: what the request path needs to call and bill it."""

    __slots__ = (
        "completion_price",
        "context_length",
        "image_price",
        "index",
        "key",
        "max_output",
        "model_id",
        "parameters",
        "position",
        "prompt_price",
        "provider",
        "provider_cfg",
        "quantization",
        "request_price",
        "upstream_model",
    )

    def __init__(
        self,
        index: int,
        position: int,
        model_id: str,
        model: ModelConfig,
        ep: EndpointConfig,
        prov: ProviderConfig,
    ) -> None:
        self.index = index
        self.position = position
        self.model_id = model_id
        self.provider = ep.provider
        # Names the endpoint the same on every node with the same configuration (health sync).
        self.key = f"{model_id}|{ep.provider}|{ep.model}"
        self.provider_cfg = prov
        self.upstream_model = ep.model
        self.prompt_price = micro(ep.prompt)  # micro-USD per 1M tokens
        self.completion_price = micro(ep.completion)
        self.request_price = micro(ep.request)  # micro-USD per request
        self.image_price = micro(ep.image)  # micro-USD per input image
        self.quantization = ep.quantization
        self.context_length = ep.context_length or model.context_length
        self.max_output = ep.max_output or model.max_output
        self.parameters = frozenset(
            ep.supported_parameters
            if ep.supported_parameters is not None
            else model.supported_parameters
        ) | ({"image_input"} if "image" in model.input_modalities else frozenset())

    @property
    def is_free(self) -> bool:
        return self.prompt_price == 0 and self.completion_price == 0 and self.request_price == 0


class ModelEntry:
    __slots__ = ("all_mask", "cfg", "end", "endpoints", "free_mask", "id", "provider_masks", "start")

    def __init__(self, model_id: str, cfg: ModelConfig, start: int) -> None:
        self.id = model_id
        self.cfg = cfg
        self.start = start
        self.end = start
        self.endpoints: list[Endpoint] = []
        self.provider_masks: dict[str, int] = {}
        self.all_mask = 0
        self.free_mask = 0


class Plan:
    """The ordered attempts for one request, and why they were chosen."""

    __slots__ = ("endpoints", "rule")

    def __init__(self, endpoints: list[Endpoint], rule: str) -> None:
        self.endpoints = endpoints
        self.rule = rule


class RouteTable:
    """All models' endpoints in one router; rebuilt and swapped whole when the config changes."""

    def __init__(self, cfg: Config, seed: int | None = None) -> None:
        r = cfg.routing
        if seed is None:
            seed = r.seed if r.seed is not None else int.from_bytes(os.urandom(8), "little")
        self.models: dict[str, ModelEntry] = {}
        self.endpoints: list[Endpoint] = []
        self._quant_ids: dict[str, int] = {"unknown": 0}
        self.shared: dict[tuple[int, str], list[float]] | None = None
        self.shared_cool: dict[str, int] = {}
        self.applied: dict[tuple[int, str, str], tuple[int, int]] = {}
        for model_id, mcfg in cfg.models.items():
            if not mcfg.enabled:
                continue
            entry = ModelEntry(model_id, mcfg, len(self.endpoints))
            for pos, ep in enumerate(mcfg.endpoints):
                e = Endpoint(
                    len(self.endpoints), pos, model_id, mcfg, ep, cfg.providers[ep.provider]
                )
                self.endpoints.append(e)
                entry.endpoints.append(e)
                key = _norm(e.provider)
                entry.provider_masks[key] = entry.provider_masks.get(key, 0) | (1 << pos)
                if e.is_free:
                    entry.free_mask |= 1 << pos
            entry.end = len(self.endpoints)
            entry.all_mask = (1 << len(entry.endpoints)) - 1
            self.models[model_id] = entry
        self.by_key = {e.key: e for e in self.endpoints}
        self.router = _impl.Router(
            max(1, len(self.endpoints)),
            seed=seed,
            window_buckets=max(1, r.window_s * 1000 // r.bucket_ms),
            bucket_ms=r.bucket_ms,
            min_failures=r.min_failures,
            failure_pct=r.failure_pct,
            ewma_alpha=r.ewma_alpha,
        )
        for model_id, entry in self.models.items():
            mcfg = cfg.models[model_id]
            for e, ep in zip(entry.endpoints, mcfg.endpoints, strict=True):
                prov = e.provider_cfg
                flags = (_impl.FLAG_COLLECTS_DATA if prov.data_collection == "allow" else 0) | (
                    _impl.FLAG_ZDR if prov.zdr else 0
                )
                mask = 0
                for p in e.parameters:
                    mask |= PARAM_BIT.get(p, 0)
                self.router.set_endpoint(
                    e.index,
                    e.prompt_price,
                    e.completion_price,
                    e.request_price,
                    e.context_length,
                    self._quant_id(e.quantization),
                    mask,
                    flags,
                    float(ep.throughput),
                    float(ep.latency_ms),
                )

    def _quant_id(self, name: str) -> int:
        qid = self._quant_ids.get(name)
        if qid is None:
            qid = len(self._quant_ids)
            if qid >= 64:
                raise ValueError("at most 63 distinct quantizations")
            self._quant_ids[name] = qid
        return qid

    # -- request side -----------------------------------------------------------------------

    def resolve(self, model_id: str) -> tuple[ModelEntry, str | None]:
        entry = self.models.get(model_id)
        if entry is not None:
            return entry, None
        base, sep, variant = model_id.rpartition(":")
        if sep and base in self.models:
            if variant not in VARIANTS:
                raise BadRequest(
                    f"invalid model variant ':{variant}' (expected one of "
                    f"{', '.join(':' + v for v in VARIANTS)})",
                    {"model": model_id},
                )
            return self.models[base], variant
        raise BadRequest(f"{model_id!r} is not a valid model ID", {"model": model_id})

    def plan(self, req: ChatRequest, prompt_tokens: int, now: int | None = None) -> Plan:
        """Order the endpoints to attempt; raise NoEndpoint (404) naming the emptying filter."""
        ids = [req.model] if req.model else []
        ids += [m for m in req.models or () if m not in ids]
        if not ids:
            raise BadRequest("request names no model: set `model` or `models`")
        prefs = req.provider
        used = _used_parameters(req)
        out: list[Endpoint] = []
        first_error: NoEndpoint | None = None
        now = now_ms() if now is None else now
        rule = ""
        for model_id in ids:
            entry, variant = self.resolve(model_id)
            sort = _SORTS[prefs.sort if prefs else None]
            allow = entry.all_mask
            if variant == "nitro":
                sort = _impl.SORT_THROUGHPUT
            elif variant == "floor":
                sort = _impl.SORT_PRICE
            elif variant == "free":
                if not entry.free_mask:
                    raise NoEndpoint(
                        f"model {entry.id!r} has no free endpoint (:free)", {"model": model_id}
                    )
                allow = entry.free_mask
            order: tuple[int, ...] = ()
            deny = zdr = False
            quant_mask = 0
            max_p = max_c = -1
            allow_fallbacks = True
            required = used & PARAM_BIT["tools"] | used & PARAM_BIT["image_input"]
            if prefs is not None:
                masks = entry.provider_masks
                if prefs.only is not None:
                    allow &= _mask_of(masks, prefs.only)
                if prefs.ignore:
                    allow &= ~_mask_of(masks, prefs.ignore)
                if prefs.order:
                    order = tuple(
                        e.position for name in prefs.order for e in entry.endpoints
                        if _norm(e.provider) == _norm(name)
                    )
                deny = prefs.data_collection == "deny"
                zdr = bool(prefs.zdr)
                if prefs.quantizations:
                    for q in prefs.quantizations:
                        qid = self._quant_ids.get(q)
                        if qid is not None:
                            quant_mask |= 1 << qid
                    if not quant_mask:
                        quant_mask = 1 << 63  # names no known quantization: matches nothing
                if prefs.max_price is not None:
                    if prefs.max_price.prompt is not None:
                        max_p = int(prefs.max_price.prompt * 1_000_000)
                    if prefs.max_price.completion is not None:
                        max_c = int(prefs.max_price.completion * 1_000_000)
                if prefs.require_parameters:
                    required = used
                allow_fallbacks = prefs.allow_fallbacks
            max_tokens = req.max_completion_tokens or req.max_tokens or 0
            picked = self.router.select(
                entry.start,
                entry.end,
                now,
                allow,
                deny,
                zdr,
                quant_mask,
                max_p,
                max_c,
                prompt_tokens + max_tokens,
                required,
                sort,
                order,
                allow_fallbacks,
            )
            if not picked:
                if first_error is None:
                    reason = _REASONS.get(self.router.empty_reason, "routing requirements")
                    detail = ""
                    if self.router.empty_reason == _impl.REASON_CONTEXT:
                        detail = (
                            f" (the request needs {prompt_tokens + max_tokens} tokens: "
                            f"~{prompt_tokens} prompt + {max_tokens} max_tokens)"
                        )
                    elif self.router.empty_reason == _impl.REASON_PARAMETERS:
                        names = [p for p in PARAMETERS if required & PARAM_BIT[p]]
                        detail = f" (the request uses {', '.join(names)})"
                    first_error = NoEndpoint(
                        f"no endpoint of model {entry.id!r} meets the request's requirement: "
                        f"{reason}{detail}",
                        {"model": entry.id, "requirement": reason},
                    )
                continue
            if not rule:
                rule = _rule_name(order, sort, variant)
            out.extend(entry.endpoints[i - entry.start] for i in picked)
        if not out:
            assert first_error is not None
            raise first_error
        return Plan(out, rule)

    # -- feedback from attempts ----------------------------------------------------------------

    def success(self, ep: Endpoint, ttft_ms: float = 0.0, tokens_per_s: float = 0.0) -> None:
        now = now_ms()
        self.router.record_success(ep.index, now)
        if ttft_ms > 0 or tokens_per_s > 0:
            self.router.observe(ep.index, ttft_ms, tokens_per_s)
        if self.shared is not None:
            v = self._outcome(ep, now)
            v[0] += 1
            if ttft_ms > 0:
                v[2] += ttft_ms
                v[3] += 1
            if tokens_per_s > 0:
                v[4] += tokens_per_s
                v[5] += 1

    def failure(self, ep: Endpoint, retry_after_s: float = 0.0) -> None:
        now = now_ms()
        self.router.record_failure(ep.index, now)
        if retry_after_s > 0:
            self.router.cool_down(ep.index, now + int(retry_after_s * 1000))
        if self.shared is not None:
            self._outcome(ep, now)[1] += 1
            if retry_after_s > 0:
                self.shared_cool[ep.key] = now + int(retry_after_s * 1000)

    # -- sharing health with other nodes (state = redis) -----------------------------------------

    def share(self) -> None:
        """Start collecting this node's outcomes for the Redis health sync."""
        self.shared = {}

    def _outcome(self, ep: Endpoint, now: int) -> list[float]:
        assert self.shared is not None
        k = (now // 1000, ep.key)
        v = self.shared.get(k)
        if v is None:
            v = self.shared[k] = [0, 0, 0.0, 0, 0.0, 0]
        return v

    def apply_remote(self, key: str, second: int, ok: int, fail: int, ttft: float,
                     tps: float) -> None:
        """Replay another node's outcomes (of one endpoint, one second) into the local router."""
        ep = self.by_key.get(key)
        if ep is None:
            return
        at = min(second * 1000 + 500, now_ms())
        for _ in range(max(0, ok)):
            self.router.record_success(ep.index, at)
        for _ in range(max(0, fail)):
            self.router.record_failure(ep.index, at)
        if ttft > 0 or tps > 0:
            self.router.observe(ep.index, ttft, tps)

    def apply_cooldown(self, key: str, until: int) -> None:
        ep = self.by_key.get(key)
        if ep is not None and until > now_ms():
            self.router.cool_down(ep.index, until)

    def is_degraded(self, ep: Endpoint, now: int | None = None) -> bool:
        return bool(self.router.is_degraded(ep.index, now_ms() if now is None else now))


def _norm(name: str) -> str:
    return name.strip().lower()


def _mask_of(masks: dict[str, int], names: list[str]) -> int:
    m = 0
    for n in names:
        m |= masks.get(_norm(n), 0)
    return m


def _rule_name(order: tuple[int, ...], sort: int, variant: str | None) -> str:
    if order:
        return "provider.order"
    if variant == "nitro":
        return ":nitro (throughput)"
    if variant == "floor":
        return ":floor (price)"
    if sort == _impl.SORT_PRICE:
        return "sort=price"
    if sort == _impl.SORT_THROUGHPUT:
        return "sort=throughput"
    if sort == _impl.SORT_LATENCY:
        return "sort=latency"
    return "default (1/price² weighted)"


def _used_parameters(req: ChatRequest) -> int:
    used = 0
    if req.tools:
        used |= PARAM_BIT["tools"]
    if req.tool_choice is not None:
        used |= PARAM_BIT["tool_choice"]
    if req.response_format is not None:
        used |= PARAM_BIT["response_format"]
        if req.response_format.get("type") == "json_schema":
            used |= PARAM_BIT["structured_outputs"]
    for name in ("temperature", "top_p", "stop", "seed", "frequency_penalty", "presence_penalty",
                 "logprobs", "top_logprobs"):
        if getattr(req, name) is not None:
            used |= PARAM_BIT[name]
    if req.max_tokens is not None or req.max_completion_tokens is not None:
        used |= PARAM_BIT["max_tokens"]
    for m in req.messages:
        if isinstance(m.content, list):
            for part in m.content:
                if part.get("type") == "image_url":
                    used |= PARAM_BIT["image_input"]
                    break
    return used
