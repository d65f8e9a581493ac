"""The one attempt loop of every dialect, streamed or not (SPEC §2, §4, §5.3).

    plan ─▶ attempt 1 ─▶ attempt 2 ─▶ … ─▶ served | the final error
            (each: prepare the call, send, read or relay, feed health and metrics)

Retry points: an attempt that fails may fall back to the next endpoint while nothing of it has
reached the client. For a streamed answer that is "no content byte yet" (the role-only opening
and keep-alive comments do not count); once content has gone out, a failure ends the stream
with the dialect's error event. An attempt still without its first byte past its endpoint's
hung bound is cut short the same way when the next endpoint is stable (`Gateway.watched`). The
whole loop runs under the overall deadline (`server.request_timeout_s`), a 408 when it passes.

Money: the request's reservation is held by the caller (`billing.charge`); this loop settles it
through `Gateway.record` when an endpoint served, when a stream failed after content reached the
client (what was delivered is billed and recorded with finish_reason "error"), and when the
client went away after the upstream had answered (billed for what was generated, recorded as
cancelled). Failed attempts and those that fell back are free.

Streams go to a `Sink` (the HTTP face's SSE response) through the dialect's `StreamEncoder`;
this module does no HTTP itself and never imports the face.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import aiohttp

from . import reasoning
from .errors import EdgeproxyError, UpstreamConnectionError, UpstreamError, UpstreamTimeout
from .gateway import Attempt, Gateway, Generation
from .routing import Plan

if TYPE_CHECKING:
    from .ingress.base import Decoded, StreamEncoder

__all__ = ["ClientGone", "Sink", "complete", "stream"]

T = TypeVar("T")


class _Late(TimeoutError):
    """The deadline passed during an attempt whose failure is already counted."""


class ClientGone(Exception):
    """The client's connection closed under a write: handled like a cancellation."""


class Sink(Protocol):
    """Where a streamed answer goes. The 200 head is sent with the first write."""

    @property
    def started(self) -> bool:
        """The head has gone out: errors can only travel as events now."""
        ...

    def waiting(self) -> None:
        """No upstream byte yet: keep the client's connection alive until `flowing`."""
        ...

    async def flowing(self) -> None: ...

    async def write(self, data: bytes) -> None:
        """Raises ClientGone when the client has gone away."""
        ...

    async def close(self) -> None: ...


