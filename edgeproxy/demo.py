"""`edgeproxy demo`: the gateway in front of simulated providers, with nothing to configure.

Several fake providers (one process, loopback ports chosen by the OS) serve a few catalog models at
different prices and speeds, so default routing, `:nitro`, `:floor` and fallback can be seen at work.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass

from aiohttp import web

from . import simulate
from .config import DEFAULT_PARAMETERS, parse

__all__ = ["DEMO_PROVIDERS", "demo_config", "run_demo"]


@dataclass(frozen=True)
class _SimProvider:
    name: str
    protocol: str
    latency_ms: float
    tokens_per_s: float


DEMO_PROVIDERS = (
    _SimProvider("deepinfra", "openai", 40, 120),
    _SimProvider("together", "openai", 25, 200),
    _SimProvider("groq", "openai", 10, 800),
    _SimProvider("anthropic", "anthropic", 30, 150),
    _SimProvider("google-ai-studio", "gemini", 30, 250),
)

# model id -> [(provider, upstream model, $/1M prompt, $/1M completion, quantization)]
_DEMO_MODELS: dict[str, tuple[int, list[tuple[str, str, str, str, str]]]] = {
    "meta-llama/llama-3.1-70b-instruct": (131072, [
        ("deepinfra", "meta-llama/Meta-Llama-3.1-70B-Instruct", "0.35", "0.40", "fp8"),
        ("together", "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo", "0.88", "0.88", "fp8"),
        ("groq", "llama-3.1-70b-versatile", "0.59", "0.79", "bf16"),
    ]),
    "meta-llama/llama-3.1-8b-instruct": (131072, [
        ("deepinfra", "meta-llama/Meta-Llama-3.1-8B-Instruct", "0.05", "0.05", "bf16"),
        ("groq", "llama-3.1-8b-instant", "0", "0", "bf16"),
    ]),
    "anthropic/claude-3.5-haiku": (200000, [
        ("anthropic", "claude-3-5-haiku-20241022", "0.80", "4.00", "unknown"),
    ]),
    "google/gemini-2.5-flash": (1048576, [
        ("google-ai-studio", "gemini-2.5-flash", "0.30", "2.50", "unknown"),
    ]),
}

# Thinking models: `reasoning` reaches their upstream (claude-3.5-haiku has no extended thinking).
_REASONING = {"google/gemini-2.5-flash"}

# The simulated providers take any key, but real Anthropic and Gemini clients always send one.
DEMO_KEY_ENV = "EDGEPROXY_DEMO_PROVIDER_KEY"
_BASE_PATH = {"openai": "/v1", "anthropic": "/v1", "gemini": "/v1beta"}


def demo_config(ports: dict[str, int], listen: str, ledger: str) -> dict:
    """The demo's configuration as a TOML-shaped dict (what a user would write in a file)."""
    providers = {
        p.name: {
            "protocol": p.protocol,
            "base_url": f"http://127.0.0.1:{ports[p.name]}{_BASE_PATH[p.protocol]}",
            "api_key_env": DEMO_KEY_ENV,
            "data_collection": "deny",
        }
        for p in DEMO_PROVIDERS
    }
    speed = {p.name: p for p in DEMO_PROVIDERS}
    models = {
        mid: {
            "context_length": ctx,
            "endpoints": [
                {
                    "provider": prov, "model": up, "prompt": pin, "completion": pout,
                    "quantization": q, "throughput": speed[prov].tokens_per_s,
                    "latency_ms": speed[prov].latency_ms,
                }
                for prov, up, pin, pout, q in eps
            ],
        } | ({"supported_parameters": [*DEFAULT_PARAMETERS, "reasoning", "include_reasoning"]}
             if mid in _REASONING else {})
        for mid, (ctx, eps) in _DEMO_MODELS.items()
    }
    return {
        "server": {"listen": listen, "auth": "keys"},
        "storage": {"ledger": ledger, "state": "memory://"},
        "providers": providers,
        "models": models,
    }


async def start_simulators() -> tuple[dict[str, int], list[web.AppRunner]]:
    ports: dict[str, int] = {}
    runners: list[web.AppRunner] = []
    for p in DEMO_PROVIDERS:
        opts = simulate.SimOptions(latency_ms=p.latency_ms, tokens_per_s=p.tokens_per_s)
        runner = await simulate.start(p.protocol, "127.0.0.1", 0, opts)
        runners.append(runner)
        ports[p.name] = runner.addresses[0][1]
    return ports, runners


async def create_demo_key(ledger_url: str, credits_usd: int = 10) -> str:
    """A demo account with some credits, and its key (the gateway bills the demo like any other)."""
    from .billing.ledger import Ledger
    from .billing.store import open_driver

    ledger = Ledger(open_driver(ledger_url))
    await ledger.open()
    try:
        acct = await ledger.create_account("demo")
        await ledger.add_credits(acct.id, credits_usd * 1_000_000, "card")
        key, _ = await ledger.create_key(acct.id, "demo")
        return key
    finally:
        await ledger.close()


def _snippets(base: str, key: str) -> str:
    model = "meta-llama/llama-3.1-70b-instruct"
    return f"""
edgeproxy demo is up: {base}/v1  (simulated providers: no provider keys needed)
Demo key (an account with $10 of credits): {key}

  curl {base}/v1/chat/completions -H 'Content-Type: application/json' \\
    -H 'Authorization: Bearer {key}' \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  from openai import OpenAI
  client = OpenAI(base_url="{base}/v1", api_key="{key}")
  r = client.chat.completions.create(model="{model}",
                                     messages=[{{"role": "user", "content": "Hello!"}}])
  print(r.choices[0].message.content, r.provider, r.usage.cost)

  # the same key on every dialect: client.responses.create(model=..., input="Hello!"),
  # anthropic.Anthropic(base_url="{base}", api_key="{key}").messages.create(...),
  # client.completions.create(...), client.embeddings.create(...) (openai-protocol models)
  # credits left: curl {base}/v1/credits -H 'Authorization: Bearer {key}'

Models: {", ".join(_DEMO_MODELS)}
Variants: append :nitro (fastest), :floor (cheapest), :free (free endpoints only).
Stop with Ctrl-C.
"""


async def run_demo(port: int, host: str = "127.0.0.1") -> None:
    from .app import make_app
    from .cli import run_app

    os.environ.setdefault(DEMO_KEY_ENV, "sim-provider-key")
    ports, runners = await start_simulators()
    tmp = tempfile.TemporaryDirectory(prefix="edgeproxy-demo-")
    try:
        ledger = f"sqlite:///{tmp.name}/ledger.db"
        cfg = parse(demo_config(ports, f"{host}:{port}", ledger))
        key = await create_demo_key(ledger)

        def ready(bound: int) -> None:
            print(_snippets(f"http://{host}:{bound}", key), flush=True)

        await run_app(make_app(cfg), host, port, ready)
    finally:
        for r in runners:
            await r.cleanup()
        await asyncio.sleep(0)
        tmp.cleanup()
