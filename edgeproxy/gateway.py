"""The gateway's core state, independent of HTTP: config, route table, upstream sessions, adapters
and metrics. The HTTP face (`app`, `handlers`, `streaming`) calls into it; it imports none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from . import routing
from .billing.fees import byok_fee
from .billing.journal import for_ledger
from .billing.ledger import GenerationRecord, Ledger
from .billing.pricing import Charge, charge, cost_json, max_charge, micro_ceil
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
    scrub,
)
from .metrics import Counter, Gauge, Histogram, Registry
from .protocols import adapter_for
from .protocols.base import Adapter, Embedder, Forwarder, Target, UpstreamCall
from .routing import Endpoint, Plan, RouteTable
from .state.redis import RedisState
from .sticky import Pins, cache_used, pin_key
from .upstream import Upstreams

if TYPE_CHECKING:
    from .ingress.base import Decoded
    from .schema import ChatRequest

__all__ = ["Attempt", "Gateway", "Generation"]

T = TypeVar("T")

# Upstream answers that are the client's fault: relayed, not retried, not held against the provider.
_CLIENT_FAULT = {400: 400, 413: 413, 422: 400}
_UNBILLED = Charge(0, 0, 0, 0)  # an attempt cancelled before the upstream answered


# Generation ids: a random prefix per process and a counter, unique across workers and nodes
# without a syscall per request (ids are not secrets: a generation is shown only to its owner).
_GEN_PREFIX = secrets.token_hex(6)
_gen_counter = itertools.count(1)


class Generation:
    """What the gateway knows about one request while it runs: the seed of the ledger record."""

    __slots__ = (
        "app",
        "cache_discount_micro",
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
        "session",
        "started",
        "streamed",
        "ttft_s",
        "upstream_cost_micro",
        "upstream_id",
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
        self.cache_discount_micro = 0  # what the prompt cache saved (SPEC §5.3), see finish_usage
        self.is_byok = False
        self.estimated = False
        self.route = ""
        # Its sticky-routing pin key (sticky.pin_key), "" when none applies, or pin_key's
        # arguments while no pin can exist for it (the key is made only if it pins).
        self.session: str | tuple[str, str, ChatRequest, str | None] = ""
        self.ttft_s = 0.0
        self.generation_s = 0.0
        self.prompt_estimate = 0
        self.upstream_id: str | None = None  # the serving provider's id of its answer
        self.upstream_cost_micro = 0  # BYOK: what the account's own key paid the provider


class Attempt:
    """One try at one endpoint: its adapter, the prepared upstream call, and what the hung sweep
    needs while it waits for its first byte (`Gateway.watched`)."""

    __slots__ = ("adapter", "call", "cut", "endpoint", "fallback", "hung_s", "is_byok", "key",
                 "parse", "started", "task", "tokens")

    def __init__(
        self, endpoint: Endpoint, adapter: Adapter, call: UpstreamCall,
        parse: Callable[[int, bytes], dict[str, Any]], is_byok: bool, tokens: int,
        key: str = "",
    ) -> None:
        self.endpoint = endpoint
        self.key = key  # the provider key it sends, scrubbed from the upstream's error text
        self.adapter = adapter
        self.call = call
        self.parse = parse  # a whole 2xx body -> the canonical result
        self.is_byok = is_byok
        self.tokens = tokens  # a whole answer's most output tokens (0: a stream)
        self.fallback: Endpoint | None = None  # the plan's next endpoint
        self.task: asyncio.Task[Any] | None = None  # the request's, while it is watched
        self.cut = False  # the sweep cancelled `task` to fall back early
        self.hung_s = 0.0  # > 0: the sweep counted it hung after that many seconds
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
        self.pins = Pins(cfg.routing.sticky_s, self.shared) if cfg.routing.sticky_s else None
        driver = open_driver(cfg.storage.ledger)
        self.billing = Billing(Ledger(driver), cfg.billing, cfg.server.auth, self.shared,
                               journal=for_ledger(driver, cfg.storage.journal))
        self._sync: asyncio.Task[None] | None = None
        self._sweep: asyncio.Task[None] | None = None
        # Attempts waiting for their first byte, oldest first (an insertion-ordered set).
        self._watched: dict[Attempt, None] = {}
        self.metrics = m = Registry()
        self.m_requests = m.add(Counter(
            "edgeproxy_requests_total", "Requests by model, provider and status",
            ("model", "provider", "status")))
        self.m_attempts = m.add(Counter(
            "edgeproxy_upstream_attempts_total", "Upstream attempts by provider and outcome",
            ("provider", "outcome")))
        self.m_hung = m.add(Counter(
            "edgeproxy_upstream_hung_total",
            "Attempts still without a first byte past hung_factor x their endpoint's TTFT "
            "(each counted once against the endpoint)", ("provider",)))
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
            "edgeproxy_credits_spent_usd", "USD charged for generations", ("model",),
            scale=1_000_000))  # counted in micro-USD
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
        for task in (self._sync, self._sweep):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
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
        variant = ep.model_id + ":thinking"  # SPEC §1.1: the variant turns reasoning on
        target = Target(
            ep.provider_cfg.base_url.rstrip("/"), own or self._keys[ep.provider],
            ep.upstream_model, ep.max_output, "reasoning" in ep.parameters,
            req.route.model == variant or variant in (req.route.models or ()), ep.drop,
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
        tokens = 0
        if not stream:
            most = req.route.max_completion_tokens or req.route.max_tokens
            tokens = min(most, ep.max_output) if most else ep.max_output
        return Attempt(ep, adapter, call, parse, own is not None, tokens, target.api_key)

    def max_cost(self, caller: Caller, plan: Plan, prompt_tokens: int, max_tokens: int,
                 choices: int = 1) -> int:
        """The most this request can cost on any endpoint of its plan (micro-USD), SPEC §5.3:
        the prompt once and `choices` completions (`n`); none for embeddings (0)."""
        worst = 0
        for ep in plan.endpoints:
            out = (min(max_tokens, ep.max_output) if max_tokens else ep.max_output) * choices
            cost = micro_ceil(max_charge(ep.prices, prompt_tokens, out))
            if caller.byok and ep.provider in caller.byok:
                cost = byok_fee(cost, 1, 0)
            worst = max(worst, cost)
        return worst

    async def start(self) -> None:
        self._sweep = asyncio.ensure_future(self._sweep_hung())
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

    # -- hung providers ---------------------------------------------------------------------------
    # A provider that accepts the connection and never answers would hold each request for its
    # first-byte timeout before one failure is counted. Instead a sweep every SWEEP_S looks at the
    # attempts still waiting for their first byte: one past its endpoint's bound counts as a
    # failure at once (once per attempt), so consecutive_failures demote a hung endpoint within
    # seconds while its requests still wait, and the request itself falls back to the next
    # endpoint of its plan when that one is stable (nothing has reached the client yet).

    SWEEP_S = 0.5

    async def watched(self, att: Attempt, work: Awaitable[T]) -> T:
        """Await `work`, the attempt, while the sweep watches it until `answered(att)` (its first
        byte) and may cut it short: then it fails with `hung_error`, a retryable timeout.

        The cut cancels this task, as asyncio.timeout() does, without a timer per attempt: the
        task can only be waiting inside `work`, and `uncancel()` tells the sweep's cancellation
        from the client's going away or the overall deadline, which win when they came too."""
        task = att.task = asyncio.current_task()
        self._watched[att] = None
        try:
            return await work
        except asyncio.CancelledError:
            if att.cut:
                att.cut = False
                if task is not None and task.uncancel() == 0:
                    raise self.hung_error(att) from None
            raise
        finally:
            self.answered(att)
            if att.cut and task is not None:  # cut, but `work` swallowed the cancellation
                att.cut = False
                task.uncancel()

    def answered(self, att: Attempt) -> None:
        """The first byte came (or the attempt ended): no more hung check, no cut."""
        self._watched.pop(att, None)

    async def _sweep_hung(self) -> None:
        while True:
            await asyncio.sleep(self.SWEEP_S)
            if self._watched:
                self.sweep(time.perf_counter())

    def hung_after(self, att: Attempt) -> float:
        """Seconds without a first byte after which `att` counts as hung: hung_factor × the
        endpoint's TTFT EWMA (a whole answer: × its expected time, TTFT + tokens / tokens/s), never
        under hung_floor_s; hung_default_s while the endpoint has no TTFT (measured or declared);
        never (inf) for a whole answer at an unknown speed."""
        r = self.cfg.routing
        router = self.routes.router
        expect = router.latency(att.endpoint.index) / 1000.0
        if att.tokens:
            tps = router.throughput(att.endpoint.index)
            if tps <= 0:
                return math.inf
            expect += att.tokens / tps
        elif expect <= 0:
            return r.hung_default_s
        return max(r.hung_floor_s, r.hung_factor * expect)

    def sweep(self, now: float) -> None:
        """Count the watched attempts older than their bound (`now` is time.perf_counter())."""
        late = []
        young = now - self.cfg.routing.hung_floor_s
        for att in self._watched:
            if att.started > young:
                break  # watched in the order they started: the rest are younger still
            limit = self.hung_after(att)
            if now - att.started > limit:
                late.append((att, limit))
        for att, limit in late:
            del self._watched[att]  # counted once: never looked at again
            att.hung_s = limit
            self.m_hung.inc((att.endpoint.provider,))
            if not att.is_byok:  # the account's own key: not the endpoint's health (failed())
                self.routes.failure(att.endpoint)
            fb = att.fallback
            if att.task is not None and fb is not None and not self.routes.is_degraded(fb):
                att.cut = True
                att.task.cancel()

    def hung_error(self, att: Attempt) -> UpstreamTimeout:
        """The failure of an attempt the sweep cut short to fall back."""
        name = att.endpoint.provider
        what = "an answer" if att.tokens else "a first byte"
        return UpstreamTimeout(
            f"{name}: no {what} within {att.hung_s:.1f} s (hung_factor x its usual time); "
            "trying the next endpoint", name)

    def status_error(self, att: Attempt, status: int, data: bytes, headers: Any) -> UpstreamError:
        """A non-2xx upstream answer -> the error to record, retry or relay."""
        name = att.endpoint.provider
        msg, raw = att.adapter.parse_error(status, data)
        status = att.adapter.effective_status(status, raw)
        # The provider may quote the key it was sent: never past here (shapes of keys and their
        # redacted forms are scrubbed by UpstreamError itself).
        msg, raw = scrub(msg, att.key), scrub(raw, att.key)
        err = UpstreamStatusError(
            f"{name} answered HTTP {status}: {msg}", name, raw, upstream_status=status
        )
        if status in _CLIENT_FAULT:
            err.retryable = False
        if status == 429:
            err.retry_after = _retry_after(headers.get("Retry-After"))
        return err

    def failed(self, att: Attempt, err: UpstreamError) -> None:
        """Feed one failed attempt to the health window. Not counted: client-fault answers, an
        attempt the sweep already counted as hung, and any failure with the account's own (BYOK)
        key, which may be that key's fault: one tenant must not degrade a shared endpoint."""
        err.provider = err.provider or att.endpoint.provider
        err.metadata["provider_name"] = att.endpoint.provider
        if err.upstream_status in _CLIENT_FAULT:
            outcome = "client_error"
        elif att.is_byok:
            outcome = "byok_error"
        else:
            if not att.hung_s:
                self.routes.failure(att.endpoint, err.retry_after)
            outcome = "timeout" if isinstance(err, UpstreamTimeout) else "error"
        self.m_attempts.inc((att.endpoint.provider, outcome))

    def succeeded(self, att: Attempt, ttft_s: float, gen_s: float, completion_tokens: int) -> None:
        tps = completion_tokens / gen_s if gen_s > 0 and completion_tokens > 0 else 0.0
        self.routes.success(att.endpoint, ttft_s * 1000.0, tps)
        self.m_attempts.inc((att.endpoint.provider, "ok"))

    async def stick(self, plan: Plan, req: ChatRequest, key: str) -> None:
        """Put the endpoint `key`'s conversation is pinned to first in the plan (SPEC §2.6)."""
        assert self.pins is not None
        now = routing.now_ms()
        ep = self.pins.get(key, now)
        if ep is None and self.pins.remote_worth(key, req):
            ep = await self.pins.fetch(key, now)
        if ep is not None:
            self.routes.stick(plan, ep, now)

    def pin(self, gen: Generation, ep: Endpoint, usage: dict[str, Any]) -> None:
        """The conversation stays on `ep`: after any answer to a session id, else after one that
        used the prompt cache (OpenRouter's rule, see sticky)."""
        if self.pins is None:
            return
        key = gen.session
        if isinstance(key, tuple):  # no key made at routing (sticky.Pins.may_hold)
            if not cache_used(usage):
                return
            key = pin_key(*key)
        elif not (key.startswith("s:") or cache_used(usage)):
            return
        self.pins.pin(key, ep.key, routing.now_ms())

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
        read, written = _cache_counts(usage, pt)
        bill = charge(ep.prices, pt, ct, read, written) if billable else _UNBILLED
        inference = micro_ceil(bill.total)  # at list price: what the provider charges for it
        cost = inference
        if att.is_byok and billable:
            cost = self.billing.byok_charge(gen.caller, inference)
        gen.upstream_cost_micro = inference if att.is_byok else 0
        gen.cost_micro = cost
        gen.cache_discount_micro = micro_ceil(bill.total + bill.cache_discount) - inference
        gen.is_byok = att.is_byok
        usage["cost"] = cost_json(cost * 1_000_000)
        usage["is_byok"] = att.is_byok
        # OpenRouter's breakdown (OpenAPI `CostDetails`); the provider's own charge is shown only
        # where the caller pays it (BYOK), as OpenRouter does.
        usage["cost_details"] = {
            "upstream_inference_cost": cost_json(inference * 1_000_000) if att.is_byok else None,
            "upstream_inference_prompt_cost": cost_json(bill.prompt),
            "upstream_inference_completions_cost": cost_json(bill.completion),
        }
        gen.usage = usage
        if cost:
            self.m_spent.inc((gen.model,), cost)
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
            _int(pdetails.get("cache_write_tokens") if isinstance(pdetails, dict) else 0),
            gen.cache_discount_micro, gen.upstream_id, gen.upstream_cost_micro,
        )
        assert gen.reservation is not None
        self.billing.settle(gen.reservation, rec)


def _int(v: Any) -> int:
    return v if isinstance(v, int) and v >= 0 else 0


def _cache_counts(usage: dict[str, Any], prompt_tokens: int) -> tuple[int, int]:
    """(cache reads, cache writes) of a usage object, both parts of prompt_tokens, written back
    into `prompt_tokens_details` under OpenRouter's names. DeepSeek reports its reads as
    `prompt_cache_hit_tokens` (api-docs.deepseek.com, "Context Caching")."""
    details = usage.get("prompt_tokens_details")
    if not isinstance(details, dict):
        details = {}
    read = min(_int(details.get("cached_tokens")) or _int(usage.get("prompt_cache_hit_tokens")),
               prompt_tokens)
    written = min(_int(details.get("cache_write_tokens")), prompt_tokens - read)
    if details or read:  # (an embedding's usage has no details: none are added)
        details["cached_tokens"] = read
        details["cache_write_tokens"] = written
        usage["prompt_tokens_details"] = details
    return read, written


def _retry_after(value: str | None) -> float:
    if not value:
        return 1.0
    try:
        return max(0.0, min(float(value), 3600.0))
    except ValueError:
        return 1.0

