"""Reference proxies for peerbench: the floor under edgeproxy's latency figures.

  --kind aiohttp   the least an aiohttp-on-uvloop proxy can do: read the body, POST it to the
                   upstream through one ClientSession, relay the answer (streams chunk by chunk).
                   No routing, accounting or validation: whatever edgeproxy adds on top of this is
                   ours; what this adds on top of `direct` is the stack's.
  --kind uvloop    no framework: asyncio protocols on uvloop relay the bytes both ways over a
                   keep-alive upstream pool (aiohttp's C parser only finds where a response ends).
                   What Python itself costs on this rig, with nothing of aiohttp's in the way.
  --kind nginx     nginx (one worker, keep-alive upstream, no buffering): a C proxy on the same
                   rig, to tell the cost of being a proxy at all from the cost of Python.

All three run in the foreground as one process tree, as peerbench expects (see targets.toml).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import cast

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}; proxy_temp_path {dir};
  fastcgi_temp_path {dir}; uwsgi_temp_path {dir}; scgi_temp_path {dir};
  upstream mock {{ server {upstream}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location = /healthz {{ return 200 "ok"; }}
    location / {{
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


def run_nginx(port: int, upstream: str) -> None:
    here = os.path.abspath(".")
    conf = os.path.join(here, "reference-nginx.conf")
    host = upstream.split("://", 1)[-1].rstrip("/")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(dir=here, upstream=host, port=port))
    os.execvp("nginx", ["nginx", "-c", conf, "-p", here])


async def serve_aiohttp(port: int, upstream: str) -> None:
    import aiohttp
    from aiohttp import web

    session = aiohttp.ClientSession()
    url = upstream.rstrip("/") + "/v1/chat/completions"

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            if r.content_type != "text/event-stream":
                return web.Response(body=await r.read(), status=r.status,
                                    content_type=r.content_type)
            out = web.StreamResponse(status=r.status, headers={"Content-Type": r.content_type})
            await out.prepare(request)
            async for chunk in r.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await session.close()
        await runner.cleanup()


class _Upstream(asyncio.Protocol):
    """One keep-alive upstream connection; relays one response at a time to `client`."""

    def __init__(self, pool: list[_Upstream]) -> None:
        self.pool = pool
        self.client: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:  # the upstream closed an idle connection
            self.pool.remove(self)
        if self.client is not None:  # ... or one in use: the client's request fails with it
            self.client.close()

    def pause_reading(self) -> None:  # the payload buffer is never read, so never pause
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass

    def send(self, client: asyncio.Transport, request: bytes) -> None:
        from aiohttp.http import HttpResponseParser

        self.client = client
        # the parser wants an aiohttp BaseProtocol only for pause/resume_reading, defined above
        self.parser = HttpResponseParser(self, asyncio.get_running_loop(), 2**16)  # type: ignore[arg-type]
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        assert self.client is not None
        self.client.write(data)
        for msg, payload in self.parser.feed_data(data)[0]:
            self.keep, self.payload = not msg.should_close, payload
        if self.payload.is_eof():
            self.client = None
            if self.keep:
                self.pool.append(self)


class _Client(asyncio.Protocol):
    """Requests in (Content-Length bodies only, as the mock's clients send), bytes relayed."""

    def __init__(self, upstream: tuple[str, int], pool: list[_Upstream]) -> None:
        self.upstream, self.pool, self.buf = upstream, pool, b""
        self.connecting: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].lower()
        at = head.find(b"content-length:")
        size = int(head[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else 0
        if len(self.buf) < end + 4 + size:
            return
        request, self.buf = self.buf[:end + 4 + size], self.buf[end + 4 + size:]
        if head.startswith(b"get /healthz"):
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        elif self.pool:
            self.pool.pop().send(self.transport, request)
        else:
            task = asyncio.ensure_future(self._connect_and_send(request))
            self.connecting.add(task)
            task.add_done_callback(self.connecting.discard)

    async def _connect_and_send(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, up = await loop.create_connection(lambda: _Upstream(self.pool), *self.upstream)
        up.send(self.transport, request)


async def serve_uvloop(port: int, upstream: str) -> None:
    host, _, up_port = upstream.split("://", 1)[-1].rstrip("/").partition(":")
    pool: list[_Upstream] = []
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: _Client((host, int(up_port or 80)), pool), "127.0.0.1", port)
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=("aiohttp", "uvloop", "nginx"), required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True, help="the mock's base URL, e.g. http://127.0.0.1:18000")
    args = ap.parse_args()
    if args.kind == "nginx":
        run_nginx(args.port, args.upstream)
    import uvloop

    try:
        serve = serve_aiohttp if args.kind == "aiohttp" else serve_uvloop
        uvloop.run(serve(args.port, args.upstream))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
