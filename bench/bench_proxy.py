"""Gateway overhead against the direct path, on the same simulated upstream, in one run.

    python bench/bench_proxy.py [--rounds 5] [--requests 400] [--streams 16] [--seconds 5]

Starts `edgeproxy simulate-provider` (pinned to CPU 1) and `edgeproxy serve` in front of it
(pinned to CPU 0), then per round, interleaved: light-load latency (one request at a time,
direct vs via the gateway), throughput at 64 connections (wrk when installed, else an aiohttp
client), and streaming TTFB/total at N concurrent streams. Prints medians over rounds and the
overheads (via − direct) as a Markdown table; `--json FILE` keeps the raw figures.
Everything stays on 127.0.0.1 and every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

BODY = {"model": "bench/model", "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 16}
WRK_LUA = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%f %%f %%f\\n", summary.requests,
    summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpu: int, argv: list[str]) -> list[str]:
    return (["taskset", "-c", str(cpu)] if shutil.which("taskset") else []) + argv


def wait_http(url: str, timeout: float = 20) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} never answered")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


async def light_latency(url: str, n: int) -> tuple[float, float]:
    async with aiohttp.ClientSession() as s:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            async with s.post(url, json=BODY) as r:
                await r.read()
                assert r.status == 200, r.status
            times.append((time.perf_counter() - t) * 1000)
    return pct(times, 0.5), pct(times, 0.99)


async def py_throughput(url: str, seconds: float, conc: int = 64) -> float:
    stop = time.monotonic() + seconds
    count = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as s:
        async def worker() -> None:
            nonlocal count
            while time.monotonic() < stop:
                async with s.post(url, json=BODY) as r:
                    await r.read()
                count += 1
        await asyncio.gather(*(worker() for _ in range(conc)))
    return count / seconds


def wrk_throughput(url: str, seconds: float, conc: int = 64) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_LUA % json.dumps(BODY))
    try:
        out = subprocess.run(
            pinned(1, ["wrk", "-t1", f"-c{conc}", f"-d{seconds:g}s", "-s", f.name, url]),
            capture_output=True, text=True, timeout=seconds + 30,
        ).stdout
    finally:
        os.unlink(f.name)
    line = next(x for x in out.splitlines() if x.startswith("RESULT"))
    _, reqs, dur, _p50, _p99 = line.split()
    return int(reqs) / float(dur)


async def streams(url: str, conc: int, seconds: float) -> tuple[list[float], list[float]]:
    ttfb: list[float] = []
    total: list[float] = []
    body = dict(BODY, stream=True)
    stop = time.monotonic() + seconds
    async with aiohttp.ClientSession() as s:
        async def worker() -> None:
            while time.monotonic() < stop:
                t = time.perf_counter()
                async with s.post(url, json=body) as r:
                    first = None
                    async for _ in r.content.iter_any():
                        if first is None:
                            first = time.perf_counter()
                    ttfb.append(((first or time.perf_counter()) - t) * 1000)
                    total.append((time.perf_counter() - t) * 1000)
        await asyncio.gather(*(worker() for _ in range(conc)))
    return ttfb, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=400, help="light-load requests per round")
    ap.add_argument("--seconds", type=float, default=5, help="throughput and stream run length")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--tokens-per-s", type=float, default=400, help="simulated stream pacing")
    ap.add_argument("--json", help="write the raw figures here")
    args = ap.parse_args()

    sim_port, gw_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="edgeproxy-bench-"))
    cfg = tmp / "edgeproxy.toml"
    cfg.write_text(f"""
[server]
listen = "127.0.0.1:{gw_port}"
auth = "none"
[storage]
ledger = "sqlite:///{tmp}/ledger.db"
[providers.sim]
base_url = "http://127.0.0.1:{sim_port}/v1"
api_key_env = "BENCH_UPSTREAM_KEY"
[models."bench/model"]
context_length = 128000
endpoints = [{{ provider = "sim", model = "sim-model", prompt = 1, completion = 1 }}]
""")
    env = dict(os.environ, BENCH_UPSTREAM_KEY="sk-bench")
    py = sys.executable
    procs = [
        subprocess.Popen(pinned(1, [py, "-m", "edgeproxy", "simulate-provider", "--protocol",
                                    "openai", "--port", str(sim_port), "--tokens-per-s",
                                    str(args.tokens_per_s)]),
                         stdout=subprocess.DEVNULL, env=env, start_new_session=True),
        subprocess.Popen(pinned(0, [py, "-m", "edgeproxy", "serve", "--config", str(cfg)]),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                         start_new_session=True),
    ]
    direct = f"http://127.0.0.1:{sim_port}/v1/chat/completions"
    via = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
    rows: dict[str, dict[str, list[float]]] = {"direct": {}, "via": {}}
    try:
        wait_http(f"http://127.0.0.1:{sim_port}/_sim/stats")
        wait_http(f"http://127.0.0.1:{gw_port}/healthz")
        asyncio.run(light_latency(via, 200))  # warm-up: pools, caches
        use_wrk = shutil.which("wrk") is not None
        for rnd in range(args.rounds):
            order = [("direct", direct), ("via", via)]
            if rnd % 2:
                order.reverse()
            for name, url in order:
                r = rows[name]
                p50, p99 = asyncio.run(light_latency(url, args.requests))
                rps = (wrk_throughput(url, args.seconds) if use_wrk
                       else asyncio.run(py_throughput(url, args.seconds)))
                ttfb, total = asyncio.run(streams(url, args.streams, args.seconds))
                for key, val in (("p50", p50), ("p99", p99), ("rps", rps),
                                 ("ttfb_p50", pct(ttfb, 0.5)), ("ttfb_p99", pct(ttfb, 0.99)),
                                 ("total_p50", pct(total, 0.5)), ("total_p99", pct(total, 0.99))):
                    r.setdefault(key, []).append(val)
            print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)
        rss_kb = int(next(line.split()[1] for line in
                          Path(f"/proc/{procs[1].pid}/status").read_text().splitlines()
                          if line.startswith("VmRSS")))
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(timeout=20)
    med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in rows.items()}
    d, v = med["direct"], med["via"]
    print(f"\nrounds={args.rounds}, light load = {args.requests} sequential requests, "
          f"throughput = 64 connections ({'wrk' if use_wrk else 'aiohttp client'}), "
          f"streams = {args.streams} concurrent at {args.tokens_per_s:g} tokens/s\n")
    print("| metric | direct | via edgeproxy | overhead |")
    print("|---|---|---|---|")
    for key, label in (("p50", "light load p50 ms"), ("p99", "light load p99 ms"),
                       ("ttfb_p50", f"stream TTFB p50 ms (c={args.streams})"),
                       ("ttfb_p99", f"stream TTFB p99 ms (c={args.streams})"),
                       ("total_p50", "stream total p50 ms"), ("total_p99", "stream total p99 ms")):
        print(f"| {label} | {d[key]:.3f} | {v[key]:.3f} | {v[key] - d[key]:+.3f} |")
    print(f"| throughput req/s (c=64) | {d['rps']:.0f} | {v['rps']:.0f} | "
          f"{v['rps'] / d['rps']:.2f}× of direct |")
    print(f"| gateway RSS after the runs | | {rss_kb / 1024:.1f} MiB | |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": rows, "medians": med,
                                               "rss_kib": rss_kb}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
