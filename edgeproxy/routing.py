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

from .billing.pricing import Prices
from .config import Config, EndpointConfig, ModelConfig, ProviderConfig
from .errors import BadRequest, NoEndpoint
from .history import History
from .reasoning import asked as reasoning_asked

if TYPE_CHECKING:
    from collections.abc import Callable

    from .schema import ChatRequest, Percentiles, ProviderPrefs

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
VARIANTS = ("nitro", "floor", "free", "thinking")
# OpenRouter features the gateway does not have: a clear 400, never silently ignored (SPEC §1.1).
# (openrouter.ai/docs/guides/routing/model-variants/online, exacto, extended)
_WEB_SEARCH = (
    "web search is not offered by this gateway (the `:online` variant, plugins: [{\"id\": "
    "\"web\"}]): it runs no search engine; drop it, or give the model a search tool of your own"
)
NOT_OFFERED = {
    "online": _WEB_SEARCH,
    "exacto": "quality-ranked provider sorting (`:exacto`, provider.sort \"exacto\") is not "
              "offered by this gateway; sort by price, throughput or latency",
    "extended": "extended-context versions (`:extended`) are not offered by this gateway",
}
_ORDER_ONLY = "provider.order with allow_fallbacks false (no provider it names serves the model)"
_NOT_DISTILLABLE = "provider.enforce_distillable_text (none of its endpoints is distillable)"
# Plugins the gateway honours: context-compression is OpenRouter's new name of the middle-out
# transform (openrouter.ai/docs/guides/features/message-transforms).
PLUGINS = ("context-compression",)
# OpenRouter's sampling parameters beyond OpenAI's API (top_k, ...): OpenAI answers 400 to them,
# so an openai-protocol endpoint gets one only when its supported_parameters list it, as
# OpenRouter forwards "only the parameters they support" (ProviderPreferences.require_parameters).
OPTIONAL_SAMPLING = ("top_k", "top_a", "min_p", "repetition_penalty")
# (1 - 0.3)^16 < 0.4 %: more samples of one mean would change an EWMA by nothing visible.
_REPLAY_SAMPLES = 16
_MICRO = Decimal(1_000_000)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def micro(usd: Decimal) -> int:
    """USD -> integer micro-USD (a price per 1M tokens keeps its unit)."""
    return int((usd * _MICRO).to_integral_value())


def prices_of(ep: EndpointConfig) -> Prices:
    """An endpoint's prices in integers; unset cache prices are the prompt price (SPEC §5.3: a
    provider without cache pricing bills cached tokens as prompt tokens)."""
    prompt = micro(ep.prompt)
    return Prices(
        prompt, micro(ep.completion), micro(ep.request),
        prompt if ep.cache_read is None else micro(ep.cache_read),
        prompt if ep.cache_write is None else micro(ep.cache_write),
    )


