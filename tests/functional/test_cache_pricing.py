"""Prompt caching priced right (SPEC §5.3; issue 12 item 2): the cost conformance table.

Every upstream protocol, its answer's cache reads and writes (and reasoning tokens where the
simulator reports them) through the openai SDK against the running gateway, plain and streamed,
checked to the micro-dollar against figures computed by hand below: the usage object (token
details, `cost`, `cost_details`) and `/generation` (`native_tokens_cached`, `cache_discount`).
Then what reaches Anthropic (`cache_control` on parts, system, tools, tool results, top level),
what is kept from OpenAI, a prompt cache that writes then reads, and the reservation.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import orjson
import pytest

from edgeproxy.billing.ledger import GenerationRecord, Ledger
from edgeproxy.billing.store import MIGRATIONS, open_driver
from edgeproxy.config import DEFAULT_PARAMETERS
from tests.conftest import GatewayHandle, LoopThread, SimHandle, Stack

ADMIN = "admin-secret-for-tests"
PROTOCOLS = ("openai", "anthropic", "gemini", "openai-responses")
# USD per 1M tokens: Anthropic's published ratios (read 0.1x, 5-minute write 1.25x).
PRICES = {"prompt": "3", "completion": "15", "cache_read": "0.3", "cache_write": "3.75"}
SYSTEM = " ".join(["context"] * 1996)  # with the 4-word question: a 2000-token prompt
QUESTION = "What is the answer?"
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
REPLY = "one two three four five"  # 5 completion tokens
# Asked to reason, a simulator thinks "Considering: What is the answer?".
THOUGHT_TOKENS = 5


@dataclass(frozen=True)
class Row:
    """One cell of the table: what the simulator reports and what the client must see.
    Amounts are micro-USD; prompt_cost is in pico-USD (cost_details is exact)."""

    protocol: str
    name: str
    sim_read: int  # what the simulator is told to report
    sim_write: int
    read: int  # what the usage object must say
    written: int
    completion: int
    reasoning: int
    prompt_cost: int  # pico-USD
    cost: int  # micro-USD, rounded up
    discount: int | None  # micro-USD; None: /generation's null (no cache touched)


# Hand computation (prompt 2000 tokens, $3 / $15 / read $0.30 / write $3.75 per 1M):
#   uncached        2000 x 3                        = 6000 micro + 5 x 15 = 6075
#   1500 read       500 x 3 + 1500 x 0.3 = 1500+450 = 1950 micro + 75     = 2025, saved 1500 x 2.7 = 4050
#   1499 read       501 x 3 + 1499 x 0.3 = 1952.7 micro + 75 = 2027.7     -> 2028, saved 6075-2028 = 4047
#   1600 written    400 x 3 + 1600 x 3.75 = 1200+6000 = 7200 micro + 75   = 7275, saved -1600 x 0.75 = -1200
#   1000 read, 600 written: 400 x 3 + 1000 x 0.3 + 600 x 3.75 = 1200+300+2250 = 3750 + 75 = 3825,
#                   saved 1000 x 2.7 - 600 x 0.75 = 2700 - 450 = 2250
#   gemini, 1000 read and 600 "written": Gemini has no write count, so 1000 x 3 + 1000 x 0.3 = 3300
#                   + 75 = 3375, saved 2700
#   reasoning: the simulators think "Considering: What is the answer?", 5 tokens billed as
#                   completion tokens: 10 x 15 = 150 (+ 6000 uncached, + 1950 with 1500 read)
ROWS = [
    *(Row(p, "uncached", 0, 0, 0, 0, 5, 0, 6_000_000_000, 6075, None) for p in PROTOCOLS),
    *(Row(p, "read", 1500, 0, 1500, 0, 5, 0, 1_950_000_000, 2025, 4050) for p in PROTOCOLS),
    Row("openai", "read-rounded", 1499, 0, 1499, 0, 5, 0, 1_952_700_000, 2028, 4047),
    *(Row(p, "written", 0, 1600, 0, 1600, 5, 0, 7_200_000_000, 7275, -1200)
      for p in ("openai", "anthropic", "openai-responses")),
    *(Row(p, "read-written", 1000, 600, 1000, 600, 5, 0, 3_750_000_000, 3825, 2250)
      for p in ("openai", "anthropic", "openai-responses")),
    Row("gemini", "read-written", 1000, 600, 1000, 0, 5, 0, 3_300_000_000, 3375, 2700),
    *(Row(p, "reasoning", 0, 0, 0, 0, 10, THOUGHT_TOKENS, 6_000_000_000, 6150, None)
      for p in PROTOCOLS),
    *(Row(p, "reasoning-read", 1500, 0, 1500, 0, 10, THOUGHT_TOKENS, 1_950_000_000, 2100, 4050)
      for p in PROTOCOLS),
]
# Anthropic counts thinking in output_tokens without a separate figure.
REPORTS_REASONING = ("openai", "gemini", "openai-responses")


def usd(value: Any) -> Decimal:
    return Decimal(str(value))


def micro(amount: int) -> Decimal:
    return Decimal(amount) / 1_000_000


def gateway(stack: Stack, sims: dict[str, SimHandle],
            prices: dict[str, dict[str, str]] | None = None,
            server: dict[str, Any] | None = None,
            billing: dict[str, Any] | None = None) -> GatewayHandle:
    """One model per simulator: `t/<name>`, served by provider `<name>` at `prices[name]`
    (default PRICES)."""
    providers, models = {}, {}
    for name, sim in sims.items():
        providers[name] = {"protocol": sim.protocol, "base_url": sim.base_url,
                           "api_key_env": "EDGEPROXY_TEST_UPSTREAM_KEY",
                           "first_byte_timeout_s": 5.0, "idle_timeout_s": 5.0}
        models[f"t/{name}"] = {
            "context_length": 32000,
            "supported_parameters": [*DEFAULT_PARAMETERS, "reasoning"],
            "endpoints": [{"provider": name, "model": f"{name}-model",
                           **(prices or {}).get(name, PRICES)}]}
    return stack.gateway({"server": {"listen": "127.0.0.1:0", "auth": "none", **(server or {})},
                          "billing": billing or {}, "providers": providers, "models": models})


def ask(c: openai.OpenAI, model: str, stream: bool, **kw: Any) -> tuple[str, Any]:
    """(generation id, usage) of one chat completion, whole or streamed (its final usage chunk)."""
    kw = {"max_tokens": 50, **kw}
    if not stream:
        r = c.chat.completions.create(model=model, messages=MESSAGES, **kw)
        return r.id, r.usage
    chunks = list(c.chat.completions.create(model=model, messages=MESSAGES, stream=True, **kw))
    tail = [ch for ch in chunks if ch.usage is not None]
    assert len(tail) == 1 and tail[0].choices == []  # usage once, in a final chunk
    return chunks[0].id, tail[0].usage


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.protocol}-{r.name}" for r in ROWS])
def test_cost_conformance_table(stack: Stack, row: Row) -> None:
    sim = stack.sim(row.protocol, reply=REPLY, cached_tokens=row.sim_read,
                    cache_write_tokens=row.sim_write)
    gw = gateway(stack, {row.protocol: sim})
    c = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
    # (Anthropic's thinking budget must be at least 1024 and below max_tokens)
    extra = {"reasoning_effort": "low", "max_tokens": 4096} if row.reasoning else {}
    for stream in (False, True):
        gen_id, u = ask(c, f"t/{row.protocol}", stream, **extra)
        assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (
            2000, row.completion, 2000 + row.completion), stream
        d = u.prompt_tokens_details
        assert (d.cached_tokens, d.cache_write_tokens) == (row.read, row.written), stream
        if row.reasoning and row.protocol in REPORTS_REASONING:
            assert u.completion_tokens_details.reasoning_tokens == row.reasoning
        extra_u = u.model_extra or {}
        assert usd(extra_u["cost"]) == micro(row.cost) and extra_u["is_byok"] is False
        details = extra_u["cost_details"]
        assert details["upstream_inference_cost"] is None  # shown for BYOK only
        assert usd(details["upstream_inference_prompt_cost"]) == Decimal(row.prompt_cost) / 10**12
        assert usd(details["upstream_inference_completions_cost"]) == micro(row.completion * 15)
        g = httpx.get(gw.base_url + "/generation", params={"id": gen_id}).json()["data"]
        assert (g["tokens_prompt"], g["native_tokens_cached"]) == (2000, row.read)
        assert usd(g["total_cost"]) == micro(row.cost) and g["streamed"] is stream
        if row.discount is None:
            assert g["cache_discount"] is None
        else:
            assert usd(g["cache_discount"]) == micro(row.discount)


def test_cost_details_are_exact_decimals(stack: Stack) -> None:
    """The JSON carries the amounts as exact decimal numbers, not binary floats."""
    sim = stack.sim("openai", reply=REPLY, cached_tokens=1499)
    gw = gateway(stack, {"openai": sim})
    raw = httpx.post(gw.base_url + "/chat/completions",
                     json={"model": "t/openai", "messages": MESSAGES}).content
    usage = raw[raw.index(b'"usage":'):]
    assert b'"cost":0.002028' in usage
    assert b'"upstream_inference_prompt_cost":0.0019527,' in usage
    assert b'"upstream_inference_completions_cost":0.000075}' in usage


# --------------------------------------------------------------------------- what reaches upstream

CACHED = {"type": "ephemeral"}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}},
        "cache_control": CACHED}


def test_cache_control_reaches_anthropic(stack: Stack) -> None:
    sim = stack.sim("anthropic", reply=REPLY)
    gw = gateway(stack, {"anthropic": sim})
    c = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
    c.chat.completions.create(model="t/anthropic", max_tokens=50, tools=[TOOL], messages=[
        {"role": "system", "content": [{"type": "text", "text": SYSTEM, "cache_control": CACHED}]},
        {"role": "user", "content": [
            {"type": "text", "text": "Look it up", "cache_control": {**CACHED, "ttl": "1h"}}]},
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "lookup", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1",
         "content": [{"type": "text", "text": "found it", "cache_control": CACHED}]},
    ], extra_body={"cache_control": CACHED})
    body = sim.requests()[-1]["body"]
    assert body["system"] == [{"type": "text", "text": SYSTEM, "cache_control": CACHED}]
    assert body["tools"][0]["cache_control"] == CACHED
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "Look it up", "cache_control": {**CACHED, "ttl": "1h"}}]
    # Anthropic refuses a mark inside tool_result.content: it moves onto the tool_result.
    assert body["messages"][2]["content"] == [{
        "type": "tool_result", "tool_use_id": "call_1", "cache_control": CACHED,
        "content": [{"type": "text", "text": "found it"}]}]
    assert body["cache_control"] == CACHED  # OpenRouter's top level: Anthropic's automatic caching


def test_responses_dialect_top_level_cache_control(stack: Stack) -> None:
    """OpenRouter's Responses API takes automatic caching at the top level only."""
    sim = stack.sim("anthropic", reply=REPLY)
    gw = gateway(stack, {"anthropic": sim})
    c = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
    for _ in range(2):
        r = c.responses.create(model="t/anthropic", input=QUESTION, instructions=SYSTEM,
                               extra_body={"cache_control": CACHED})
    assert sim.requests()[-1]["body"]["cache_control"] == CACHED
    assert r.usage is not None and r.usage.input_tokens_details.cached_tokens == 2000


