"""The listening socket: a cap on client connections and a deadline for every request head.

aiohttp's server waits for a request head as long as the client takes to send it, and accepts
every connection it is offered, so a few hundred clients that dribble a byte now and then hold as
many file descriptors until the process has none left for anyone. Its own keep-alive timer
(`keepalive_timeout`, armed when a connection opens or a response ends) only closes a connection
that stays idle that long. This module adds what it lacks, around aiohttp's RequestHandler:

- a header deadline: a request head must be complete `header_timeout_s` after its first byte
  arrived (or after the connection opened); else the connection gets a 408 and is closed;
- a connection cap, by default from the process's descriptor limit (RLIMIT_NOFILE) less headroom
  for upstream sockets, the ledger, Redis and logs. At the cap a new connection takes the place of
  the connection that has been between requests the longest (idle keep-alive, or a head still
  coming); when every connection is in a request, it is answered 503 with Retry-After and closed
  at once rather than left in the kernel's backlog;
- malformed requests (a bad request line, a header too long) answered in the API's JSON error
  shape and logged at debug level, not as a traceback each.

A request body has its own idle timeout where it is read (`handlers.read_body`).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest

from .errors import error_body
from .metrics import Counter, Gauge, Registry

__all__ = ["HANDLER_ARGS", "RESERVED_FDS", "Guard", "Listener", "connection_cap", "listen"]

log = logging.getLogger("edgeproxy.listener")

#: aiohttp RequestHandler arguments: the same here and in `make_app` (for a runner serving it with
#: web.TCPSite).
HANDLER_ARGS: dict[str, Any] = {"max_field_size": 16384}

#: Descriptors kept for what is not a client connection: the listening socket, the event loop,
#: stdio and log files, the ledger (SQLite's three files or a PostgreSQL pool), Redis, DNS.
RESERVED_FDS = 64


def connection_cap(configured: int) -> tuple[int, int]:
    """(the cap on client connections, the descriptor limit it comes from). Each client
    connection may hold one upstream socket while its request runs, hence half of what is left
    after RESERVED_FDS; a configured cap (> 0) is kept under that bound."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    bound = max(1, (soft - RESERVED_FDS) // 2)
    return (min(configured, bound) if configured > 0 else bound), soft


def _answer(status: int, reason: str, message: str, headers: str = "") -> bytes:
    """A whole HTTP/1.1 error response, written before any request was read."""
    body = error_body(status, message)
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{headers}Connection: close\r\n\r\n").encode() + body