class _Run:
    """The state of one request across its attempts."""

    __slots__ = (
        "answered",
        "committed",
        "current",
        "deadline",
        "errors",
        "first_content",
        "gen",
        "gw",
        "text_chars",
        "usage",
        "waited",
    )

    def __init__(self, gw: Gateway, gen: Generation) -> None:
        self.gw = gw
        self.gen = gen
        self.errors: list[UpstreamError] = []
        self.current: Attempt | None = None
        self.answered = False  # the current attempt's upstream sent its response head
        self.committed = False  # a content byte has gone to the client: no more fallback
        self.usage: dict[str, Any] | None = None
        self.text_chars = 0
        self.first_content = 0.0
        self.waited = 0.0  # seconds spent waiting on upstreams (the overhead metric)
        self.deadline = 0.0  # loop time when the request must have finished

    async def attempts(
        self, plan: Plan, req: Decoded, attempt: Callable[[Attempt], Awaitable[T]]
    ) -> T:
        """Run `attempt(att)` over the plan until one serves; return its result. Raises the final
        error when every attempt failed or one failed after committing."""
        gw, gen = self.gw, self.gen
        # Degraded before this request's own failures: a 503 says none was available to begin with.
        all_degraded = gw.routes.is_degraded(plan.endpoints[0])
        loop = asyncio.get_running_loop()
        self.deadline = deadline = loop.time() + gw.cfg.server.request_timeout_s
        try:
            # A stream may stall between chunks for its idle timeout: the whole relay runs under
            # the deadline. A whole answer is bounded by each attempt's own timeout, cut to the
            # deadline (Upstreams.fetch): no timer of its own on that path (None: none armed).
            async with asyncio.timeout_at(deadline if req.stream else None):
                for n, ep in enumerate(plan.endpoints):
                    att = self.current = gw.prepare(gen, ep, req, req.stream)
                    if n + 1 < len(plan.endpoints):  # where a hung attempt may fall back early
                        att.fallback = plan.endpoints[n + 1]
                    self.answered = False
                    try:
                        result = await attempt(att)
                    except UpstreamError as err:
                        self.waited += time.perf_counter() - att.started
                        gw.failed(att, err)
                        self.errors.append(err)
                        # (libuv fires timers at millisecond granularity, a hair early at times)
                        if loop.time() >= deadline - 0.002:
                            raise _Late from None
                        if self.committed or not err.retryable:
                            break
                        continue
                    if n:
                        gw.m_fallbacks.inc((gen.model,))
                    gw.m_requests.inc((gen.model, ep.provider, "200"))
                    return result
        except TimeoutError as exc:
            limit = gw.cfg.server.request_timeout_s
            late = UpstreamTimeout(f"the request did not finish within {limit:g} s",
                                   gen.provider)
            late.status = 408
            if self.current is not None and not self.committed and not isinstance(exc, _Late):
                gw.failed(self.current, late)
            self.errors.append(late)
        except (asyncio.CancelledError, ClientGone):
            self.cancelled()
            raise
        last = self.errors[-1]
        if self.committed:
            self.delivered()
            gw.m_requests.inc((gen.model, last.provider, "stream_error"))
            raise last
        final = last if last.status == 408 else gw.final_error(self.errors, all_degraded)
        status = str(final.status) if isinstance(final, EdgeproxyError) else "502"
        gw.m_requests.inc((gen.model, last.provider, status))
        raise final

    def served(self, att: Attempt, usage: dict[str, Any] | None, ttft_s: float,
               gen_s: float) -> dict[str, Any]:
        """An endpoint served: bill it, feed its health and speed, queue the ledger record."""
        gw, gen = self.gw, self.gen
        out = gw.finish_usage(gen, att, usage, self.text_chars)
        gen.ttft_s = ttft_s
        gen.generation_s = gen_s
        gw.succeeded(att, ttft_s, gen_s, out["completion_tokens"])
        if gen.session:
            gw.pin(gen, att.endpoint, out)
        gw.record(gen)
        gw.m_latency.observe(time.perf_counter() - gen.started, (gen.model,))
        return out

    def delivered(self) -> None:
        """A stream failed after content reached the client: bill and record what it got."""
        gen, att = self.gen, self.current
        if att is not None and gen.usage is None:
            gen.finish_reason = "error"
            self.gw.finish_usage(gen, att, self.usage, self.text_chars)
            self.gw.record(gen)

    def cancelled(self) -> None:
        """The client went away. The upstream call was closed by the attempt's own cleanup; once
        the upstream had answered, what it generated is billed (SPEC §4) from its usage if that
        came, else estimated."""
        gen, att = self.gen, self.current
        gen.cancelled = True
        if att is not None and gen.usage is None:
            # Before the upstream answered nothing was generated: recorded, free.
            usage = self.usage if self.answered else {"prompt_tokens": 0, "completion_tokens": 0}
            self.gw.finish_usage(gen, att, usage, self.text_chars, billable=self.answered)
            self.gw.record(gen)
        self.gw.m_requests.inc((gen.model, gen.provider, "cancelled"))


async def complete(gw: Gateway, gen: Generation, req: Decoded, plan: Plan) -> dict[str, Any]:
    """A non-streamed request: the canonical result of the endpoint that served (usage with
    cost; for chat also the framing fields of a `chat.completion`)."""
    run = _Run(gw, gen)
    hide = reasoning.hidden(req.route)

    async def attempt(att: Attempt) -> dict[str, Any]:
        name = att.endpoint.provider
        status, headers, data = await gw.watched(
            att, gw.upstreams.fetch(name, att.call, run.deadline))
        run.answered = status < 300
        if status >= 300:
            raise gw.status_error(att, status, data, headers)
        out = att.parse(status, data)
        gen.upstream_id = _upstream_id(out)
        elapsed = time.perf_counter() - att.started
        run.waited += elapsed
        choices = out.get("choices")
        if choices and hide:
            for c in choices:
                _unreason(c.get("message"))
        if choices:
            gen.finish_reason = choices[0].get("finish_reason")
            gen.native_finish_reason = choices[0].get("native_finish_reason")
            if not isinstance(out.get("usage"), dict):  # to estimate what was generated
                run.text_chars = sum(len(_text(c)) for c in choices)
        out["usage"] = run.served(att, out.get("usage"), 0.0, elapsed)
        if req.kind == "chat":
            out["id"] = gen.id
            out["object"] = "chat.completion"
            out["created"] = gen.created
            out["model"] = gen.model
            out["provider"] = gen.provider
            out.setdefault("system_fingerprint", None)
        return out

    result: dict[str, Any] = await run.attempts(plan, req, attempt)
    gw.m_overhead.observe(max(0.0, time.perf_counter() - gen.started - run.waited))
    return result