def test_cache_control_kept_from_openai(stack: Stack) -> None:
    """OpenAI caches by itself and a strict OpenAI-compatible upstream refuses the member."""
    sim = stack.sim("openai", reply=REPLY)
    gw = gateway(stack, {"openai": sim})
    c = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
    c.chat.completions.create(model="t/openai", max_tokens=50, tools=[TOOL], messages=[
        {"role": "system", "content": [{"type": "text", "text": "Be brief.",
                                        "cache_control": CACHED}]},
        {"role": "user", "content": QUESTION, "cache_control": CACHED},
    ], extra_body={"cache_control": CACHED})
    body = sim.requests()[-1]["body"]
    assert b"cache_control" not in orjson.dumps(body)
    assert body["messages"][0]["content"] == [{"type": "text", "text": "Be brief."}]
    assert body["tools"] == [{"type": "function", "function": TOOL["function"]}]


def test_anthropic_prompt_cache_writes_then_reads(stack: Stack) -> None:
    """The real flow: a marked system prompt is written at 1.25x, then read at 0.1x (the
    simulator keeps a prompt cache as Anthropic does); the top-level form caches the whole
    prompt. Hand computation, 1996 system + 4 question tokens:
      first   1996 x 3.75 + 4 x 3 = 7485 + 12 = 7497 micro + 75 = 7572, saved -1996 x 0.75 = -1497
      second  1996 x 0.3 + 4 x 3 = 598.8 + 12 = 610.8 + 75 = 685.8 -> 686, saved 6075 - 686 = 5389
    """
    sim = stack.sim("anthropic", reply=REPLY)
    gw = gateway(stack, {"anthropic": sim})
    c = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
    marked = [{"role": "system", "content": [{"type": "text", "text": SYSTEM,
                                              "cache_control": CACHED}]},
              {"role": "user", "content": QUESTION}]
    seen = []
    for stream in (False, True):
        kw: dict[str, Any] = {"stream": True} if stream else {}
        r = c.chat.completions.create(model="t/anthropic", messages=marked, max_tokens=50, **kw)
        if stream:
            chunks = list(r)
            gen_id, u = chunks[0].id, chunks[-1].usage
        else:
            gen_id, u = r.id, r.usage
        g = httpx.get(gw.base_url + "/generation", params={"id": gen_id}).json()["data"]
        seen.append((u.prompt_tokens, u.prompt_tokens_details.cache_write_tokens,
                     u.prompt_tokens_details.cached_tokens, usd(u.model_extra["cost"]),
                     usd(g["cache_discount"])))
    assert seen == [(2000, 1996, 0, micro(7572), micro(-1497)),
                    (2000, 0, 1996, micro(686), micro(5389))]
    # Top-level cache_control: the breakpoint is the last block, so the whole prompt is cached.
    auto = [{"role": "user", "content": "A fresh conversation of six words"}]
    reads = [c.chat.completions.create(model="t/anthropic", messages=auto, max_tokens=50,
                                       extra_body={"cache_control": CACHED}).usage
             for _ in range(2)]
    assert [(u.prompt_tokens_details.cache_write_tokens, u.prompt_tokens_details.cached_tokens)
            for u in reads] == [(6, 0), (0, 6)]
    # The conversation grows: the breakpoint moves to its new end, the earlier prefix is read and
    # the new turns (5 + 2 tokens) are written.
    grown = [*auto, {"role": "assistant", "content": REPLY}, {"role": "user", "content": "And then?"}]
    u = c.chat.completions.create(model="t/anthropic", messages=grown, max_tokens=50,
                                  extra_body={"cache_control": CACHED}).usage
    d = u.prompt_tokens_details
    assert (u.prompt_tokens, d.cached_tokens, d.cache_write_tokens) == (13, 6, 7)


