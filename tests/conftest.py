"""Shared harness: real simulated providers and real gateways on loopback, served from one
background uvloop thread, so tests drive them with ordinary sync or async clients (the openai SDK,
httpx, aiohttp) exactly as a user would.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Generator, Iterable, Iterator
from datetime import UTC, datetime
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
from edgeproxy.listener import Listener, connection_cap, listen

T = TypeVar("T")

REQUIRE_SERVICES = os.environ.get("EDGEPROXY_REQUIRE_SERVICES") == "1"
# One client for the simulators' control endpoints: a new httpx client costs ~70 ms (TLS setup).
_HTTP = httpx.Client(timeout=30)
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
        _HTTP.post(self.root + "/_sim/config", json=opts).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        return _HTTP.get(self.root + "/_sim/requests").json()

    def stats(self) -> dict[str, Any]:
        return _HTTP.get(self.root + "/_sim/stats").json()

    def count(self) -> int:
        return int(self.stats()["requests"])


class GatewayHandle:
    def __init__(self, gw: Gateway, runner: web.AppRunner, port: int) -> None:
        self.gw = gw
        self.runner = runner
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/v1"


class Stack:
    """Per-test servers; everything started here is stopped at the end of the test."""

    def __init__(self, lt: LoopThread, tmp: Path) -> None:
        self.lt = lt
        self.tmp = tmp
        self._runners: list[web.AppRunner] = []
        self._listeners: list[Listener] = []

    def sim(self, protocol: str = "openai", **opts: Any) -> SimHandle:
        async def go() -> web.AppRunner:
            return await simulate.start(protocol, "127.0.0.1", 0, simulate.SimOptions(**opts))

        runner = self.lt.run(go())
        self._runners.append(runner)
        return SimHandle(protocol, runner)

    def gateway(self, cfg: dict[str, Any], seed: int = 1234) -> GatewayHandle:
        storage = cfg.setdefault(
            "storage", {"ledger": f"sqlite:///{self.tmp}/ledger-{len(self._runners)}.db"})
        storage.setdefault("journal", str(self.tmp / "journal"))  # not the working directory
        return self.gateway_from(parse(cfg), seed)

    def gateway_from(self, config: Config, seed: int = 1234) -> GatewayHandle:
        async def go() -> tuple[Gateway, web.AppRunner, Listener]:
            gw = Gateway(config, seed=seed)
            runner = web.AppRunner(
                make_app(config, gw), handler_cancellation=True, access_log=None,
                shutdown_timeout=2,
            )
            await runner.setup()
            # Served as `edgeproxy serve` serves it: aiohttp behind edgeproxy.listener.
            server = config.server
            listener = await listen(runner, "127.0.0.1", 0,
                                    cap=connection_cap(server.max_connections)[0],
                                    header_timeout_s=server.header_timeout_s,
                                    metrics=gw.metrics)
            return gw, runner, listener

        gw, runner, listener = self.lt.run(go())
        self._runners.append(runner)
        self._listeners.append(listener)
        return GatewayHandle(gw, runner, listener.port)

    def close(self) -> None:
        for listener in self._listeners:  # (before the cleanups, in the loop's order)
            self.lt.loop.call_soon_threadsafe(listener.close)
        self._listeners.clear()
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
def redis_server(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A redis-server of the test's own (tests.nodes.RedisServer): (url, process)."""
    from tests.nodes import RedisServer

    server = RedisServer(tmp_path)
    yield server.url, server.proc
    server.kill()


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


# --------------------------------------------------------------------------- translation matrix
# `make matrix` runs tests/functional/test_matrix.py with EDGEPROXY_MATRIX_OUT set: every test
# marked matrix(ingress, protocol, aspect) reports its outcome, and the session ends by writing
# the table (issue 10, "a translation matrix ... generated from those tests by one command").
# Without the variable these hooks do nothing.

MATRIX_OUT = "EDGEPROXY_MATRIX_OUT"
MATRIX_ROWS = {  # ingress dialect -> the SDK call that speaks it
    "chat": "openai `chat.completions`",
    "completions": "openai `completions`",
    "responses": "openai `responses`",
    "messages": "anthropic `messages`",
    "embeddings": "openai `embeddings`",
}
MATRIX_COLUMNS = ("openai", "anthropic", "gemini", "openai-responses")
MATRIX_ASPECTS = {
    "text": "a whole answer's text and finish reason, in the dialect's own fields and words "
            "(embeddings: the vectors, in both encodings)",
    "stream": "streamed text as the SDK's stream helper reassembles it, and the finish reason",
    "tools": "a tool call in the dialect's form (name, JSON arguments), plain and streamed; "
             "its result sent back reaches the upstream in the protocol's form",
    "errors": "an upstream 400 (plain and streamed), an unknown model and an upstream 500 reach "
              "the client as the dialect's error type and body",
    "usage": "token counts in the dialect's usage fields and the gateway's cost, exact to the "
             "micro-dollar from the endpoint's prices (plain and streamed), the same in "
             "/generation",
}
_EMBED_ONLY_OPENAI = ("embeddings need an openai-protocol upstream; the gateway answers 404 "
                      "(the errors cell tests it)")