async def stream(
    gw: Gateway, gen: Generation, req: Decoded, plan: Plan, enc: StreamEncoder, sink: Sink
) -> None:
    """A streamed request, relayed through the dialect's encoder to the sink."""
    run = _Run(gw, gen)
    hide = reasoning.hidden(req.route)

    def note(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Keep usage apart, note content and the finish reason; the chunks the client gets."""
        out = []
        for chunk in chunks:
            if gen.upstream_id is None:
                gen.upstream_id = _upstream_id(chunk)
            u = chunk.pop("usage", None)
            if u is not None:
                run.usage = u
            choices = chunk.get("choices")
            if choices and hide:
                for c in choices:
                    _unreason(c.get("delta"))
                # A delta of reasoning only is left empty: nothing of it goes out.
                choices = chunk["choices"] = [
                    c for c in choices if c.get("delta") or c.get("finish_reason") is not None]
            if not choices:
                continue  # the upstream's usage chunk: the dialect's own closing carries ours
            for c in choices:
                delta = c.get("delta")
                if delta:
                    content = delta.get("content")
                    if content:
                        run.text_chars += len(content)
                    if content or delta.get("tool_calls") or delta.get("reasoning"):
                        run.committed = True
                if c.get("finish_reason") is not None:
                    run.committed = True
                    gen.finish_reason = c["finish_reason"]
                    gen.native_finish_reason = c.get("native_finish_reason")
            if run.committed and not run.first_content:
                run.first_content = time.perf_counter()
            out.append(chunk)
        return out

    async def attempt(att: Attempt) -> dict[str, Any]:
        gen.model = att.endpoint.model_id  # a `models` fallback may serve another model
        sink.waiting()
        return await gw.watched(att, relay(att))

    async def relay(att: Attempt) -> dict[str, Any]:
        name = att.endpoint.provider
        resp = await gw.upstreams.post(name, att.call, run.deadline)
        run.answered = resp.status < 300
        try:
            if resp.status >= 300:
                data = await gw.upstreams.read(name, resp)
                raise gw.status_error(att, resp.status, data, resp.headers)
            decoder = att.adapter.stream_decoder()
            run.usage = None
            gen.upstream_id = None  # (an earlier attempt's)
            first_byte = 0.0
            try:
                async for data in resp.content.iter_any():
                    if not first_byte:
                        first_byte = time.perf_counter()
                        gw.answered(att)  # before anything reaches the client: no cut after
                        await sink.flowing()
                    chunks = note(decoder.feed(data))
                    if chunks:
                        await sink.write(enc.chunks(chunks))
                chunks = note(decoder.close())
                if chunks:
                    await sink.write(enc.chunks(chunks))
            except TimeoutError:
                raise UpstreamTimeout(f"{name}: the stream stalled", name) from None
            except aiohttp.ClientError:
                raise UpstreamConnectionError(f"{name}: the stream was cut short", name) from None
        finally:
            resp.close()
        end = time.perf_counter()
        ttft = (first_byte or end) - att.started
        gw.m_ttft.observe(ttft, (name,))
        return run.served(att, run.usage, ttft, end - (run.first_content or first_byte or end))

    try:
        usage = await run.attempts(plan, req, attempt)
    except EdgeproxyError as exc:
        if not sink.started:
            raise
        # The 200 head is gone already: the failure travels as the dialect's error event.
        await sink.flowing()
        await sink.write(enc.error(exc))
    else:
        # Served, billed and recorded: the closing write is outside the deadline.
        await sink.write(enc.finish(usage))
    await sink.close()


def _unreason(part: Any) -> None:
    """`reasoning: {exclude: true}`: the reasoning was generated (and is billed) but not shown."""
    if isinstance(part, dict):
        part.pop("reasoning", None)
        part.pop("reasoning_details", None)


def _upstream_id(doc: dict[str, Any]) -> str | None:
    """The provider's own id of its answer (openai's `chatcmpl-…`) when it sent a sane one;
    adapters that translate another wire format keep none."""
    v = doc.get("id")
    return v if isinstance(v, str) and 0 < len(v) <= 256 else None


def _text(choice: Any) -> str:
    message = choice.get("message") if isinstance(choice, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else ""
