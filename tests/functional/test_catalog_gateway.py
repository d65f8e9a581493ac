"""The built-in catalog, /v1/models, variants, the auto router and middle-out, end to end.

The catalog's providers are pointed at simulators of their protocol through the configuration
(a user's `[providers.X]` overrides the catalog's key by key), so the real catalog is served.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import openai
import pytest

from edgeproxy import catalog
from edgeproxy.config import loads
from tests.conftest import Stack


@pytest.fixture
def catalog_gateway(stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path):
    sims = {p: stack.sim(p, max_reply_tokens=4)
            for p in ("openai", "openai-responses", "anthropic", "gemini")}
    doc = catalog.builtin_document()
    lines = ["[server]", 'listen = "127.0.0.1:0"', 'auth = "none"',
             "[storage]", f'ledger = "sqlite:///{tmp_path}/l.db"']
    for name, prov in doc["providers"].items():
        sim = sims[prov.get("protocol", "openai")]
        lines += [f"[providers.{name}]", f'base_url = "{sim.base_url}"']
        monkeypatch.setenv(prov["api_key_env"], "sk-test-" + name)
    gw = stack.gateway_from(loads("\n".join(lines) + "\n"))
    return gw, sims


SPEC_PRICES = {
    "openai/gpt-4o": ("0.0000025", "0.00001"),
    "anthropic/claude-3.5-sonnet": ("0.000003", "0.000015"),
    "google/gemini-2.5-flash": ("0.0000003", "0.0000025"),
    "mistralai/codestral": ("0.0000001", "0.0000004"),
}


def test_models_lists_the_catalog_in_openrouters_schema(catalog_gateway) -> None:
    gw, _ = catalog_gateway
    data = httpx.get(gw.base_url + "/models").json()["data"]
    by_id = {m["id"]: m for m in data}
    assert len(by_id) == 23
    for mid, (pin, pout) in SPEC_PRICES.items():
        assert (by_id[mid]["pricing"]["prompt"], by_id[mid]["pricing"]["completion"]) == (pin, pout)
    m = by_id["google/gemini-3-pro-preview"]
    assert m["context_length"] == 1048576 and "image" in m["architecture"]["input_modalities"]
    assert {"id", "name", "created", "context_length", "architecture", "pricing",
            "top_provider", "supported_parameters"} <= set(m)
    tools = httpx.get(gw.base_url + "/models?supported_parameters=tools").json()["data"]
    assert tools and all("tools" in x["supported_parameters"] for x in tools)
    none = httpx.get(gw.base_url + "/models?output_modalities=audio").json()["data"]
    assert none == []


def test_endpoints_api_reports_prices_and_live_health(catalog_gateway) -> None:
    gw, _ = catalog_gateway
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    for _ in range(3):
        c.chat.completions.create(model="meta-llama/llama-3.1-70b-instruct",
                                  messages=[{"role": "user", "content": "hi"}])
    d = httpx.get(gw.base_url + "/models/meta-llama/llama-3.1-70b-instruct/endpoints").json()
    eps = d["data"]["endpoints"]
    assert len(eps) >= 3
    assert {e["quantization"] for e in eps} >= {"fp8", "int4"}
    prices = sorted(float(e["pricing"]["prompt"]) for e in eps)
    assert prices[0] == pytest.approx(0.35e-6) and prices[-1] == pytest.approx(0.60e-6)
    served = [e for e in eps if e["requests_last_30s"]]
    assert sum(e["requests_last_30s"] for e in served) == 3
    assert all(e["uptime_last_30s"] == 1.0 and e["status"] == 0 for e in served)
    # OpenRouter's own figures: percentages over whole minutes, TTFT percentiles (streams only)
    assert all(e["uptime_last_5m"] == e["uptime_last_1d"] == 100.0 for e in served)
    assert all(e["latency_last_30m"] is None for e in eps)
    r = httpx.get(gw.base_url + "/models/nobody/nothing/endpoints")
    assert r.status_code == 404


def test_free_variant_and_errors(catalog_gateway) -> None:
    gw, _ = catalog_gateway
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    r = c.chat.completions.create(model="meta-llama/llama-3.1-8b-instruct:free",
                                  messages=[{"role": "user", "content": "hi"}])
    assert r.usage.model_extra["cost"] == 0
    with pytest.raises(openai.NotFoundError) as ei:
        c.chat.completions.create(model="openai/gpt-4o:free",
                                  messages=[{"role": "user", "content": "hi"}])
    assert "openai/gpt-4o" in ei.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="openai/gpt-4o:turbo",
                                  messages=[{"role": "user", "content": "hi"}])
    nitro = c.chat.completions.create(model="meta-llama/llama-3.1-70b-instruct:nitro",
                                      messages=[{"role": "user", "content": "hi"}])
    assert nitro.model_extra["provider"] in ("groq", "cerebras")  # 500+ tokens/s declared


AUTO_CASES = [
    ("code", "Why does this fail?\n```python\ndef f(x):\n    return x +\n```", None,
     "mistralai/codestral"),
    ("proof", "Prove that there are infinitely many prime numbers.", None, "openai/o3-pro"),
    ("long_context", "Summarise this report. " + ("The committee met again. " * 26000), None,
     "meta-llama/llama-4-scout:free"),
    ("multimodal", "What is in this picture?", "image", "google/gemini-3-pro-preview"),
    ("default", "Hi, how are you today?", None, "google/gemini-2.5-flash"),
]


@pytest.mark.parametrize(("rule", "text", "part", "model"), AUTO_CASES, ids=[c[0] for c in AUTO_CASES])
def test_auto_router_picks_the_model_and_says_why(
    catalog_gateway, rule: str, text: str, part: str | None, model: str
) -> None:
    gw, _ = catalog_gateway
    content: object = text
    if part == "image":
        content = [{"type": "text", "text": text},
                   {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    r = httpx.post(gw.base_url + "/chat/completions", timeout=30, json={
        "model": "auto", "messages": [{"role": "user", "content": content}]})
    assert r.status_code == 200, r.text
    assert r.headers["X-Edgeproxy-Route"] == f"auto:{rule}"
    # o3-pro heads the proof rule; the first model of the rule serves when it is healthy
    assert r.json()["model"] == model
    g = httpx.get(gw.base_url + f"/generation?id={r.json()['id']}").json()["data"]
    assert g["route"] == f"auto:{rule}" and g["model"] == model


def test_openrouter_auto_alias_and_budget_rule(stack: Stack, monkeypatch, tmp_path) -> None:
    sim = stack.sim("openai", reply="w " * 50)
    gem = stack.sim("gemini")
    doc = catalog.builtin_document()
    lines = ["[server]", 'listen = "127.0.0.1:0"', 'auth = "none"', "[storage]",
             f'ledger = "sqlite:///{tmp_path}/l.db"', "[auto]", "budget_usd_per_hour = 0.0001"]
    for name, prov in doc["providers"].items():
        target = gem if prov.get("protocol") == "gemini" else sim
        if prov.get("protocol") == "anthropic":
            continue
        lines += [f"[providers.{name}]", f'base_url = "{target.base_url}"']
        monkeypatch.setenv(prov["api_key_env"], "sk-" + name)
    gw = stack.gateway_from(loads("\n".join(lines) + "\n"))
    body = {"model": "openrouter/auto", "messages": [{"role": "user", "content": "Hello there"}]}
    first = httpx.post(gw.base_url + "/chat/completions", json=body)
    assert first.headers["X-Edgeproxy-Route"] == "auto:default"
    spent = first.json()["usage"]["cost"]
    while spent <= 0.0001:  # push the local account's last-hour spend over its budget
        got = httpx.post(gw.base_url + "/chat/completions", json=body).json()
        assert "usage" in got, got
        spent += got["usage"]["cost"]
    flipped = httpx.post(gw.base_url + "/chat/completions", json=body)
    assert flipped.headers["X-Edgeproxy-Route"] == "auto:budget"
    assert flipped.json()["model"].endswith(":free") and flipped.json()["usage"]["cost"] == 0


def test_context_limit_and_middle_out(stack: Stack) -> None:
    from tests.conftest import config

    sim = stack.sim()
    gw = stack.gateway(config([("acme", sim, {})], context_length=400))
    conversation = [{"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "first question"}]
    for i in range(40):
        conversation += [{"role": "assistant", "content": f"answer {i} " + "blah " * 20},
                         {"role": "user", "content": f"follow-up {i}"}]
    conversation.append({"role": "user", "content": "the last question"})
    body = {"model": "test/model", "messages": conversation, "max_tokens": 50}
    r = httpx.post(gw.base_url + "/chat/completions", json=body)
    assert r.status_code == 400
    msg = r.json()["error"]["message"]
    assert "400" in msg and "middle-out" in msg and sim.count() == 0
    r = httpx.post(gw.base_url + "/chat/completions", json={**body, "transforms": ["middle-out"]})
    assert r.status_code == 200, r.text
    sent = sim.requests()[-1]["body"]["messages"]
    assert sent[0] == conversation[0] and sent[1] == conversation[1]
    assert sent[-1] == conversation[-1] and len(sent) < len(conversation)


def test_cli_models_and_cost_tables() -> None:
    out = subprocess.run([sys.executable, "-m", "edgeproxy", "models"], capture_output=True,
                         text=True, timeout=60).stdout
    assert "anthropic/claude-3.5-sonnet" in out and "meta-llama/llama-3.1-405b-instruct" in out
    cost = subprocess.run([sys.executable, "-m", "edgeproxy", "cost", "--model",
                           "anthropic/claude-3.5-sonnet", "--input-tokens", "100M",
                           "--output-tokens", "20M"], capture_output=True, text=True,
                          timeout=60).stdout
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]]
            for line in cost.splitlines() if line.startswith("| ") and "payment" not in line}
    assert rows["direct to the provider"] == ["$600", "$0", "$600"]
    assert rows["credits"] == ["$600", "$33", "$633"]
    assert rows["BYOK"] == ["$600", "$30", "$630"]
    disc = subprocess.run([sys.executable, "-m", "edgeproxy", "cost", "--model",
                           "anthropic/claude-3.5-sonnet", "--input-tokens", "100M",
                           "--output-tokens", "20M", "--byok-discount", "20%"],
                          capture_output=True, text=True, timeout=60).stdout
    assert "| BYOK                     |         $480 |          $30 |         $510 |" in disc
