"""The HTTP side of a streamed answer (SPEC §4): an SSE response that the pipeline writes to.

While no upstream byte has arrived, the 200 head waits `keepalive_s` (so a fast upstream's real
error status still reaches the client as a status), then goes out and `: EDGEPROXY PROCESSING`
comments follow at that interval, so idle timeouts of clients and load balancers do not fire.
SSE comments are ignored by every dialect's client (WHATWG HTML §9.2.6). A client that goes away
cancels the handler (aiohttp handler_cancellation), which the pipeline turns into a closed
upstream call and a generation recorded as cancelled.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from .pipeline import ClientGone

__all__ = ["SSEResponse"]

_COMMENT = b": EDGEPROXY PROCESSING\n\n"
_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class SSEResponse:
    """A pipeline `Sink` over one aiohttp request."""

    __slots__ = ("_headers", "_interval", "_keepalive", "_request", "_timer", "response")

    def __init__(self, request: web.Request, headers: dict[str, str], keepalive_s: float) -> None:
        self._request = request
        self._headers = headers
        self._interval = keepalive_s
        self.response: web.StreamResponse | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._keepalive: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self.response is not None

    def waiting(self) -> None:
        if self._timer is None and self._keepalive is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._interval, self._start_keepalive)

    def _start_keepalive(self) -> None:
        self._timer = None
        self._keepalive = asyncio.ensure_future(self._comments())

    async def _comments(self) -> None:
        while True:
            await self.write(_COMMENT)
            await asyncio.sleep(self._interval)

    async def flowing(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._keepalive = self._keepalive, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the cancellation was (also) meant for this request: pass it on
            except ClientGone:
                pass  # the next write says so where it matters

    async def write(self, data: bytes) -> None:
        try:
            if self.response is None:
                resp = web.StreamResponse(status=200, headers=_SSE_HEADERS)
                resp.headers.update(self._headers)
                resp.enable_chunked_encoding()
                await resp.prepare(self._request)
                self.response = resp
            await self.response.write(data)
        except ConnectionError:
            # aiohttp's reset error is also a ClientError, which the pipeline takes for the
            # upstream's: a client that went away must never count against a provider.
            raise ClientGone from None

    async def close(self) -> None:
        await self.flowing()
        if self.response is not None:
            await self.response.write_eof()