class Guard:
    """Counts the connections and keeps the two orders the cap and the deadline need."""

    def __init__(self, cap: int, header_timeout_s: float) -> None:
        self.cap = cap
        self.header_timeout_s = header_timeout_s
        self.open = 0
        # refused: answered 503, every connection being in a request; evicted: closed to make
        # room, having been between requests the longest; head_timeout: a head came too slowly.
        self.closed = Counter("edgeproxy_client_connections_closed_total",
                              "Client connections the gateway refused or closed, by reason",
                              ("reason",))
        # Both dicts keep insertion order: the first entry is the oldest.
        self._between: dict[_Connection, None] = {}  # not in a request, since longest first
        self._heads: dict[_Connection, float] = {}  # a head is due by (loop time), soonest first
        self._full = _answer(503, "Service Unavailable",
                             f"the gateway is at its connection limit ({cap}); retry shortly",
                             "Retry-After: 1\r\n")
        self._late = _answer(408, "Request Timeout",
                             f"the request head was not complete within {header_timeout_s:g} s")
        self._sweeper: asyncio.TimerHandle | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        every = min(1.0, self.header_timeout_s / 4)

        def sweep() -> None:
            now = loop.time()
            while self._heads:
                conn, due = next(iter(self._heads.items()))
                if due > now:
                    break
                self.closed.inc(("head_timeout",))
                self._forget(conn)
                conn.expire(self._late)
            self._sweeper = loop.call_later(every, sweep)

        self._sweeper = loop.call_later(every, sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def admit(self, conn: _Connection, transport: asyncio.BaseTransport) -> bool:
        if self.open >= self.cap:
            if not self._between:
                self.closed.inc(("refused",))
                transport.write(self._full)  # type: ignore[attr-defined]
                transport.close()
                return False
            oldest = next(iter(self._between))
            self.closed.inc(("evicted",))
            self._forget(oldest)
            oldest.force_close()
        self.open += 1
        conn.counted = True
        self._between[conn] = None
        self.head_started(conn)  # a new connection owes its first head at once
        return True

    def head_started(self, conn: _Connection) -> None:
        conn.head_due = True
        self._heads[conn] = asyncio.get_running_loop().time() + self.header_timeout_s

    def request_started(self, conn: _Connection) -> None:
        conn.head_due = False
        self._between.pop(conn, None)
        self._heads.pop(conn, None)

    def request_done(self, conn: _Connection) -> None:
        if conn.counted:
            self._between[conn] = None

    def _forget(self, conn: _Connection) -> None:
        conn.head_due = False
        if conn.counted:
            conn.counted = False
            self.open -= 1
        self._between.pop(conn, None)
        self._heads.pop(conn, None)

    def gone(self, conn: _Connection) -> None:
        self._forget(conn)


class _Connection(web.RequestHandler):
    """aiohttp's RequestHandler, told by the Guard when to give up on a connection."""

    __slots__ = ("_guard", "busy", "counted", "head_due", "refused")

    def __init__(self, manager: web.Server, guard: Guard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self.busy = False  # a request's head was read and its handler runs
        self.counted = False  # holds one of the cap's places
        self.head_due = False  # a head is on its way, under the deadline
        self.refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit(self, transport):
            self.refused = True
            return
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if not (self.busy or self.head_due) and self.counted:
            self._guard.head_started(self)
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.refused:
            return
        self._guard.gone(self)
        super().connection_lost(exc)

    def expire(self, answer: bytes) -> None:
        """The head did not come in time: say so (the client may still read) and close."""
        if self.transport is not None:
            self.transport.write(answer)
        self.force_close()

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse (or a handler's escaped error), in
        the API's JSON shape. Anyone can send such bytes: a debug line, not a traceback."""
        log.debug("malformed request from %s: %s", request.remote, message or exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; the connection is dropped")
        if status >= 500:
            text = "internal error"
        else:
            first = (message or "").strip().splitlines()
            text = "malformed HTTP request" + (f": {first[0].rstrip(':')}" if first else "")
        resp = web.Response(status=status, body=error_body(status, text),
                            content_type="application/json")
        resp.force_close()
        return resp


_Handler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]


def _hook(server: web.Server, guard: Guard) -> None:
    """Mark each connection busy while a request's handler runs (its head was read)."""
    inner: _Handler = server.request_handler

    async def handle(request: BaseRequest) -> web.StreamResponse:
        conn = request.protocol
        if not isinstance(conn, _Connection):
            return await inner(request)
        conn.busy = True
        guard.request_started(conn)
        try:
            return await inner(request)
        finally:
            conn.busy = False
            guard.request_done(conn)

    server.request_handler = handle


class Listener:
    """A listening socket serving an AppRunner's application through the Guard."""

    def __init__(self, server: asyncio.Server, guard: Guard) -> None:
        self.server = server
        self.guard = guard

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    def close(self) -> None:
        """Stop accepting (the runner's cleanup then drains the open connections)."""
        self.server.close()
        self.guard.close()


async def listen(
    runner: web.AppRunner, host: str, port: int, *, cap: int, header_timeout_s: float,
    backlog: int = 1024, reuse_port: bool = False, metrics: Registry | None = None,
) -> Listener:
    """Listen for the set-up `runner`'s application, as web.TCPSite does, with the Guard (its
    figures shown in `metrics`)."""
    server = runner.server
    assert server is not None, "runner.setup() first"
    guard = Guard(cap, header_timeout_s)
    if metrics is not None:
        metrics.add(Gauge("edgeproxy_client_connections",
                          "Client connections open, and the most served at once",
                          ("kind",), fn=lambda: {("open",): guard.open, ("limit",): guard.cap}))
        metrics.add(guard.closed)
    _hook(server, guard)
    loop = asyncio.get_running_loop()

    def connection() -> _Connection:
        return _Connection(server, guard, loop=loop, access_log=None, **HANDLER_ARGS)

    sock = await loop.create_server(connection, host, port, backlog=backlog,
                                    reuse_port=reuse_port or None)
    guard.start()
    return Listener(sock, guard)
