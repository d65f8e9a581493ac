"""Slow clients against a real `edgeproxy serve` whose file-descriptor limit is low: the slow ones
are closed, everyone else is served, and the process never runs out of descriptors.

Figures held: with RLIMIT_NOFILE 256 the gateway serves at most (256 − 64) / 2 = 96 client
connections; 400 connections that dribble their request heads (more than the process could hold
descriptors for) are all closed within the header timeout, while ordinary requests made during
the attack are answered 200; at the cap with every connection in a request, a new connection is
answered 503 with Retry-After at once.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from edgeproxy.listener import RESERVED_FDS
from tests.conftest import SimHandle, Stack
from tests.nodes import free_port, wait_healthy, wait_until

FD_LIMIT = 256
CAP = (FD_LIMIT - RESERVED_FDS) // 2
SLOW = 400
HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
CHAT = {"model": "test/model", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4}


class Gateway:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def serve(tmp_path: Path, sim: SimHandle, server: str = "") -> Iterator[Gateway]:
    """`edgeproxy serve` with RLIMIT_NOFILE at FD_LIMIT and a 2 s header and body timeout."""
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[server]
listen = "127.0.0.1:0"
auth = "none"
header_timeout_s = 2
body_timeout_s = 2
{server}
[storage]
ledger = "sqlite:///{tmp_path}/ledger.db"
journal = "{tmp_path}/journal"
[catalog]
builtin = false
[providers.acme]
base_url = "{sim.base_url}"
api_key_env = "SIM_KEY"
first_byte_timeout_s = 30
[models."test/model"]
context_length = 32000
endpoints = [{{ provider = "acme", model = "m", prompt = 1, completion = 1 }}]
""")
    port = free_port()
    log = tmp_path / "gateway.log"

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))

    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeproxy", "serve", "--config", str(config), "--port",
             str(port)], env=dict(os.environ, SIM_KEY="sk-sim"), stdout=out,
            stderr=subprocess.STDOUT, preexec_fn=low_fd_limit)
    gw = Gateway(proc, port, log)
    try:
        wait_healthy(gw.url)
        yield gw
    except BaseException as exc:
        exc.add_note("--- gateway log ---\n" + gw.output()[-20000:])
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def closed(sock: socket.socket) -> bool:
    """The gateway closed this connection (whatever it said before)."""
    try:
        while sock.recv(65536):  # (a 408, for a head that came too slowly)
            pass
        return True
    except BlockingIOError:
        return False
    except OSError:  # reset: it closed with our bytes unread
        return True


def metric(gw: Gateway, line: str) -> float:
    text = httpx.get(gw.url + "/metrics").text
    for row in text.splitlines():
        if row.startswith(line + " "):
            return float(row.rsplit(" ", 1)[1])
    return 0.0


def test_slow_heads_are_closed_while_others_are_served(stack: Stack, tmp_path: Path) -> None:
    sim = stack.sim(max_reply_tokens=4)
    with serve(tmp_path, sim) as gw:
        assert f"at most {CAP} client connections (file-descriptor limit {FD_LIMIT}" \
            in gw.output()
        slow: list[socket.socket] = []
        try:
            for _ in range(SLOW):  # more than the process has descriptors for
                s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
                s.sendall(HEAD)
                s.setblocking(False)
                slow.append(s)

            served = 0
            open_ = list(slow)
            deadline = time.monotonic() + 30  # (the header timeout is 2 s)
            while open_:
                # Each slow client sends one more byte of its head, ten a second: never a
                # whole head.
                for s in open_:
                    with contextlib.suppress(OSError):
                        s.send(b"x")
                if served < 5:  # an ordinary client, on a new connection each time
                    r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)
                    assert r.status_code == 200, r.text
                    served += 1
                open_ = [s for s in open_ if not closed(s)]
                assert time.monotonic() < deadline, f"{len(open_)} slow connections still open"
                time.sleep(0.1)  # the dribble's pace
            assert served == 5
        finally:
            for s in slow:
                s.close()
        assert gw.proc.poll() is None
        assert metric(gw, 'edgeproxy_client_connections{kind="limit"}') == CAP
        assert metric(gw, 'edgeproxy_client_connections_closed_total{reason="evicted"}') > 0
        assert metric(gw, 'edgeproxy_client_connections_closed_total{reason="head_timeout"}') > 0
        out = gw.output()
        assert "Too many open files" not in out and "Traceback" not in out, out[-5000:]
        r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)
        assert r.status_code == 200


def test_a_stalled_body_is_answered_408(stack: Stack, tmp_path: Path) -> None:
    sim = stack.sim(max_reply_tokens=4)
    with serve(tmp_path, sim) as gw, socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\"")
        s.settimeout(20)
        answer = s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"the request body stalled" in answer


def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503(
    stack: Stack, tmp_path: Path,
) -> None:
    sim = stack.sim(fault="hang")  # requests stay in flight
    with serve(tmp_path, sim, "max_connections = 4") as gw:
        busy: list[socket.socket] = []
        try:
            body = b'{"model": "test/model", "messages": [{"role": "user", "content": "x"}]}'
            for _ in range(4):
                s = socket.create_connection(("127.0.0.1", gw.port))
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                busy.append(s)
            wait_until(lambda: sim.stats()["active"] == 4, 10,
                       what="four requests in flight upstream")
            with socket.create_connection(("127.0.0.1", gw.port)) as s:
                s.settimeout(10)
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
            head, _, payload = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503"), answer
            assert b"Retry-After: 1" in head
            assert b"connection limit (4)" in payload
        finally:
            for s in busy:
                s.close()
        # The busy ones gone, the next client is served again.
        sim.configure(fault="")
        wait_until(lambda: httpx.post(gw.url + "/v1/chat/completions", json=CHAT,
                                      timeout=10).status_code == 200, 20,
                   what="a request to be served once the cap has room")
        assert metric(gw, 'edgeproxy_client_connections_closed_total{reason="refused"}') >= 1
