"""SSE relay (SPEC §4): OpenAI chunks out, whatever the upstream speaks.

Phases of one streamed request:
  waiting   no upstream byte yet. After `keepalive_s` the 200 head is sent and `: EDGEPROXY
            PROCESSING` comments follow at that interval, so idle timeouts of clients and load
            balancers do not fire. A failed attempt moves on to the next endpoint.
  relaying  chunks flow. Until the first *content* byte (text, tool call, reasoning, a finish) has
            reached the client a failed attempt still falls back; after it, a failure ends the
            stream with an `error` chunk and `finish_reason: "error"`, then `[DONE]`.
  done      the usage chunk (`choices: []`, with `cost`) and `[DONE]`.
A client that goes away cancels the handler (aiohttp handler_cancellation): the upstream response
is closed at once, which drops its connection, and the generation is marked cancelled.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from . import routing
from .errors import EdgeproxyError, UpstreamConnectionError, UpstreamError, UpstreamTimeout
from .gateway import Attempt, Gateway, Generation

__all__ = ["stream_chat"]

_COMMENT = b": EDGEPROXY PROCESSING\n\n"
_DONE = b"data: [DONE]\n\n"
_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class _Relay:
    __slots__ = (
        "committed",
        "current",
        "first_content",
        "gen",
        "gw",
        "keepalive",
        "request",
        "response",
        "text_chars",
        "timer",
        "usage",
    )

    def __init__(self, request: web.Request, gw: Gateway, gen: Generation) -> None:
        self.request = request
        self.gw = gw
        self.gen = gen
        self.response: web.StreamResponse | None = None
        self.committed = False  # a content byte has gone to the client: no more fallback
        self.text_chars = 0
        self.first_content = 0.0
        self.current: Attempt | None = None  # the attempt being relayed
        self.usage: dict[str, Any] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.keepalive: asyncio.Task[None] | None = None

    # -- the waiting phase --------------------------------------------------------------------

    def arm(self) -> None:
        """Start the keep-alive clock for the wait on an upstream's first byte."""
        if self.timer is None and self.keepalive is None:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(self.gw.cfg.server.keepalive_s, self._start_keepalive)

    def _start_keepalive(self) -> None:
        self.timer = None
        self.keepalive = asyncio.ensure_future(self._keepalive())

    async def _keepalive(self) -> None:
        interval = self.gw.cfg.server.keepalive_s
        while True:
            await self._write(_COMMENT)
            await asyncio.sleep(interval)

    async def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        task, self.keepalive = self.keepalive, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, ConnectionError):
                pass

    # -- writing -----------------------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        if self.response is None:
            resp = web.StreamResponse(status=200, headers=_SSE_HEADERS)
            resp.headers["X-Edgeproxy-Route"] = self.gen.route
            resp.enable_chunked_encoding()
            await resp.prepare(self.request)
            self.response = resp
        await self.response.write(data)

    def frame(self, chunk: dict[str, Any], provider: str) -> bytes:
        gen = self.gen
        chunk["id"] = gen.id
        chunk["object"] = "chat.completion.chunk"
        chunk["created"] = gen.created
        chunk["model"] = gen.model
        chunk["provider"] = provider
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def error_frame(self, exc: EdgeproxyError, provider: str) -> bytes:
        return self.frame(
            {
                "choices": [{"index": 0, "delta": {}, "finish_reason": "error",
                             "native_finish_reason": None}],
                "error": {"code": exc.status, "message": exc.message, "metadata": exc.metadata},
            },
            provider,
        )

    # -- one attempt -------------------------------------------------------------------------

    def _frames(self, chunks: list[dict[str, Any]], provider: str) -> bytes:
        """Frame decoded chunks for the client, noting usage, content and the finish reason."""
        out = []
        for chunk in chunks:
            u = chunk.pop("usage", None)
            if u is not None:
                self.usage = u
            choices = chunk.get("choices")
            if not choices:
                continue  # the upstream's usage chunk: ours, with cost, comes last
            for c in choices:
                delta = c.get("delta")
                if delta:
                    content = delta.get("content")
                    if content:
                        self.text_chars += len(content)
                    if content or delta.get("tool_calls") or delta.get("reasoning"):
                        self.committed = True
                if c.get("finish_reason") is not None:
                    self.committed = True
                    self.gen.finish_reason = c["finish_reason"]
                    self.gen.native_finish_reason = c.get("native_finish_reason")
            if self.committed and not self.first_content:
                self.first_content = time.perf_counter()
            out.append(self.frame(chunk, provider))
        return b"".join(out)

    async def attempt(self, att: Attempt) -> None:
        """Relay one upstream stream to the client; raise UpstreamError if it fails."""
        gw = self.gw
        name = att.endpoint.provider
        self.gen.model = att.endpoint.model_id  # a `models` fallback may serve another model
        self.arm()
        resp = await gw.upstreams.post(name, att.call)
        try:
            if resp.status >= 300:
                data = await gw.upstreams.read(name, resp)
                raise gw.status_error(att, resp.status, data, resp.headers)
            decoder = att.adapter.stream_decoder()
            self.usage = None
            first_byte = 0.0
            try:
                async for data in resp.content.iter_any():
                    if not first_byte:
                        first_byte = time.perf_counter()
                        await self.disarm()
                    out = self._frames(decoder.feed(data), name)
                    if out:
                        await self._write(out)
                out = self._frames(decoder.close(), name)
                if out:
                    await self._write(out)
            except TimeoutError:
                raise UpstreamTimeout(f"{name}: the stream stalled", name) from None
            except aiohttp.ClientError:
                raise UpstreamConnectionError(f"{name}: the stream was cut short", name) from None
        finally:
            resp.close()
        end = time.perf_counter()
        usage = gw.finish_usage(self.gen, att, self.usage, self.text_chars)
        start_gen = self.first_content or first_byte or end
        self.gen.ttft_s = (first_byte or end) - att.started
        self.gen.generation_s = end - start_gen
        gw.succeeded(att, self.gen.ttft_s, self.gen.generation_s, usage["completion_tokens"])
        gw.m_ttft.observe(self.gen.ttft_s, (name,))
        gw.record(self.gen)
        tail = self.frame({"choices": [], "usage": usage}, name)
        await self._write(tail + _DONE)


