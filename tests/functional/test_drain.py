"""SIGTERM under load: in-flight requests finish and every completed one is in the ledger."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time

import httpx

from tests.conftest import Stack, config
from tests.nodes import free_port, wait_healthy


def test_sigterm_drains_streams_and_the_ledger(stack: Stack, tmp_path) -> None:
    sim = stack.sim(latency_ms=30, tokens_per_s=200, max_reply_tokens=20)
    port = free_port()
    cfg = config([("acme", sim, {"prompt": "1", "completion": "1"})])
    db = tmp_path / "ledger.db"
    lines = [
        "[server]", f'listen = "127.0.0.1:{port}"', 'auth = "none"',
        "[storage]", f'ledger = "sqlite:///{db}"',
        "[providers.acme]", f'base_url = "{sim.base_url}"',
        '[models."test/model"]', "context_length = 32000",
        'endpoints = [{ provider = "acme", model = "m", prompt = 1, completion = 1 }]',
    ]
    assert cfg["models"]  # the same shape as the in-process gateways
    path = tmp_path / "gw.toml"
    path.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "edgeproxy", "serve", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ))
    try:
        wait_healthy(f"http://127.0.0.1:{port}", 20)
        completed = asyncio.run(_load(port, proc))
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 0
    assert len(completed) >= 20
    conn = sqlite3.connect(db)
    ids = {r[0] for r in conn.execute("SELECT id FROM generations")}
    conn.close()
    assert set(completed) <= ids, f"{len(set(completed) - ids)} completed requests missing"


async def _load(port: int, proc: subprocess.Popen) -> list[str]:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    done: list[str] = []
    give_up = time.monotonic() + 30  # (they stop when the gateway stops accepting)

    async def worker(client: httpx.AsyncClient, stream: bool) -> None:
        while time.monotonic() < give_up:
            try:
                body = {"model": "test/model", "stream": stream,
                        "messages": [{"role": "user", "content": "go"}]}
                if stream:
                    async with client.stream("POST", url, json=body) as r:
                        text = "".join([line async for line in r.aiter_lines()])
                    if r.status_code == 200 and text.endswith("data: [DONE]"):
                        done.append(text.split('"id":"')[1].split('"')[0])
                else:
                    r = await client.post(url, json=body)
                    if r.status_code == 200:
                        done.append(r.json()["id"])
            except httpx.TransportError:
                return  # the gateway stopped accepting

    async with httpx.AsyncClient(timeout=30) as client:
        tasks = [asyncio.ensure_future(worker(client, i % 2 == 0)) for i in range(16)]
        while len(done) < 40:  # SIGTERM under load: once it is well under way
            assert time.monotonic() < give_up and proc.poll() is None, f"{len(done)} answered"
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*tasks)
    return done
