"""Shared harness: real simulated providers and real gateways on loopback, served from one
background uvloop thread, so tests drive them with ordinary sync or async clients (the openai SDK,
httpx, aiohttp) exactly as a user would.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvloop
from aiohttp import web

from edgeproxy import simulate
from edgeproxy.app import make_app
from edgeproxy.config import Config, parse
from edgeproxy.gateway import Gateway

T = TypeVar("T")

REQUIRE_SERVICES = os.environ.get("EDGEPROXY_REQUIRE_SERVICES") == "1"
_BASE_PATH = {"openai": "/v1", "anthropic": "/v1", "gemini": "/v1beta", "openai-responses": "/v1"}


class LoopThread:
    """A uvloop event loop running in a daemon thread; `run()` executes a coroutine on it."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class SimHandle:
    def __init__(self, protocol: str, runner: web.AppRunner) -> None:
        self.protocol = protocol
        self.runner = runner
        self.port = runner.addresses[0][1]
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = self.root + _BASE_PATH[protocol]

    def configure(self, **opts: Any) -> None:
        httpx.post(self.root + "/_sim/config", json=opts).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        return httpx.get(self.root + "/_sim/requests").json()

    def stats(self) -> dict[str, Any]:
        return httpx.get(self.root + "/_sim/stats").json()

    def count(self) -> int:
        return int(self.stats()["requests"])


class GatewayHandle:
    def __init__(self, gw: Gateway, runner: web.AppRunner) -> None:
        self.gw = gw
        self.runner = runner
        self.port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/v1"


class Stack:
    """Per-test servers; everything started here is stopped at the end of the test."""

    def __init__(self, lt: LoopThread, tmp: Path) -> None:
        self.lt = lt
        self.tmp = tmp
        self._runners: list[web.AppRunner] = []

    def sim(self, protocol: str = "openai", **opts: Any) -> SimHandle:
        async def go() -> web.AppRunner:
            return await simulate.start(protocol, "127.0.0.1", 0, simulate.SimOptions(**opts))

        runner = self.lt.run(go())
        self._runners.append(runner)
        return SimHandle(protocol, runner)

    def gateway(self, cfg: dict[str, Any], seed: int = 1234) -> GatewayHandle:
        cfg.setdefault("storage", {"ledger": f"sqlite:///{self.tmp}/ledger-{len(self._runners)}.db"})
        return self.gateway_from(parse(cfg), seed)

    def gateway_from(self, config: Config, seed: int = 1234) -> GatewayHandle:
        async def go() -> tuple[Gateway, web.AppRunner]:
            gw = Gateway(config, seed=seed)
            runner = web.AppRunner(
                make_app(config, gw), handler_cancellation=True, access_log=None,
                shutdown_timeout=2,
            )
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            return gw, runner

        gw, runner = self.lt.run(go())
        self._runners.append(runner)
        return GatewayHandle(gw, runner)

    def close(self) -> None:
        for r in reversed(self._runners):
            self.lt.run(r.cleanup())
        self._runners.clear()


def config(
    endpoints: list[tuple[str, SimHandle, dict[str, Any]]],
    model: str = "test/model",
    context_length: int = 32000,
    server: dict[str, Any] | None = None,
    routing: dict[str, Any] | None = None,
    model_extra: dict[str, Any] | None = None,
    providers_extra: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A config dict for one model served by the given (provider name, simulator, endpoint) list."""
    providers: dict[str, dict[str, Any]] = {}
    eps = []
    for name, sim, ep in endpoints:
        providers[name] = {
            "protocol": sim.protocol,
            "base_url": sim.base_url,
            "api_key_env": "EDGEPROXY_TEST_UPSTREAM_KEY",
            "first_byte_timeout_s": 5.0,
            "idle_timeout_s": 5.0,
            **(providers_extra or {}).get(name, {}),
        }
        eps.append({"provider": name, "model": f"{name}-upstream-model", **ep})
    return {
        "server": {"listen": "127.0.0.1:0", "auth": "none", **(server or {})},
        "routing": routing or {},
        "providers": providers,
        "models": {model: {"context_length": context_length, "endpoints": eps,
                           **(model_extra or {})}},
    }


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture
def stack(
    loop_thread: LoopThread, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Stack]:
    monkeypatch.setenv("EDGEPROXY_TEST_UPSTREAM_KEY", "sk-upstream-provider-key")
    s = Stack(loop_thread, tmp_path)
    yield s
    s.close()


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Async tests run on uvloop, as the gateway does."""
    return {"uvloop": uvloop.new_event_loop}


def _pg_up() -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=0.5).close()
        return True
    except OSError:
        return False


@pytest.fixture
def pg_url(loop_thread: LoopThread) -> Iterator[str]:
    """A fresh PostgreSQL database on 127.0.0.1:5432, dropped afterwards. Skipped where none
    runs, unless EDGEPROXY_REQUIRE_SERVICES=1 (CI), which makes it a failure."""
    if not _pg_up():
        if REQUIRE_SERVICES:
            pytest.fail("PostgreSQL is required (EDGEPROXY_REQUIRE_SERVICES=1) but not reachable")
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    import secrets

    import asyncpg

    name = "edgeproxy_test_" + secrets.token_hex(6)
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    loop_thread.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        loop_thread.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