async def stream_chat(
    request: web.Request,
    gw: Gateway,
    gen: Generation,
    plan: routing.Plan,
    body: bytes,
    req_dict: dict[str, Any] | None,
) -> web.StreamResponse:
    relay = _Relay(request, gw, gen)
    errors: list[UpstreamError] = []
    all_degraded = gw.routes.is_degraded(plan.endpoints[0])
    provider = plan.endpoints[0].provider
    try:
        for n, ep in enumerate(plan.endpoints):
            provider = ep.provider
            att = gw.prepare(gen, ep, body, req_dict, stream=True)
            relay.current = att
            try:
                await relay.attempt(att)
            except UpstreamError as err:
                gw.failed(att, err)
                errors.append(err)
                if relay.committed or not err.retryable:
                    break
                continue
            if n:
                gw.m_fallbacks.inc((gen.model,))
            gw.m_requests.inc((gen.model, provider, "200"))
            gw.m_latency.observe(time.perf_counter() - gen.started, (gen.model,))
            assert relay.response is not None
            await relay.response.write_eof()
            return relay.response
        await relay.disarm()
        exc = gw.final_error(errors, all_degraded) if not relay.committed else errors[-1]
        if relay.response is None:
            raise exc
        # The 200 head is gone already: the failure travels as an error chunk (SPEC §4).
        shown = exc if isinstance(exc, EdgeproxyError) else errors[-1]
        gw.m_requests.inc((gen.model, provider, "stream_error"))
        await relay._write(relay.error_frame(shown, provider) + _DONE)
        await relay.response.write_eof()
        return relay.response
    except (asyncio.CancelledError, ConnectionResetError):
        # The client went away: the upstream response was closed by attempt()'s finally. What
        # was generated so far is billed (SPEC §4), from the upstream's usage if it came.
        gen.cancelled = True
        if relay.current is not None and gen.usage is None:
            gw.finish_usage(gen, relay.current, relay.usage, relay.text_chars)
            gw.record(gen)
        gw.m_requests.inc((gen.model, provider, "cancelled"))
        raise
    finally:
        await relay.disarm()
