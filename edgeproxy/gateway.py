"""The gateway's core state, independent of HTTP: config, route table, upstream sessions, adapters
and metrics. The HTTP face (`app`, `handlers`, `streaming`) calls into it; it imports none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from . import routing
from .billing.fees import byok_fee
from .billing.ledger import GenerationRecord, Ledger
from .billing.pricing import charge_pico, cost_json, micro_ceil
from .billing.service import Billing, Caller, Reservation
from .billing.store import open_driver
from .config import Config
from .errors import (
    BadRequest,
    PayloadTooLarge,
    RateLimited,
    Unavailable,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from .metrics import Counter, Gauge, Histogram, Registry
from .protocols import adapter_for
from .protocols.base import Adapter, Embedder, Forwarder, Target, UpstreamCall
from .routing import Endpoint, Plan, RouteTable
from .state.redis import RedisState
from .upstream import Upstreams

if TYPE_CHECKING:
    from .ingress.base import Decoded

__all__ = ["Attempt", "Gateway", "Generation"]

# Upstream answers that are the client's fault: relayed, not retried, not held against the provider.
_CLIENT_FAULT = {400: 400, 413: 413, 422: 400}


# Generation ids: a random prefix per process and a counter, unique across workers and nodes
# without a syscall per request (ids are not secrets: a generation is shown only to its owner).
_GEN_PREFIX = secrets.token_hex(6)
_gen_counter = itertools.count(1)


class Generation:
    """What the gateway knows about one request while it runs: the seed of the ledger record."""

    __slots__ = (
        "app",
        "caller",
        "cancelled",
        "cost_micro",
        "created",
        "echo",
        "endpoint",
        "estimated",
        "finish_reason",
        "generation_s",
        "id",
        "is_byok",
        "model",
        "native_finish_reason",
        "prompt_estimate",
        "provider",
        "reservation",
        "route",
        "started",
        "streamed",
        "ttft_s",
        "usage",
    )

    def __init__(self, model: str, streamed: bool, app: str | None, caller: Caller) -> None:
        self.created = int(time.time())
        self.id = f"gen-{self.created}-{_GEN_PREFIX}{next(_gen_counter):x}"
        self.model = model
        self.streamed = streamed
        self.app = app
        self.started = time.perf_counter()
        self.endpoint: Endpoint | None = None
        self.provider = ""  # of the attempt being made, then of the one that served
        self.echo: dict[str, Any] | None = None  # what the client's dialect repeats back
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.native_finish_reason: str | None = None
        self.cancelled = False
        self.caller = caller
        self.reservation: Reservation | None = None
        self.cost_micro = 0
        self.is_byok = False
        self.estimated = False
        self.route = ""
        self.ttft_s = 0.0
        self.generation_s = 0.0
        self.prompt_estimate = 0


class Attempt:
    """One try at one endpoint: its adapter, the prepared upstream call."""

    __slots__ = ("adapter", "call", "endpoint", "is_byok", "parse", "started")

    def __init__(
        self, endpoint: Endpoint, adapter: Adapter, call: UpstreamCall,
        parse: Callable[[int, bytes], dict[str, Any]], is_byok: bool,
    ) -> None:
        self.endpoint = endpoint
        self.adapter = adapter
        self.call = call
        self.parse = parse  # a whole 2xx body -> the canonical result
        self.is_byok = is_byok
        self.started = time.perf_counter()


class Gateway:
    def __init__(self, cfg: Config, seed: int | None = None) -> None:
        self.cfg = cfg
        self.routes = RouteTable(cfg, seed=seed)
        # The auto router names only models this gateway can serve.
        self.auto = cfg.auto.restricted(set(self.routes.models))
        self.upstreams = Upstreams(cfg.providers)
        self._keys = {name: p.api_key() for name, p in cfg.providers.items()}
        self.shared = (RedisState(cfg.storage.state) if cfg.storage.state.startswith("redis")
                       else None)
        self.billing = Billing(Ledger(open_driver(cfg.storage.ledger)), cfg.billing,
                               cfg.server.auth, self.shared)
        self._sync: asyncio.Task[None] | None = None
        self.metrics = m = Registry()
        self.m_requests = m.add(Counter(
            "edgeproxy_requests_total", "Requests by model, provider and status",
            ("model", "provider", "status")))
        self.m_attempts = m.add(Counter(
            "edgeproxy_upstream_attempts_total", "Upstream attempts by provider and outcome",
            ("provider", "outcome")))
        self.m_fallbacks = m.add(Counter(
            "edgeproxy_fallbacks_total", "Requests served by an endpoint other than the first",
            ("model",)))
        self.m_overhead = m.add(Histogram(
            "edgeproxy_gateway_overhead_seconds",
            "Time spent in the gateway itself (total minus time waiting on upstreams)"))
        self.m_ttft = m.add(Histogram(
            "edgeproxy_time_to_first_token_seconds", "Time to first upstream byte of a stream",
            ("provider",)))
        self.m_latency = m.add(Histogram(
            "edgeproxy_request_duration_seconds", "Total request latency", ("model",)))
        self.m_spent = m.add(Counter(
            "edgeproxy_credits_spent_usd", "USD charged for generations", ("model",)))
        m.add(Gauge(
            "edgeproxy_router_compiled",
            "1 when the compiled router (_fastroute) is in use, 0 on the pure-Python fallback",
            fn=lambda: {(): 1.0 if routing.EXTENSION else 0.0}))
        m.add(Gauge(
            "edgeproxy_endpoint_degraded", "1 when an endpoint is degraded (tried last)",
            ("model", "provider"), fn=self._degraded_gauge))

    def _degraded_gauge(self) -> dict[tuple[str, ...], float]:
        now = routing.now_ms()
        return {
            (e.model_id, e.provider): 1.0 if self.routes.is_degraded(e, now) else 0.0
            for e in self.routes.endpoints
        }

    async def close(self) -> None:
        if self._sync is not None:
            self._sync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync
        await self.billing.stop()
        if self.shared is not None:
            await self.shared.close()
        await self.upstreams.close()

    # -- attempts -------------------------------------------------------------------------------

    def prepare(self, gen: Generation, ep: Endpoint, req: Decoded, stream: bool) -> Attempt:
        """The upstream call of one attempt: the client's bytes where the endpoint speaks the
        client's own format (only the model rewritten), else the adapter's translation."""
        adapter = adapter_for(ep.provider_cfg.protocol)
        # BYOK: the account's own key for this provider, when it registered one (SPEC §5.4).
        own = gen.caller.byok.get(ep.provider) if gen.caller.byok else None
        target = Target(
            ep.provider_cfg.base_url.rstrip("/"), own or self._keys[ep.provider],
            ep.upstream_model, ep.max_output,
        )
        if req.kind == "embeddings":
            # The plan holds only endpoints whose protocol serves embeddings (handlers).
            emb = cast(Embedder, adapter)
            call = emb.build_embeddings(req.body, target)
            parse = emb.parse_embeddings
        else:
            if req.native == adapter.name:
                call = cast(Forwarder, adapter).forward(req.body, target, stream)
            elif adapter.needs_dict:
                call = adapter.build_request(req.as_dict(), b"", target, stream)
            else:
                call = adapter.build_request(None, req.openai_body(), target, stream)
            parse = adapter.parse_response
        gen.provider = ep.provider
        return Attempt(ep, adapter, call, parse, own is not None)

    def max_cost(self, caller: Caller, plan: Plan, prompt_tokens: int, max_tokens: int,
                 output: bool = True) -> int:
        """The most this request can cost on any endpoint of its plan (micro-USD), SPEC §5.3.
        Without `output` (embeddings) only the input is billed."""
        worst = 0
        for ep in plan.endpoints:
            out = (min(max_tokens, ep.max_output) if max_tokens else ep.max_output) if output else 0
            cost = micro_ceil(charge_pico(prompt_tokens, out, ep.prompt_price,
                                          ep.completion_price, ep.request_price))
            if caller.byok and ep.provider in caller.byok:
                cost = byok_fee(cost, 1, 0)
            worst = max(worst, cost)
        return worst

    async def start(self) -> None:
        if self.shared is not None:
            await self.shared.start()
            self.routes.share()
            self._sync = asyncio.ensure_future(self._sync_health())
        await self.billing.start()

    async def _sync_health(self) -> None:
        """Share endpoint health with the other nodes every `sync_s` (SPEC §8); retry Redis
        while it is down. Routing always reads the local router: this never blocks a request."""
        assert self.shared is not None
        shared, routes = self.shared, self.routes
        window_s = self.cfg.routing.window_s
        keys = [e.key for e in routes.endpoints]
        while True:
            await asyncio.sleep(shared.sync_s)
            if not shared.up and not await shared.ping():
                continue
            assert routes.shared is not None
            await shared.sync_health(routes.shared, routes.shared_cool, routes.apply_remote,
                                     routes.apply_cooldown, window_s, keys, routes.applied)

    def status_error(self, att: Attempt, status: int, data: bytes, headers: Any) -> UpstreamError:
        """A non-2xx upstream answer -> the error to record, retry or relay."""
        name = att.endpoint.provider
        msg, raw = att.adapter.parse_error(status, data)
        status = att.adapter.effective_status(status, raw)
        err = UpstreamStatusError(
            f"{name} answered HTTP {status}: {msg}", name, raw, upstream_status=status
        )
        if status in _CLIENT_FAULT:
            err.retryable = False
        if status == 429:
            err.retry_after = _retry_after(headers.get("Retry-After"))
        return err

    def failed(self, att: Attempt, err: UpstreamError) -> None:
        """Feed one failed attempt to the health window (client-fault answers are not counted)."""
        err.provider = err.provider or att.endpoint.provider
        err.metadata["provider_name"] = att.endpoint.provider
        if err.upstream_status in _CLIENT_FAULT:
            outcome = "client_error"
        else:
            self.routes.failure(att.endpoint, err.retry_after)
            outcome = "timeout" if isinstance(err, UpstreamTimeout) else "error"
        self.m_attempts.inc((att.endpoint.provider, outcome))

    def succeeded(self, att: Attempt, ttft_s: float, gen_s: float, completion_tokens: int) -> None:
        tps = completion_tokens / gen_s if gen_s > 0 and completion_tokens > 0 else 0.0
        self.routes.success(att.endpoint, ttft_s * 1000.0, tps)
        self.m_attempts.inc((att.endpoint.provider, "ok"))

    def final_error(self, errors: list[UpstreamError], all_degraded: bool) -> Exception:
        """What the client sees when every attempt failed (SPEC §1.1)."""
        last = errors[-1]
        if not last.retryable:
            status = _CLIENT_FAULT.get(last.upstream_status, 400)
            exc: Exception = (PayloadTooLarge if status == 413 else BadRequest)(
                last.message, dict(last.metadata)
            )
            return exc
        attempts = [{"provider": e.provider, "error": e.message} for e in errors]
        if all(e.upstream_status == 429 for e in errors):
            wait = min((e.retry_after for e in errors if e.retry_after > 0), default=1.0)
            return RateLimited(
                "every provider of this model is rate limiting; retry later", int(wait + 0.999),
                {"provider_name": last.provider, "raw": last.raw, "attempts": attempts},
            )
        if all_degraded:
            return Unavailable(
                "endpoints exist but none is available now: " + last.message,
                {"provider_name": last.provider, "raw": last.raw, "attempts": attempts},
            )
        if all(isinstance(e, UpstreamTimeout) for e in errors):
            err = UpstreamError(last.message, last.provider, last.raw)
            err.status = 408
            err.metadata["attempts"] = attempts
            return err
        err = UpstreamError(
            last.message if len(errors) == 1
            else f"all {len(errors)} attempts failed; last: {last.message}",
            last.provider, last.raw,
        )
        err.metadata["attempts"] = attempts
        return err

    # -- money ------------------------------------------------------------------------------------

    def finish_usage(
        self, gen: Generation, att: Attempt, usage: dict[str, Any] | None, text_chars: int,
        billable: bool = True,
    ) -> dict[str, Any]:
        """Complete the usage object with `cost` and `is_byok` (SPEC §1.1, §5.3). Not
        `billable`: the attempt generated nothing (cancelled before the upstream answered)."""
        ep = att.endpoint
        gen.endpoint = ep
        gen.model = ep.model_id  # a `models` fallback may have served another model
        if not isinstance(usage, dict) or "prompt_tokens" not in usage:
            # The upstream reported none: an estimate, marked as such (4 characters a token).
            usage = {
                "prompt_tokens": gen.prompt_estimate, "completion_tokens": -(-text_chars // 4),
                "estimated": True,
            }
            gen.estimated = True
        pt = _int(usage.get("prompt_tokens"))
        ct = _int(usage.get("completion_tokens"))
        usage["prompt_tokens"] = pt
        usage["completion_tokens"] = ct
        usage["total_tokens"] = pt + ct
        cost = micro_ceil(charge_pico(pt, ct, ep.prompt_price, ep.completion_price,
                                      ep.request_price)) if billable else 0
        if att.is_byok and billable:
            cost = self.billing.byok_charge(gen.caller, cost)
        gen.cost_micro = cost
        gen.is_byok = att.is_byok
        usage["cost"] = cost_json(cost * 1_000_000)
        usage["is_byok"] = att.is_byok
        gen.usage = usage
        if cost:
            self.m_spent.inc((gen.model,), cost / 1e6)
        return usage

    def record(self, gen: Generation) -> None:
        """Settle the reservation with the real charge and queue the ledger record."""
        ep = gen.endpoint
        usage = gen.usage or {}
        details = usage.get("completion_tokens_details") or {}
        pdetails = usage.get("prompt_tokens_details") or {}
        total_s = time.perf_counter() - gen.started
        rec = GenerationRecord(
            gen.id, gen.caller.account.id, gen.caller.key.id, gen.model,
            ep.provider if ep else "", _int(usage.get("prompt_tokens")),
            _int(usage.get("completion_tokens")),
            _int(details.get("reasoning_tokens") if isinstance(details, dict) else 0),
            _int(pdetails.get("cached_tokens") if isinstance(pdetails, dict) else 0),
            gen.cost_micro, gen.is_byok, gen.estimated, int(total_s * 1000),
            int(gen.ttft_s * 1000), int(gen.generation_s * 1000), gen.streamed, gen.cancelled,
            gen.finish_reason, gen.native_finish_reason, gen.app, gen.route, gen.created,
        )
        assert gen.reservation is not None
        self.billing.settle(gen.reservation, rec)


def _int(v: Any) -> int:
    return v if isinstance(v, int) and v >= 0 else 0


def _retry_after(value: str | None) -> float:
    if not value:
        return 1.0
    try:
        return max(0.0, min(float(value), 3600.0))
    except ValueError:
        return 1.0