def test_models_list_cache_prices(stack: Stack) -> None:
    sims = {"priced": stack.sim("anthropic"), "plain": stack.sim("openai")}
    gw = gateway(stack, sims, prices={"priced": PRICES, "plain": {"prompt": "3"}})
    models = {m["id"]: m["pricing"] for m in httpx.get(gw.base_url + "/models").json()["data"]}
    assert models["t/priced"]["input_cache_read"] == "0.0000003"
    assert models["t/priced"]["input_cache_write"] == "0.00000375"
    assert "input_cache_read" not in models["t/plain"]  # unset: cached tokens cost `prompt`
    eps = httpx.get(gw.base_url + "/models/t/priced/endpoints").json()["data"]["endpoints"]
    assert eps[0]["pricing"]["input_cache_write"] == "0.00000375"


def test_byok_shows_the_providers_charge(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the account's own provider key the provider's charge (the row "read": 2025 micro-USD)
    is upstream_inference_cost, and the gateway charges its 5 % fee past the monthly allowance
    (none here): 101.25 -> 101 micro-USD."""
    monkeypatch.setenv("EDGEPROXY_ADMIN_KEY", ADMIN)
    monkeypatch.setenv("EDGEPROXY_BYOK_SECRET", "byok-sealing-secret")
    sim = stack.sim("anthropic", reply=REPLY, cached_tokens=1500)
    gw = gateway(stack, {"anthropic": sim}, server={"auth": "keys"},
                 billing={"byok_free_requests": 0})
    key = httpx.post(gw.base_url + "/keys", headers={"Authorization": f"Bearer {ADMIN}"},
                     json={"name": "t", "credits": "1"}).json()["key"]
    assert httpx.post(gw.base_url + "/byok", headers={"Authorization": f"Bearer {key}"}, json={
        "provider": "anthropic", "api_key": "sk-own"}).status_code == 200
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    r = c.chat.completions.create(model="t/anthropic", messages=MESSAGES, max_tokens=50)
    extra = r.usage.model_extra or {}
    assert extra["is_byok"] is True and usd(extra["cost"]) == micro(101)
    assert usd(extra["cost_details"]["upstream_inference_cost"]) == micro(2025)
    assert usd(extra["cost_details"]["upstream_inference_prompt_cost"]) == micro(1950)
    g = httpx.get(gw.base_url + "/generation", params={"id": r.id},
                  headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert usd(g["total_cost"]) == micro(101) and usd(g["cache_discount"]) == micro(4050)


# --------------------------------------------------------------------------- the reservation


def test_reservation_covers_an_all_write_prompt(stack: Stack,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """SPEC §5.3: a request that cannot cover its maximum cost gets 402. A prompt may be all
    cache writes, so the maximum prices its tokens at the write price where that is dearer.
    $100 / $125 per 1M is 100 / 125 micro-USD a token; the prompt bound is the body's bytes."""
    monkeypatch.setenv("EDGEPROXY_ADMIN_KEY", ADMIN)
    sims = {"writes": stack.sim("anthropic", reply="ok"), "prompt": stack.sim("anthropic",
                                                                             reply="ok")}
    gw = gateway(stack, sims, server={"auth": "keys"}, prices={
        "writes": {"prompt": "100", "cache_write": "125"}, "prompt": {"prompt": "100"}})
    bodies = {name: orjson.dumps({"model": f"t/{name}", "messages": [
        {"role": "user", "content": "Say hello"}], "max_tokens": 1}) for name in sims}
    assert len(bodies["writes"]) == len(bodies["prompt"])
    credits = 110 * len(bodies["writes"])  # micro-USD: more than 100 a byte, less than 125
    made = httpx.post(gw.base_url + "/keys", headers={"Authorization": f"Bearer {ADMIN}"},
                      json={"name": "t", "credits": str(micro(credits))})
    assert made.status_code == 201, made.text
    auth = {"Authorization": f"Bearer {made.json()['key']}",
            "Content-Type": "application/json"}
    r = httpx.post(gw.base_url + "/chat/completions", content=bodies["writes"], headers=auth)
    assert r.status_code == 402 and sims["writes"].count() == 0
    r = httpx.post(gw.base_url + "/chat/completions", content=bodies["prompt"], headers=auth)
    assert r.status_code == 200, r.text


# --------------------------------------------------------------------------- edgeproxy cost


def cost_table(*args: str) -> tuple[str, dict[str, list[str]]]:
    out = subprocess.run([sys.executable, "-m", "edgeproxy", "cost", "--model",
                          "anthropic/claude-3.5-sonnet", "--input-tokens", "100M",
                          "--output-tokens", "20M", *args],
                         capture_output=True, text=True, timeout=60)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]]
            for line in out.stdout.splitlines() if line.startswith("| ") and "payment" not in line}
    return out.stdout + out.stderr, rows


