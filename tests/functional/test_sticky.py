"""Sticky routing (SPEC §2.6): a conversation, named by `session_id` or by a prompt prefix that hit
the provider's cache, stays on the endpoint that served it while that endpoint is stable, so its
prompt cache stays warm; requests without one spread by price. Through the openai SDK's
extra_body against real simulators, and across two gateways sharing a real Redis."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import openai
import pytest
import redis

from tests.conftest import Stack, config
from tests.nodes import wait_until

PROMPT: Any = [{"role": "system", "content": "You are terse."},
          {"role": "user", "content": "Say hello to the gateway"}]
ROUTE = "X-Edgeproxy-Route"


def client(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0, timeout=20)


def served(c: openai.OpenAI, messages: Any = PROMPT,
           headers: dict[str, str] | None = None, **body: Any) -> tuple[str, str]:
    """(provider, route header) of one answer."""
    raw = c.chat.completions.with_raw_response.create(
        model="test/model", messages=messages, max_tokens=4, extra_body=body,
        extra_headers=headers)
    return (raw.parse().model_extra or {})["provider"], raw.headers[ROUTE]


def two_endpoints(stack: Stack, cheap: str = "1", dear: str = "1.2", state: str = "",
                  **sim: Any) -> Any:
    a, b = stack.sim(**sim), stack.sim(**sim)
    cfg = config([("cheap", a, {"prompt": cheap, "completion": cheap}),
                  ("dear", b, {"prompt": dear, "completion": dear})])
    if state:
        cfg["storage"] = {"ledger": f"sqlite:///{stack.tmp}/ledger-{id(cfg)}.db", "state": state}
    return stack.gateway(cfg), {"cheap": a, "dear": b}


def test_requests_without_a_session_spread_by_price(stack: Stack) -> None:
    gw, _ = two_endpoints(stack)
    c = client(gw)
    routes = [served(c) for _ in range(40)]
    counts = Counter(p for p, _ in routes)
    # 1/price² weights 1 : 0.69 — both endpoints get traffic, the cheaper one more
    assert counts["cheap"] > 0 and counts["dear"] > 0, counts
    assert not any("sticky" in r for _, r in routes)


def test_one_session_stays_on_one_endpoint(stack: Stack) -> None:
    gw, _ = two_endpoints(stack)
    c = client(gw)
    first, route = served(c, session_id="conv-1")
    assert "sticky" not in route  # nothing pinned yet
    for i in range(20):
        messages = [*PROMPT, {"role": "assistant", "content": "hi"},
                    {"role": "user", "content": f"turn {i}"}]
        provider, route = served(c, messages, session_id="conv-1")
        assert provider == first
        assert route == "default (1/price² weighted), sticky"
    # a streamed answer keeps to the pin too
    with c.chat.completions.with_streaming_response.create(
            model="test/model", messages=PROMPT, max_tokens=4, stream=True,
            extra_body={"session_id": "conv-1"}) as resp:
        assert resp.headers[ROUTE].endswith(", sticky")
        chunks = list(resp.parse())
    assert (chunks[0].model_extra or {})["provider"] == first
    # the header form pins the same way (here to the other endpoint, which `only` picks first);
    # the body wins when both are sent
    other = "dear" if first == "cheap" else "cheap"
    assert served(c, headers={"x-session-id": "conv-2"}, provider={"only": [other]})[0] == other
    for _ in range(10):
        assert served(c, headers={"x-session-id": "conv-2"}) == (
            other, "default (1/price² weighted), sticky")
    assert served(c, headers={"x-session-id": "conv-2"}, session_id="conv-1")[0] == first
    # an explicit provider.order wins over the pin (OpenRouter's rule)
    assert served(c, session_id="conv-1", provider={"order": [other]}) == (
        other, "provider.order")
    # ... and leaves the pin where it was
    assert served(c, session_id="conv-1")[0] == first


def test_a_session_id_is_held_to_256_characters(stack: Stack) -> None:
    gw, _ = two_endpoints(stack)
    c = client(gw)
    for kw in ({"session_id": "s" * 257}, {"headers": {"x-session-id": "s" * 257}}):
        with pytest.raises(openai.BadRequestError) as ei:
            served(c, **kw)
        assert "256" in str(ei.value)
    assert served(c, session_id="s" * 256)[0] in ("cheap", "dear")


def test_a_degraded_pin_moves_to_the_endpoint_that_serves(stack: Stack) -> None:
    gw, sims = two_endpoints(stack)
    c = client(gw)
    pinned, _ = served(c, session_id="conv")
    other = "dear" if pinned == "cheap" else "cheap"
    sims[pinned].configure(fault="status", fault_status=500)
    # the pinned endpoint fails until it is degraded (5 failures in a row)
    for _ in range(5):
        with pytest.raises(openai.APIStatusError):
            served(c, provider={"only": [pinned]})
    provider, route = served(c, session_id="conv")
    assert provider == other and "sticky" not in route
    sims[pinned].configure(fault="")
    # the pin moved with the answer: the conversation stays on its new endpoint
    for _ in range(10):
        assert served(c, session_id="conv") == (other, "default (1/price² weighted), sticky")


def test_a_prefix_that_hit_the_cache_stays(stack: Stack) -> None:
    gw, _ = two_endpoints(stack, cached_tokens=5)
    c = client(gw)
    first, route = served(c)
    assert "sticky" not in route
    for i in range(15):  # the same system and first user message: the same conversation
        messages = [*PROMPT, {"role": "assistant", "content": "hi"},
                    {"role": "user", "content": f"turn {i}"}]
        assert served(c, messages) == (first, "default (1/price² weighted), sticky")
    # another conversation is not pinned by this one
    assert "sticky" not in served(c, [{"role": "user", "content": "another topic"}])[1]


def test_a_session_is_sticky_across_gateways_sharing_redis(stack: Stack, redis_server) -> None:
    url = redis_server[0]
    a, sims = two_endpoints(stack, cheap="1", dear="9", state=url)
    cfg = config([("cheap", sims["cheap"], {"prompt": "1", "completion": "1"}),
                  ("dear", sims["dear"], {"prompt": "9", "completion": "9"})])
    cfg["storage"] = {"ledger": f"sqlite:///{stack.tmp}/ledger-b.db", "state": url}
    b = stack.gateway(cfg, seed=99)
    # served by the dear endpoint on node a (the default order would pick it 1 time in 82)
    assert served(client(a), session_id="agent-7", provider={"only": ["dear"]})[0] == "dear"
    r = redis.Redis.from_url(url)
    try:
        wait_until(lambda: r.keys("ep:pin:*"), what="the pin in Redis")
    finally:
        r.close()
    cb = client(b)
    for _ in range(5):
        assert served(cb, session_id="agent-7") == ("dear", "default (1/price² weighted), sticky")
    # /generation shows the same route
    raw = cb.chat.completions.with_raw_response.create(
        model="test/model", messages=PROMPT, max_tokens=4, extra_body={"session_id": "agent-7"})
    url_gen = f"{b.base_url}/generation?id={raw.parse().id}"

    def generation() -> dict[str, Any] | None:
        got = httpx.get(url_gen, headers={"Authorization": "Bearer sk-client"})
        return got.json()["data"] if got.status_code == 200 else None

    assert wait_until(generation, what="the generation record")["route"] == (
        "default (1/price² weighted), sticky")