MATRIX_NOT_APPLICABLE = {  # (ingress, protocol or "*", aspect) -> why no test can exist
    ("completions", "*", "tools"): "the legacy completions API has no tools",
    ("embeddings", "*", "stream"): "embeddings are not streamed",
    ("embeddings", "*", "tools"): "embeddings call no tools",
    **{("embeddings", p, a): _EMBED_ONLY_OPENAI
       for p in MATRIX_COLUMNS if p != "openai" for a in ("text", "usage")},
}
_RANK = {"passed": 0, "skipped": 1, "xfailed": 2, "failed": 3}
_MATRIX = pytest.StashKey[dict[str, tuple[tuple[str, str, str], str, str]]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep the worst phase outcome of each matrix-marked test: (cell, outcome, note)."""
    report = yield
    marker = item.get_closest_marker("matrix")
    if marker is None or not os.environ.get(MATRIX_OUT):
        return report
    if report.failed:
        outcome, note = "failed", f"failed: `{item.nodeid}`"
    elif report.skipped and hasattr(report, "wasxfail"):
        outcome, note = "xfailed", f"known bug (xfail): {report.wasxfail}"
    elif report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        outcome, note = "skipped", f"skipped: {reason}"
    else:
        outcome, note = "passed", ""
    results = item.config.stash.setdefault(_MATRIX, {})
    seen = results.get(item.nodeid)
    if seen is None or _RANK[outcome] > _RANK[seen[1]]:
        ingress, protocol, aspect = marker.args
        results[item.nodeid] = ((ingress, protocol, aspect), outcome, note)
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    out = os.environ.get(MATRIX_OUT)
    results = session.config.stash.get(_MATRIX, {})
    if out and results:
        table = _matrix_table(results.values(), datetime.now(UTC).date().isoformat())
        (session.config.rootpath / out).write_text(table, encoding="utf-8")


def _matrix_table(results: Iterable[tuple[tuple[str, str, str], str, str]], day: str) -> str:
    cells: dict[tuple[str, str, str], tuple[str, str]] = {}
    for cell, outcome, note in results:  # a cell tested by several tests shows the worst
        if cell not in cells or _RANK[outcome] > _RANK[cells[cell][0]]:
            cells[cell] = (outcome, note)
    notes: list[str] = []

    def ref(note: str) -> str:
        if note not in notes:
            notes.append(note)
        return f" [{notes.index(note) + 1}]"

    def mark(ingress: str, protocol: str, aspect: str) -> str:
        outcome, note = cells.get((ingress, protocol, aspect), ("", ""))
        na = (MATRIX_NOT_APPLICABLE.get((ingress, protocol, aspect))
              or MATRIX_NOT_APPLICABLE.get((ingress, "*", aspect)))
        if not outcome:
            return "n/a" + ref(na) if na else "–"
        return {"passed": "✓", "failed": "✗", "xfailed": "✗", "skipped": "skipped"}[outcome] + (
            ref(note) if note else "")

    counts = {k: sum(o == k for o, _ in cells.values()) for k in _RANK}
    lines = [
        "# Translation matrix",
        "",
        "Every client dialect (rows) through every upstream protocol (columns). Each mark is the",
        "outcome of tests in `tests/functional/test_matrix.py` that drive the running gateway",
        "with the official SDK against a simulated provider of that protocol.",
        "",
        f"Regenerate with `make matrix` (do not edit by hand). Generated {day}.",
        "",
        "Legend: ✓ passed · ✗ failed (a known bug when its note says xfail) · n/a not applicable"
        " (its note says why) · – not run · [n] see the notes below the table.",
        "",
        *(f"- **{name}**: {what}" for name, what in MATRIX_ASPECTS.items()),
        "",
        "| ingress \\ upstream | " + " | ".join(MATRIX_COLUMNS) + " |",
        "|---" * (len(MATRIX_COLUMNS) + 1) + "|",
    ]
    for ingress, sdk in MATRIX_ROWS.items():
        row = ["<br>".join(f"{a} {mark(ingress, p, a)}" for a in MATRIX_ASPECTS)
               for p in MATRIX_COLUMNS]
        lines.append(f"| **{ingress}** ({sdk}) | " + " | ".join(row) + " |")
    lines += ["", f"Cells: {counts['passed']} ✓ · {counts['failed'] + counts['xfailed']} ✗ "
              f"({counts['xfailed']} of them known bugs) · {counts['skipped']} skipped.", ""]
    lines += [f"{n}. {note}" for n, note in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"