def test_cli_cost_with_cached_input() -> None:
    """Claude 3.5 Sonnet at the catalog's $3 / $15, read $0.30, write $3.75 per 1M:
    80M of the 100M input read from the cache: 20M x 3 + 80M x 0.3 + 20M x 15 = 60 + 24 + 300
    = $384; card top-up 5.5 % = $21.12; BYOK 5 % = $19.20. With 10M more written instead of
    uncached: 10M x 3 + 80M x 0.3 + 10M x 3.75 + 300 = 30 + 24 + 37.5 + 300 = $391.50."""
    text, rows = cost_table("--cached-input-tokens", "80M")
    assert "80,000,000 cache reads at $0.3" in text
    assert rows["direct to the provider"] == ["$384", "$0", "$384"]
    assert rows["credits"] == ["$384", "$21.12", "$405.12"]
    assert rows["BYOK"] == ["$384", "$19.2", "$403.2"]
    _, rows = cost_table("--cached-input-tokens", "80M", "--cache-write-tokens", "10M")
    assert rows["direct to the provider"] == ["$391.5", "$0", "$391.5"]
    text, rows = cost_table("--cached-input-tokens", "90M", "--cache-write-tokens", "20M")
    assert not rows and "parts of --input-tokens" in text


# --------------------------------------------------------------------------- the ledger


