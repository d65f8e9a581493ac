"""Accounts, keys, credits and the ledger, through the running gateway (SPEC §5)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from decimal import Decimal

import httpx
import openai
import pytest

from tests.conftest import Stack, config

ADMIN = "admin-secret-for-tests"
PROMPT = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(autouse=True)
def _admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPROXY_ADMIN_KEY", ADMIN)
    monkeypatch.setenv("EDGEPROXY_BYOK_SECRET", "byok-sealing-secret")


def keyed(stack: Stack, eps, **kw):
    cfg = config(eps, server={"auth": "keys"}, **kw)
    return stack.gateway(cfg)


def admin(gw, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, gw.base_url + path,
                         headers={"Authorization": f"Bearer {ADMIN}"}, **kw)


def new_key(gw, credits: str | None = "10", limit: str | None = None, account=None) -> dict:
    body = {"name": "tester"}
    if credits is not None:
        body["credits"] = credits
    if limit is not None:
        body["limit"] = limit
    if account is not None:
        body["account"] = account
    r = admin(gw, "POST", "/keys", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def get(gw, path: str, key: str) -> httpx.Response:
    return httpx.get(gw.base_url + path, headers={"Authorization": f"Bearer {key}"})


def usd(v) -> Decimal:
    return Decimal(str(v))


def test_keys_auth_charges_and_account_endpoints(stack: Stack) -> None:
    sim = stack.sim(reply="one two three")
    gw = keyed(stack, [("acme", sim, {"prompt": "3", "completion": "15"})])
    made = new_key(gw, credits="10")
    key = made["key"]
    assert key.startswith("sk-ep-v1-") and made["fee"] == 0.8  # card minimum fee
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    r = c.chat.completions.create(model="test/model", messages=PROMPT,
                                  extra_headers={"X-Title": "billing test"})
    cost = usd(r.usage.model_extra["cost"])
    assert cost == Decimal(r.usage.prompt_tokens * 3 + 3 * 15) / 1_000_000
    credits = get(gw, "/credits", key).json()["data"]
    assert usd(credits["total_credits"]) == 10 and usd(credits["total_usage"]) == cost
    info = get(gw, "/key", key).json()["data"]
    assert info["label"] == "tester" and usd(info["usage"]) == cost and info["limit"] is None
    g = get(gw, f"/generation?id={r.id}", key).json()["data"]
    assert g["id"] == r.id and g["model"] == "test/model" and g["provider_name"] == "acme"
    assert usd(g["total_cost"]) == cost and g["tokens_completion"] == 3
    assert g["app"] == "billing test" and g["streamed"] is False and g["cancelled"] is False
    assert g["finish_reason"] == "stop" and g["is_byok"] is False
    # another account cannot read it; a bad id is a 400
    other = new_key(gw)["key"]
    assert get(gw, f"/generation?id={r.id}", other).status_code == 404
    assert get(gw, "/generation?id=nope", key).status_code == 400
    # the key itself is nowhere in the database, only its hash
    db = gw.gw.cfg.storage.ledger.removeprefix("sqlite:///")
    dump = "\n".join(sqlite3.connect(db).iterdump())
    assert key not in dump and key[len("sk-ep-v1-"):] not in dump


def test_missing_bad_and_disabled_keys(stack: Stack) -> None:
    sim = stack.sim()
    gw = keyed(stack, [("acme", sim, {})])
    url = gw.base_url + "/chat/completions"
    body = {"model": "test/model", "messages": PROMPT}
    assert httpx.post(url, json=body).status_code == 401
    r = httpx.post(url, json=body, headers={"Authorization": "Bearer sk-ep-v1-nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == 401
    made = new_key(gw)
    auth = {"Authorization": f"Bearer {made['key']}"}
    assert httpx.post(url, json=body, headers=auth).status_code == 200
    assert admin(gw, "PATCH", f"/keys/{made['data']['id']}",
                 json={"disabled": True}).status_code == 200
    assert httpx.post(url, json=body, headers=auth).status_code == 403
    admin(gw, "PATCH", f"/keys/{made['data']['id']}", json={"disabled": False})
    assert httpx.post(url, json=body, headers=auth).status_code == 200
    assert sim.count() == 2
    # provisioning needs the admin key
    assert httpx.get(gw.base_url + "/keys", headers=auth).status_code == 403
    listed = admin(gw, "GET", "/keys").json()["data"]
    assert [k["id"] for k in listed] == [made["data"]["id"]]
    assert "key" not in listed[0] and made["key"] not in str(listed)
    assert admin(gw, "DELETE", f"/keys/{made['data']['id']}").status_code == 200
    assert httpx.post(url, json=body, headers=auth).status_code == 401


def test_402_before_any_upstream_is_contacted(stack: Stack) -> None:
    sim = stack.sim()
    gw = keyed(stack, [("acme", sim, {"prompt": "1", "completion": "1000"})])
    key = new_key(gw, credits="1")["key"]  # $1 buys 1000 completion tokens at most
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as ei:
        c.chat.completions.create(model="test/model", messages=PROMPT, max_tokens=5000)
    assert ei.value.status_code == 402
    with pytest.raises(openai.APIStatusError) as ei:  # no max_tokens: the output limit counts
        c.chat.completions.create(model="test/model", messages=PROMPT)
    assert ei.value.status_code == 402
    assert sim.count() == 0
    assert c.chat.completions.create(model="test/model", messages=PROMPT, max_tokens=500)


async def test_concurrent_requests_never_overspend(stack: Stack) -> None:
    sim = stack.sim(reply=" ".join(["w"] * 100), latency_ms=20)
    gw = keyed(stack, [("acme", sim, {"prompt": "0", "completion": "100"})])
    # each request: 100 completion tokens × $100/M = $0.01, max_tokens 100 -> reserves $0.01
    made = new_key(gw, credits="0.5")  # affords 50
    key = made["key"]
    async with httpx.AsyncClient(timeout=30) as client:
        async def one() -> int:
            r = await client.post(gw.base_url + "/chat/completions",
                                  headers={"Authorization": f"Bearer {key}"},
                                  json={"model": "test/model", "messages": PROMPT,
                                        "max_tokens": 100})
            return r.status_code
        codes = await asyncio.gather(*(one() for _ in range(200)))
    assert set(codes) <= {200, 402}
    assert codes.count(200) == 50
    data = get(gw, "/credits", key).json()["data"]
    assert usd(data["total_usage"]) == Decimal("0.5") <= usd(data["total_credits"])
    assert sim.count() == 50


def test_failed_attempts_are_free(stack: Stack) -> None:
    bad = stack.sim(fault="status", fault_status=500)
    good = stack.sim(reply="a b")
    gw = keyed(stack, [("bad", bad, {"prompt": "1", "completion": "1"}),
                       ("good", good, {"prompt": "2", "completion": "2"})])
    key = new_key(gw)["key"]
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    r = c.chat.completions.create(model="test/model", messages=PROMPT,
                                  extra_body={"provider": {"order": ["bad", "good"]}})
    assert r.model_extra["provider"] == "good"
    usage = usd(get(gw, "/credits", key).json()["data"]["total_usage"])
    assert usage == Decimal((r.usage.prompt_tokens + 2) * 2) / 1_000_000
    with pytest.raises(openai.APIStatusError):
        c.chat.completions.create(model="test/model", messages=PROMPT,
                                  extra_body={"provider": {"only": ["bad"]}})
    assert usd(get(gw, "/credits", key).json()["data"]["total_usage"]) == usage


@pytest.mark.parametrize(("amount", "method", "fee"), [
    ("100", "card", "5.5"), ("5", "card", "0.8"), ("100", "crypto", "5"), ("0.01", "crypto", "0.0005"),
])
def test_top_up_fees(stack: Stack, amount: str, method: str, fee: str) -> None:
    gw = keyed(stack, [("acme", stack.sim(), {})])
    made = new_key(gw, credits=None)
    r = admin(gw, "POST", "/credits", json={"account": made["data"]["account"],
                                            "amount": amount, "method": method})
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert usd(d["fee"]) == Decimal(fee) and usd(d["charged"]) == Decimal(amount) + Decimal(fee)
    assert usd(get(gw, "/credits", made["key"]).json()["data"]["total_credits"]) == Decimal(amount)


@pytest.mark.parametrize("body", [
    {"account": "acct_nope", "amount": "5"},
    {"amount": "5"},
    {"account": "ACCOUNT", "amount": "-5"},
    {"account": "ACCOUNT", "amount": "0"},
    {"account": "ACCOUNT", "amount": "lots"},
    {"account": "ACCOUNT", "amount": "5", "method": "cheque"},
    {"account": "ACCOUNT", "amount": 5},
])
def test_bad_top_ups_change_nothing(stack: Stack, body: dict) -> None:
    gw = keyed(stack, [("acme", stack.sim(), {})])
    made = new_key(gw, credits="3")
    body = {k: (made["data"]["account"] if v == "ACCOUNT" else v) for k, v in body.items()}
    r = admin(gw, "POST", "/credits", json=body)
    assert 400 <= r.status_code < 500 and r.json()["error"]["code"] == r.status_code
    assert usd(get(gw, "/credits", made["key"]).json()["data"]["total_credits"]) == 3


def test_free_model_limits(stack: Stack) -> None:
    sim = stack.sim(max_reply_tokens=1)
    cfg = config([("free", sim, {})], server={"auth": "keys"})
    cfg["billing"] = {"free_per_minute": 20, "free_per_day": 25, "free_per_day_paid": 30}
    gw = stack.gateway(cfg)
    made = new_key(gw, credits=None)
    url = gw.base_url + "/chat/completions"
    auth = {"Authorization": f"Bearer {made['key']}"}
    body = {"model": "test/model", "messages": PROMPT}
    codes = [httpx.post(url, json=body, headers=auth).status_code for _ in range(21)]
    assert codes[:20] == [200] * 20 and codes[20] == 429
    r = httpx.post(url, json=body, headers=auth)
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
    # the per-minute limit is per key; the daily one per account (25, then 30 once $10 bought)
    second = new_key(gw, credits=None, account=made["data"]["account"])
    auth2 = {"Authorization": f"Bearer {second['key']}"}
    codes = [httpx.post(url, json=body, headers=auth2).status_code for _ in range(6)]
    assert codes == [200] * 5 + [429]
    assert "per day" in httpx.post(url, json=body, headers=auth2).json()["error"]["message"]
    admin(gw, "POST", "/credits", json={"account": made["data"]["account"], "amount": "10"})
    codes = [httpx.post(url, json=body, headers=auth2).status_code for _ in range(6)]
    assert codes == [200] * 5 + [429]
    assert sim.count() == 30


def test_key_spend_limit(stack: Stack) -> None:
    sim = stack.sim(reply="x " * 10)
    gw = keyed(stack, [("acme", sim, {"completion": "1000"})])
    made = new_key(gw, credits="100", limit="0.05")
    c = openai.OpenAI(base_url=gw.base_url, api_key=made["key"], max_retries=0)
    statuses = []
    for _ in range(8):
        try:
            c.chat.completions.create(model="test/model", messages=PROMPT, max_tokens=10)
            statuses.append(200)
        except openai.APIStatusError as e:
            statuses.append(e.status_code)
    assert statuses == [200] * 5 + [402] * 3  # $0.01 each, $0.05 limit
    info = get(gw, "/key", made["key"]).json()["data"]
    assert usd(info["limit_remaining"]) == 0 and usd(info["usage"]) == Decimal("0.05")


def test_byok_uses_the_accounts_key_and_charges_the_fee_after_the_allowance(
    stack: Stack,
) -> None:
    sim = stack.sim(reply="a b c d")
    cfg = config([("acme", sim, {"prompt": "1000", "completion": "1000"})],
                 server={"auth": "keys"})
    cfg["billing"] = {"byok_free_requests": 1}
    gw = stack.gateway(cfg)
    made = new_key(gw, credits="1")
    key = made["key"]
    r = httpx.post(gw.base_url + "/byok", headers={"Authorization": f"Bearer {key}"},
                   json={"provider": "acme", "api_key": "sk-my-own-provider-key"})
    assert r.status_code == 200 and "sk-my-own" not in r.text
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    first = c.chat.completions.create(model="test/model", messages=PROMPT, max_tokens=10)
    assert first.usage.model_extra["is_byok"] is True and first.usage.model_extra["cost"] == 0
    headers = {k.lower(): v for k, v in sim.requests()[-1]["headers"].items()}
    assert headers["authorization"] == "Bearer sk-my-own-provider-key"
    second = c.chat.completions.create(model="test/model", messages=PROMPT, max_tokens=10)
    would = Decimal((second.usage.prompt_tokens + 4) * 1000) / 1_000_000
    assert usd(second.usage.model_extra["cost"]) == (would * Decimal("0.05")).quantize(
        Decimal("0.000001"))
    g = get(gw, f"/generation?id={second.id}", key).json()["data"]
    assert g["is_byok"] is True
    db = gw.gw.cfg.storage.ledger.removeprefix("sqlite:///")
    assert "sk-my-own-provider-key" not in "\n".join(sqlite3.connect(db).iterdump())


def test_streamed_cost_equals_charge_and_cancel_is_billed(stack: Stack) -> None:
    sim = stack.sim(reply="one two three four", tokens_per_s=200)
    gw = keyed(stack, [("acme", sim, {"prompt": "5", "completion": "50"})])
    key = new_key(gw)["key"]
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    chunks = list(c.chat.completions.create(model="test/model", messages=PROMPT, stream=True))
    cost = usd(chunks[-1].usage.model_extra["cost"])
    assert usd(get(gw, "/credits", key).json()["data"]["total_usage"]) == cost
    g = get(gw, f"/generation?id={chunks[0].id}", key).json()["data"]
    assert g["streamed"] is True and usd(g["total_cost"]) == cost
    slow = stack.sim(max_reply_tokens=200, tokens_per_s=20)
    gw2 = keyed(stack, [("slow", slow, {"prompt": "5", "completion": "50"})])
    key2 = new_key(gw2)["key"]
    with httpx.stream("POST", gw2.base_url + "/chat/completions",
                      headers={"Authorization": f"Bearer {key2}"},
                      json={"model": "test/model", "messages": PROMPT, "stream": True}) as r:
        gen_id = None
        for line in r.iter_lines():
            if line.startswith("data: ") and '"content":"' in line:
                gen_id = line.split('"id":"')[1].split('"')[0]
                break
    deadline = time.monotonic() + 3
    g = {}
    while time.monotonic() < deadline:
        resp = get(gw2, f"/generation?id={gen_id}", key2)
        if resp.status_code == 200:
            g = resp.json()["data"]
            break
        time.sleep(0.05)
    assert g["cancelled"] is True and g["streamed"] is True and usd(g["total_cost"]) > 0


def test_inactive_credits_expire(stack: Stack) -> None:
    sim = stack.sim()
    cfg = config([("acme", sim, {"prompt": "1"})], server={"auth": "keys"})
    gw = stack.gateway(cfg)
    made = new_key(gw, credits="5")
    db = gw.gw.cfg.storage.ledger.removeprefix("sqlite:///")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE accounts SET last_active = ?", (int(time.time()) - 366 * 86400,))
    conn.commit()
    conn.close()
    cfg2 = dict(cfg, storage={"ledger": gw.gw.cfg.storage.ledger})
    gw2 = stack.gateway(cfg2)  # a restart of the gateway on the same ledger
    data = get(gw2, "/credits", made["key"]).json()["data"]
    assert usd(data["total_credits"]) == 0
    r = httpx.post(gw2.base_url + "/chat/completions", json={"model": "test/model",
                   "messages": PROMPT}, headers={"Authorization": f"Bearer {made['key']}"})
    assert r.status_code == 402
