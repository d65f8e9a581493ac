"""Real `edgeproxy serve` processes and a private redis-server, for the multi-node and chaos tests.

Each node's output goes to a file under the test's tmp_path; `Nodes.logs()` returns it, and
`Nodes.stop()` is called by the tests in a `finally`, so a failing multi-node test can print what
every node said (`pytest` shows it with the failure).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.conftest import REQUIRE_SERVICES

ADMIN = "scaleout-admin"
PROMPT = [{"role": "user", "content": "hello"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check, timeout: float = 10.0, every: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll `check()` until it returns something truthy (returned), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


class RedisServer:
    """A redis-server of this test's own on a free port: it can be killed and restarted empty."""

    def __init__(self, tmp_path: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            if REQUIRE_SERVICES:
                pytest.fail("redis-server is required (EDGEPROXY_REQUIRE_SERVICES=1) but missing")
            pytest.skip("no redis-server on this machine")
        self.exe = exe
        self.dir = tmp_path
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        def up() -> bool:
            try:
                return bool(redis.Redis.from_url(self.url).ping())
            except redis.ConnectionError:
                return False

        wait_until(up, 10, what="redis-server to start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Nodes:
    def __init__(self, procs: list[subprocess.Popen[bytes]], ports: list[int],
                 logs: list[Path]) -> None:
        self.procs = procs
        self.ports = ports
        self.urls = [f"http://127.0.0.1:{p}/v1" for p in ports]
        self.log_paths = logs

    def logs(self) -> str:
        return "\n".join(f"--- node {i} ({p.name}) ---\n{p.read_text(errors='replace')[-20000:]}"
                         for i, p in enumerate(self.log_paths) if p.exists())

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def spawn_node(tmp_path: Path, config: Path, port: int, extra: list[str] | None = None,
               env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"node-{port}.log"
    out: IO[bytes] = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeproxy", "serve", "--config", str(config), "--port", str(port),
         *(extra or [])],
        env=dict(os.environ, EDGEPROXY_ADMIN_KEY=ADMIN, SIM_KEY="sk-sim") | (env or {}),
        stdout=out, stderr=subprocess.STDOUT,
        cwd=tmp_path)  # what a node writes by default (its ledger journal) stays in the test's dir
    out.close()
    return proc, log


def wait_healthy(url: str, timeout: float = 30) -> None:
    def ok() -> bool:
        try:
            return httpx.get(url.removesuffix("/v1") + "/healthz").status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ok, timeout, what=f"{url} to answer /healthz")


def start_nodes(tmp_path: Path, toml: str, n: int = 3, extra: list[str] | None = None,
                env: dict[str, str] | None = None) -> Nodes:
    ports = [free_port() for _ in range(n)]
    path = tmp_path / "nodes.toml"
    path.write_text(toml)
    spawned = [spawn_node(tmp_path, path, p, extra, env) for p in ports]
    nodes = Nodes([s[0] for s in spawned], ports, [s[1] for s in spawned])
    try:
        for url in nodes.urls:
            wait_healthy(url)
    except AssertionError:
        nodes.stop()
        raise AssertionError("nodes did not start\n" + nodes.logs()) from None
    return nodes


@contextmanager
def running(nodes: Nodes) -> Iterator[Nodes]:
    """Stop the nodes at the end; on a failure, attach every node's log to it."""
    try:
        yield nodes
    except BaseException as exc:
        nodes.stop()
        exc.add_note(nodes.logs())
        raise
    nodes.stop()


def toml_for(redis_url: str, ledger: str, endpoints: str, providers: str,
             extra: str = "") -> str:
    return f"""
[server]
listen = "127.0.0.1:0"
[storage]
ledger = "{ledger}"
state = "{redis_url}"
[catalog]
builtin = false
{providers}
[models."test/model"]
context_length = 32000
endpoints = [{endpoints}]
{extra}
"""


def provider(name: str, url: str) -> str:
    return f'[providers.{name}]\nbase_url = "{url}"\napi_key_env = "SIM_KEY"\n'


def make_key(node: str, credits: str | None) -> str:
    body = {"name": "shared"} | ({"credits": credits} if credits else {})
    r = httpx.post(node + "/keys", json=body, headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 201, r.text
    return r.json()["key"]