def test_a_ledger_from_before_cache_pricing_upgrades(loop_thread: LoopThread,
                                                     tmp_path: Path) -> None:
    """A database at the first schema, with a row, and a journal line written before the cache
    columns: both read back, the new columns 0."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_version (version BIGINT)")
    for stmt in MIGRATIONS[0]:
        db.execute(stmt)
    db.execute("INSERT INTO schema_version VALUES (1)")
    old = ["gen-old", "acct", "key", "m/x", "acme", 10, 5, 0, 3, 42, False, False, 1, 1, 1,
           False, False, "stop", None, None, None, 1_700_000_000]
    db.execute(f"INSERT INTO generations VALUES ({', '.join('?' * len(old))})", old)
    db.commit()
    db.close()

    async def go() -> GenerationRecord | None:
        ledger = Ledger(open_driver(f"sqlite:///{path}"))
        await ledger.open()
        try:
            return await ledger.generation("gen-old")
        finally:
            await ledger.close()

    rec = loop_thread.run(go())
    assert rec is not None and (rec.cached_tokens, rec.cost_micro) == (3, 42)
    assert (rec.cache_write_tokens, rec.cache_discount_micro) == (0, 0)
    line = msgspec.json.decode(orjson.dumps(old), type=GenerationRecord)  # the journal's form
    assert line.cached_tokens == 3 and line.cache_write_tokens == 0