class Endpoint:
    """One provider serving one model: what the request path needs to call and bill it."""

    __slots__ = (
        "completion_price",
        "context_length",
        "drop",
        "image_price",
        "index",
        "key",
        "max_output",
        "model_id",
        "parameters",
        "position",
        "prices",
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
        self.prices = prices_of(ep)  # what billing reads
        self.prompt_price = self.prices.prompt  # micro-USD per 1M tokens
        self.completion_price = self.prices.completion
        self.request_price = self.prices.request  # micro-USD per request
        self.image_price = micro(ep.image)  # micro-USD per input image
        self.quantization = ep.quantization
        self.context_length = ep.context_length or model.context_length
        self.max_output = ep.max_output or model.max_output
        self.parameters = frozenset(
            ep.supported_parameters
            if ep.supported_parameters is not None
            else model.supported_parameters
        ) | ({"image_input"} if "image" in model.input_modalities else frozenset())
        # Request members an openai-protocol upstream must not get from this endpoint.
        self.drop = frozenset(p for p in OPTIONAL_SAMPLING if p not in self.parameters)

    @property
    def is_free(self) -> bool:
        return self.prompt_price == 0 and self.completion_price == 0 and self.request_price == 0


class ModelEntry:
    __slots__ = ("all_mask", "cfg", "distillable_mask", "end", "endpoints", "free_mask", "id",
                 "provider_masks", "start")

    def __init__(self, model_id: str, cfg: ModelConfig, start: int) -> None:
        self.id = model_id
        self.cfg = cfg
        self.start = start
        self.end = start
        self.endpoints: list[Endpoint] = []
        self.provider_masks: dict[str, int] = {}
        self.all_mask = 0
        self.free_mask = 0
        self.distillable_mask = 0  # positions of endpoints that are distillable (config)


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
        self.applied: dict[tuple[int, str, str], tuple[int, ...]] = {}
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
                if mcfg.distillable if ep.distillable is None else ep.distillable:
                    entry.distillable_mask |= 1 << pos
            entry.end = len(self.endpoints)
            entry.all_mask = (1 << len(entry.endpoints)) - 1
            self.models[model_id] = entry
        self.by_key = {e.key: e for e in self.endpoints}
        self.history = History()  # what the endpoints API reports; routing never reads it
        self.router = _impl.Router(
            max(1, len(self.endpoints)),
            seed=seed,
            window_buckets=max(1, r.window_s * 1000 // r.bucket_ms),
            bucket_ms=r.bucket_ms,
            min_failures=r.min_failures,
            failure_pct=r.failure_pct,
            ewma_alpha=r.ewma_alpha,
            consecutive_failures=r.consecutive_failures,
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

    def _find(self, model_id: str) -> tuple[ModelEntry, str | None] | None:
        """The model and variant an id names; None when no such model exists. BadRequest for a
        variant the gateway does not have, whether or not the model exists."""
        entry = self.models.get(model_id)
        if entry is not None:
            return entry, None
        base, sep, variant = model_id.rpartition(":")
        if not sep:
            return None
        if variant in NOT_OFFERED:
            raise BadRequest(NOT_OFFERED[variant], {"model": model_id})
        if base not in self.models:
            return None
        if variant not in VARIANTS:
            raise BadRequest(
                f"invalid model variant ':{variant}' (expected one of "
                f"{', '.join(':' + v for v in VARIANTS)})",
                {"model": model_id},
            )
        return self.models[base], variant

    def resolve(self, model_id: str) -> tuple[ModelEntry, str | None]:
        found = self._find(model_id)
        if found is None:
            raise _unknown(model_id)
        return found

    def primary(self, req: ChatRequest) -> ModelEntry:
        """The request's first model that exists (`model`, then `models`, SPEC §2.5)."""
        ids = _model_ids(req)
        for model_id in ids:
            found = self._find(model_id)
            if found is not None:
                return found[0]
        raise _unknown(ids[0])

    def plan(self, req: ChatRequest, prompt_tokens: int, now: int | None = None) -> Plan:
        """Order the endpoints to attempt; raise NoEndpoint (404) naming the emptying filter.

        Each model of the request (`model`, then `models`) adds its endpoints after the previous
        one's; one that does not exist is skipped while another exists (SPEC §2.5). With
        provider.sort's partition "none" (or the deprecated route "sort") the endpoints of all
        of them are ranked together instead (_rank_across). The `provider` object is
        OpenRouter's (schema.ProviderPrefs); the performance preferences deprioritise the
        endpoints that miss them, never exclude them (_performance, _fastroute select).
        """
        ids = _model_ids(req)
        prefs = req.provider
        asked = _used_parameters(req)
        by, partition = _sort_of(prefs, req.route)
        max_ttft, min_tps = _performance(prefs)
        allow_fallbacks = prefs is None or prefs.allow_fallbacks is not False
        out: list[Endpoint] = []
        named: set[int] = set()  # provider.order's endpoints (global indices)
        served = 0  # models that gave endpoints
        first_error: NoEndpoint | None = None
        now = now_ms() if now is None else now
        rule = ""
        for model_id in ids:
            found = self._find(model_id)
            if found is None:
                continue
            entry, variant = found
            used = asked
            sort = _SORTS[by]
            allow = entry.all_mask
            if variant == "nitro":
                sort = _impl.SORT_THROUGHPUT
            elif variant == "floor":
                sort = _impl.SORT_PRICE
            elif variant == "thinking":
                used |= PARAM_BIT["reasoning"]  # reasoning on (gateway.prepare), for this model
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
            emptied = ""  # the requirement a filter applied here (not by the router) emptied
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
                    if not order and not allow_fallbacks and allow:
                        allow, emptied = 0, _ORDER_ONLY
                deny = prefs.data_collection == "deny"
                zdr = bool(prefs.zdr)
                if prefs.quantizations:
                    for q in prefs.quantizations:
                        qid = self._quant_ids.get(q)
                        if qid is not None:
                            quant_mask |= 1 << qid
                    if not quant_mask:
                        quant_mask = 1 << 63  # names no known quantization: matches nothing
                mp = prefs.max_price
                if mp is not None:
                    max_p, max_c = _micro_cap(mp.prompt), _micro_cap(mp.completion)
                    if allow and (mp.request is not None or mp.image is not None):
                        cap_r, cap_i = _micro_cap(mp.request), _micro_cap(mp.image)
                        for e in entry.endpoints:
                            if not (cap_r < 0 or e.request_price <= cap_r) or not (
                                    cap_i < 0 or e.image_price <= cap_i):
                                allow &= ~(1 << e.position)
                        if not allow:
                            emptied = _REASONS[_impl.REASON_MAX_PRICE]
                if prefs.enforce_distillable_text and allow:
                    allow &= entry.distillable_mask
                    if not allow:
                        emptied = _NOT_DISTILLABLE
                if prefs.require_parameters:
                    required = used
            max_tokens = req.max_completion_tokens or req.max_tokens or 0
            picked = [] if emptied else self.router.select(
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
                max_ttft,
                min_tps,
            )
            if not picked:
                if first_error is None:
                    code = _impl.REASON_NONE if emptied else self.router.empty_reason
                    reason = emptied or _REASONS.get(code, "routing requirements")
                    detail = ""
                    if code == _impl.REASON_CONTEXT:
                        detail = (
                            f" (the request needs {prompt_tokens + max_tokens} tokens: "
                            f"~{prompt_tokens} prompt + {max_tokens} max_tokens)"
                        )
                    elif code == _impl.REASON_PARAMETERS:
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
            named.update(entry.start + p for p in order)
            served += 1
        if not out:
            raise first_error or _unknown(ids[0])
        if partition == "none" and served > 1:
            self._rank_across(out, named, _SORTS[by], now, max_ttft, min_tps)
            rule += ", partition=none"
        if max_ttft > 0 or min_tps > 0:
            rule += ", preferred performance first"
        if not allow_fallbacks:
            rule += ", no fallbacks"
        return Plan(out, rule)

    def stick(self, plan: Plan, key: str, now: int | None = None) -> bool:
        """Sticky routing (SPEC §2.6): the endpoint named `key` goes first when the plan holds it
        (it meets the request's filters) and it is stable; the route says so. False otherwise:
        the plan stays as it was built."""
        eps = plan.endpoints
        for i, e in enumerate(eps):
            if e.key == key:
                if self.is_degraded(e, now):
                    return False
                if i:
                    eps.insert(0, eps.pop(i))
                plan.rule += ", sticky"
                return True
        return False

    def _rank_across(self, out: list[Endpoint], named: set[int], sort: int, now: int,
                     max_ttft: float, min_tps: float) -> None:
        """Partition "none": the endpoints of all the request's models ranked together the way
        select() ranks one model's: stable before degraded, in each the named ones
        (provider.order) first, then those that meet the performance preferences, then by the
        sort key of provider.sort (the router's own: price; throughput or latency, unknown last,
        ties by price). Python's sort is stable, so ties and the default sort keep the model-by-model order."""
        r = self.router

        def key(e: Endpoint) -> tuple[Any, ...]:
            i = e.index
            if i in named:
                return (r.is_degraded(i, now), 0)
            price = e.prompt_price + e.completion_price
            k: tuple[Any, ...] = ()
            if sort == _impl.SORT_PRICE:
                k = (price,)
            elif sort == _impl.SORT_THROUGHPUT:
                tps = r.throughput(i)
                k = (0, -tps, price) if tps > 0 else (1, 0.0, price)
            elif sort == _impl.SORT_LATENCY:
                ttft = r.latency(i)
                k = (0, ttft, price) if ttft > 0 else (1, 0.0, price)
            return (r.is_degraded(i, now), 1, not r.meets_preferences(i, max_ttft, min_tps), k)

        out.sort(key=key)

    # -- feedback from attempts ----------------------------------------------------------------

    def success(self, ep: Endpoint, ttft_ms: float = 0.0, tokens_per_s: float = 0.0) -> None:
        now = now_ms()
        self.router.record_success(ep.index, now)
        self.history.outcome(ep.index, now, ok=1)
        if ttft_ms > 0 or tokens_per_s > 0:
            self.router.observe(ep.index, ttft_ms, tokens_per_s)
            self.history.sample(ep.index, now, ttft_ms, tokens_per_s)
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
        if retry_after_s <= 0:  # (a 429 carries one: uptime leaves rate limits out)
            self.history.outcome(ep.index, now, failed=1)
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

    def apply_remote(self, key: str, second: int, ok: int, fail: int, ttft_ms_sum: float,
                     ttft_n: int, tps_sum: float, tps_n: int) -> None:
        """Replay what another node added to one endpoint's second into the local router: its
        outcomes, and the mean of its TTFT and tokens/s samples fed as that many EWMA samples
        (at most _REPLAY_SAMPLES: past those the older value weighs nothing anyway)."""
        ep = self.by_key.get(key)
        if ep is None:
            return
        i = ep.index
        at = min(second * 1000 + 500, now_ms())
        for _ in range(max(0, ok)):
            self.router.record_success(i, at)
        for _ in range(max(0, fail)):
            self.router.record_failure(i, at)
        # (Another node's failures include its rate-limited attempts: they count against uptime.)
        self.history.outcome(i, at, max(0, ok), max(0, fail))
        self.history.sample(i, at, ttft_ms_sum / ttft_n if ttft_n > 0 else 0.0,
                            tps_sum / tps_n if tps_n > 0 else 0.0)
        if ttft_n > 0 and ttft_ms_sum > 0:
            for _ in range(min(ttft_n, _REPLAY_SAMPLES)):
                self.router.observe(i, ttft_ms_sum / ttft_n, 0.0)
        if tps_n > 0 and tps_sum > 0:
            for _ in range(min(tps_n, _REPLAY_SAMPLES)):
                self.router.observe(i, 0.0, tps_sum / tps_n)

    def apply_cooldown(self, key: str, until: int) -> None:
        ep = self.by_key.get(key)
        if ep is not None and until > now_ms():
            self.router.cool_down(ep.index, until)

    def is_degraded(self, ep: Endpoint, now: int | None = None) -> bool:
        return bool(self.router.is_degraded(ep.index, now_ms() if now is None else now))


def _norm(name: str) -> str:
    return name.strip().lower()


def _model_ids(req: ChatRequest) -> list[str]:
    ids = [req.model] if req.model else []
    ids += [m for m in req.models or () if m not in ids]
    if not ids:
        raise BadRequest("request names no model: set `model` or `models`")
    return ids


def _unknown(model_id: str) -> BadRequest:
    return BadRequest(f"{model_id!r} is not a valid model ID", {"model": model_id})


def check_plugins(req: ChatRequest) -> None:
    """A plugin the gateway does not offer is a 400 that says so, never silently ignored."""
    for plugin in req.plugins or ():
        if plugin.enabled is False or plugin.id in PLUGINS:
            continue
        if plugin.id == "web":
            raise BadRequest(_WEB_SEARCH, {"plugin": "web"})
        raise BadRequest(
            f"the {plugin.id!r} plugin is not offered by this gateway (it offers: "
            f"{', '.join(PLUGINS)}); drop it or send it with \"enabled\": false",
            {"plugin": plugin.id},
        )


def _sort_of(prefs: ProviderPrefs | None, route: str | None) -> tuple[str | None, str]:
    """provider.sort, a string or {by, partition}, as (by, partition). The partition is "model"
    unless the object or the deprecated top-level route "sort" says "none"."""
    sort = prefs.sort if prefs is not None else None
    partition = "none" if route == "sort" else "model"
    if sort is None or isinstance(sort, str):
        by = sort
    else:
        by = sort.by
        partition = sort.partition or partition
    if by == "exacto":
        raise BadRequest(NOT_OFFERED["exacto"], {"sort": by})
    return by, partition


def _performance(prefs: ProviderPrefs | None) -> tuple[float, float]:
    """provider.preferred_max_latency (seconds) and preferred_min_throughput (tokens/s) as the
    bounds select() holds the router's EWMAs to: time to first token in ms, tokens per second
    (0: unset). OpenRouter compares each percentile cutoff with that percentile of a 5-minute
    window; the gateway measures one EWMA per endpoint, not a distribution, so every cutoff given
    (a bare number is OpenRouter's p50) is compared with that same EWMA and all must hold: the
    tightest decides. An EWMA is a recency-weighted mean: for a latency with a slow tail it sits
    above the median, so a p50 cutoff is a little stricter here, and p90 / p99 cutoffs are looser
    (the tail itself is not seen)."""
    if prefs is None:
        return 0.0, 0.0
    return (_bound(prefs.preferred_max_latency, min) * 1000.0,
            _bound(prefs.preferred_min_throughput, max))


def _bound(pref: float | Percentiles | None, tightest: Callable[[list[float]], float]) -> float:
    if pref is None:
        return 0.0
    if isinstance(pref, (int, float)):
        return float(pref)
    cutoffs = [v for v in (pref.p50, pref.p75, pref.p90, pref.p99) if v is not None]
    return tightest(cutoffs) if cutoffs else 0.0


def _micro_cap(usd: Decimal | None) -> int:
    """A max_price amount in micro-USD (cut down to a whole one: prices are whole); -1: none."""
    return -1 if usd is None else int(usd * _MICRO)


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
    if reasoning_asked(req):
        used |= PARAM_BIT["reasoning"]
    for m in req.messages:
        if isinstance(m.content, list):
            for part in m.content:
                if part.get("type") == "image_url":
                    used |= PARAM_BIT["image_input"]
                    break
    return used
