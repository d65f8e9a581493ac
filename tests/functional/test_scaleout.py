"""Many nodes and workers behave like one gateway (SPEC §8): three real `edgeproxy serve`
processes share one Redis and one PostgreSQL. Each test starts its own redis-server on a free
port, so it can be killed mid-run without touching anything else on the machine."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx

from tests.conftest import Stack
from tests.nodes import (
    PROMPT,
    free_port,
    make_key,
    provider,
    running,
    start_nodes,
    toml_for,
    wait_healthy,
    wait_until,
)


def test_free_limit_holds_across_three_nodes(stack: Stack, redis_server, pg_url, tmp_path) -> None:
    sim = stack.sim(max_reply_tokens=1)
    with running(start_nodes(tmp_path, toml_for(
        redis_server[0], pg_url, '{ provider = "free", model = "m" }',
        provider("free", sim.base_url)))) as nodes:
        key = make_key(nodes.urls[0], None)
        auth = {"Authorization": f"Bearer {key}"}
        codes = [httpx.post(nodes.urls[i % 3] + "/chat/completions", headers=auth,
                            json={"model": "test/model", "messages": PROMPT}).status_code
                 for i in range(21)]
        assert codes[:20] == [200] * 20
        assert codes[20] == 429
        r = httpx.post(nodes.urls[1] + "/chat/completions", headers=auth,
                       json={"model": "test/model", "messages": PROMPT})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert sim.count() == 20


def test_300_concurrent_requests_over_three_nodes_never_overspend(
    stack: Stack, redis_server, pg_url, tmp_path
) -> None:
    sim = stack.sim(reply=" ".join(["w"] * 100), latency_ms=30)
    # each request: 100 completion tokens at $100/M = $0.01 (max_tokens 100 reserves the same)
    with running(start_nodes(tmp_path, toml_for(
        redis_server[0], pg_url, '{ provider = "acme", model = "m", completion = 100 }',
        provider("acme", sim.base_url)))) as nodes:
        key = make_key(nodes.urls[0], "1")  # affords 100
        auth = {"Authorization": f"Bearer {key}"}

        async def fire() -> list[int]:
            async with httpx.AsyncClient(timeout=60) as client:
                async def one(i: int) -> int:
                    r = await client.post(nodes.urls[i % 3] + "/chat/completions", headers=auth,
                                          json={"model": "test/model", "messages": PROMPT,
                                                "max_tokens": 100})
                    return r.status_code
                return await asyncio.gather(*(one(i) for i in range(300)))

        codes = asyncio.run(fire())
        assert set(codes) <= {200, 402}
        assert codes.count(200) <= 100
        assert codes.count(200) >= 90  # the bound is not met by refusing everything

        def usage() -> float:
            r = httpx.get(nodes.urls[2] + "/credits", headers=auth)
            return float(r.json()["data"]["total_usage"])

        # every answer charged (once flushed and seen by node 2): $0.01 each, and no more
        spent = codes.count(200) * 10_000
        wait_until(lambda: round(usage() * 1_000_000) >= spent, 15, what="the charges")
        assert round(usage() * 1_000_000) == spent <= 1_000_000
    assert sim.count() == codes.count(200)


def test_a_failure_on_one_node_demotes_the_endpoint_on_all(
    stack: Stack, redis_server, pg_url, tmp_path
) -> None:
    bad = stack.sim(fault="status", fault_status=500)
    good = stack.sim()
    with running(start_nodes(tmp_path, toml_for(
        redis_server[0], pg_url,
        '{ provider = "bad", model = "m", prompt = 1 }, { provider = "good", model = "m", prompt = 30 }',
        provider("bad", bad.base_url) + provider("good", good.base_url)))) as nodes:
        key = make_key(nodes.urls[0], "5")
        auth = {"Authorization": f"Bearer {key}"}
        for _ in range(4):  # node 0 alone sees the failures
            r = httpx.post(nodes.urls[0] + "/chat/completions", headers=auth,
                           json={"model": "test/model", "messages": PROMPT})
            assert r.status_code == 200
        seen_bad = bad.count()
        for node in nodes.urls[1:]:
            def status(node: str = node) -> dict[str, int]:  # 0 ok, -1 degraded
                eps = httpx.get(node + "/models/test/model/endpoints").json()["data"]["endpoints"]
                return {e["provider_name"]: e["status"] for e in eps}

            wait_until(lambda: status() == {"bad": -1, "good": 0}, 10,
                       what=f"{node} to see node 0's failures")
            for _ in range(5):
                r = httpx.post(node + "/chat/completions", headers=auth,
                               json={"model": "test/model", "messages": PROMPT})
                assert r.json()["provider"] == "good"
        assert bad.count() == seen_bad  # the other nodes never tried it first


def test_killing_redis_mid_run_loses_no_completed_request(
    stack: Stack, redis_server, pg_url, tmp_path
) -> None:
    url, redis_proc = redis_server
    sim = stack.sim(latency_ms=5)
    done: list[str] = []
    with running(start_nodes(tmp_path, toml_for(
        url, pg_url, '{ provider = "acme", model = "m", prompt = 1, completion = 1 }',
        provider("acme", sim.base_url)))) as nodes:
        key = make_key(nodes.urls[0], "10")
        auth = {"Authorization": f"Bearer {key}"}

        async def load() -> None:
            stop = asyncio.Event()
            async with httpx.AsyncClient(timeout=30) as client:
                async def worker(i: int) -> None:
                    while not stop.is_set():
                        r = await client.post(nodes.urls[i % 3] + "/chat/completions",
                                              headers=auth,
                                              json={"model": "test/model", "messages": PROMPT})
                        if r.status_code == 200:
                            done.append(r.json()["id"])

                async def answered(n: int) -> None:
                    deadline = time.monotonic() + 30
                    while len(done) < n:
                        assert time.monotonic() < deadline, f"{len(done)} of {n} answered"
                        await asyncio.sleep(0.02)

                tasks = [asyncio.ensure_future(worker(i)) for i in range(6)]
                await answered(20)
                redis_proc.kill()  # Redis dies mid-run; the nodes go on spending their leases
                await answered(len(done) + 20)
                stop.set()
                await asyncio.gather(*tasks)

        asyncio.run(load())
        ready = httpx.get(nodes.urls[0].removesuffix("/v1") + "/readyz").json()
        assert ready["state"].startswith("local")
    import asyncpg

    async def ids() -> set[str]:
        conn = await asyncpg.connect(pg_url)
        try:
            return {r["id"] for r in await conn.fetch("SELECT id FROM generations")}
        finally:
            await conn.close()

    stored = asyncio.run(ids())
    assert set(done) <= stored, f"{len(set(done) - stored)} completed requests not in the ledger"


def test_workers_share_a_port_restart_and_refuse_memory_state(
    stack: Stack, redis_server, tmp_path
) -> None:
    sim = stack.sim()
    port = free_port()
    mem = tmp_path / "mem.toml"
    mem.write_text(f'[server]\nlisten = "127.0.0.1:{port}"\nauth = "none"\n[storage]\n'
                   f'ledger = "sqlite:///{tmp_path}/a.db"\n')
    p = subprocess.run([sys.executable, "-m", "edgeproxy", "serve", "--config", str(mem),
                        "--workers", "2"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "redis" in p.stderr
    cfg = tmp_path / "w.toml"
    cfg.write_text(f"""[server]\nlisten = "127.0.0.1:{port}"\nauth = "none"\n[storage]
ledger = "sqlite:///{tmp_path}/w.db"\nstate = "{redis_server[0]}"\n[catalog]\nbuiltin = false
{provider("acme", sim.base_url)}[models."test/model"]\ncontext_length = 1000
endpoints = [{{ provider = "acme", model = "m" }}]\n""")
    sup = subprocess.Popen([sys.executable, "-m", "edgeproxy", "serve", "--config", str(cfg),
                            "--workers", "2"], env=dict(os.environ, SIM_KEY="k"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)

        def children() -> list[str]:
            return subprocess.run(["pgrep", "-P", str(sup.pid)], capture_output=True,
                                  text=True).stdout.split()

        first = wait_until(lambda: len(c := children()) == 2 and c, 10, what="two workers")
        os.kill(int(first[0]), signal.SIGKILL)  # a worker dies: it is replaced
        wait_until(lambda: len(c := children()) == 2 and first[0] not in c, 30,
                   what="the worker to be replaced")
        for _ in range(10):
            r = httpx.post(base + "/v1/chat/completions",
                           json={"model": "test/model", "messages": PROMPT})
            assert r.status_code == 200
    finally:
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=45) == 0
