"""One pooled aiohttp ClientSession per provider; aiohttp's errors become Upstream* errors.

The gateway never follows a URL a client gave: every request goes to a provider's configured
`base_url` (SPEC §10), and redirects are not followed.
"""

from __future__ import annotations

import asyncio

import aiohttp
from multidict import CIMultiDictProxy

from .config import ProviderConfig
from .errors import UpstreamConnectionError, UpstreamError, UpstreamTimeout
from .protocols.base import UpstreamCall

__all__ = ["Upstreams"]


def _resolver() -> aiohttp.abc.AbstractResolver:
    try:
        return aiohttp.AsyncResolver()  # aiodns
    except (RuntimeError, ImportError):  # pragma: no cover - aiodns missing or broken
        return aiohttp.ThreadedResolver()


class Upstreams:
    """Sessions by provider name, created on first use inside the running loop."""

    def __init__(self, providers: dict[str, ProviderConfig]) -> None:
        self._providers = providers
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._resolver: aiohttp.abc.AbstractResolver | None = None

    def session(self, name: str) -> aiohttp.ClientSession:
        s = self._sessions.get(name)
        if s is None:
            prov = self._providers[name]
            if self._resolver is None:
                self._resolver = _resolver()
            conn = aiohttp.TCPConnector(
                limit=prov.max_connections,
                keepalive_timeout=30,
                resolver=self._resolver,
                ttl_dns_cache=60,
                enable_cleanup_closed=False,
            )
            s = aiohttp.ClientSession(
                connector=conn,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=prov.connect_timeout_s, sock_read=prov.idle_timeout_s
                ),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
                headers=prov.headers or None,
                raise_for_status=False,
            )
            self._sessions[name] = s
        return s

    async def post(
        self, name: str, call: UpstreamCall, deadline: float | None = None
    ) -> aiohttp.ClientResponse:
        """Send one attempt and wait for the response head, bounded by first_byte_timeout_s and
        by the request's `deadline` (loop time), whichever comes first."""
        prov = self._providers[name]
        session = self.session(name)
        when = asyncio.get_running_loop().time() + prov.first_byte_timeout_s
        if deadline is not None and deadline < when:
            when = deadline
        try:
            async with asyncio.timeout_at(when):
                return await session.post(
                    call.url, data=call.body, headers=call.headers, allow_redirects=False
                )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _failed(name, prov, exc) from None

    async def fetch(
        self, name: str, call: UpstreamCall, deadline: float
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        """A whole (non-streamed) answer: status, headers and body, all of it bounded as `post`
        bounds the head: the answer comes whole once generated."""
        prov = self._providers[name]
        session = self.session(name)
        when = min(asyncio.get_running_loop().time() + prov.first_byte_timeout_s, deadline)
        try:
            async with asyncio.timeout_at(when):
                resp = await session.post(
                    call.url, data=call.body, headers=call.headers, allow_redirects=False
                )
                try:
                    return resp.status, resp.headers, await resp.read()
                finally:
                    resp.release()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _failed(name, prov, exc) from None

    async def read(self, name: str, resp: aiohttp.ClientResponse) -> bytes:
        try:
            return await resp.read()
        except TimeoutError:
            raise UpstreamTimeout(f"{name}: response body stalled", name) from None
        except aiohttp.ClientError as exc:
            raise UpstreamConnectionError(f"{name}: {_describe(exc)}", name) from None

    async def close(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for s in sessions.values():
            await s.close()
        if self._resolver is not None:
            await self._resolver.close()
            self._resolver = None


def _failed(name: str, prov: ProviderConfig, exc: BaseException) -> UpstreamError:
    """What a request to provider `name` that timed out or could not connect raises."""
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"{name}: no response within {prov.first_byte_timeout_s:g} s",
                               name)
    return UpstreamConnectionError(f"{name}: {_describe(exc)}", name)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the provider closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the response body was cut short"
    return type(exc).__name__ + (f": {exc}" if str(exc) else "")
