"""The core gateway through the official openai SDK, against real simulated providers."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx
import openai
import orjson
import pytest

from tests.conftest import Stack, config
from tests.nodes import wait_until

PROMPT = [{"role": "user", "content": "Say hello to the gateway"}]


def client(gw, key: str = "sk-client-secret-key") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)


def aclient(gw, key: str = "sk-client-secret-key") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)


def test_sync_completion_shape_usage_and_cost(stack: Stack) -> None:
    sim = stack.sim(reply="Hello there, friend")
    gw = stack.gateway(config([("acme", sim, {"prompt": "3", "completion": "15"})]))
    r = client(gw).chat.completions.create(model="test/model", messages=PROMPT, max_tokens=50)
    assert r.id.startswith("gen-")
    assert r.model == "test/model"
    assert r.model_extra["provider"] == "acme"
    assert r.choices[0].message.content == "Hello there, friend"
    assert r.choices[0].finish_reason == "stop"
    u = r.usage
    assert u.prompt_tokens == 5 and u.completion_tokens == 3 and u.total_tokens == 8
    # 5 × $3/M + 3 × $15/M, exactly
    raw = httpx.post(gw.base_url + "/chat/completions",
                     json={"model": "test/model", "messages": PROMPT}).content
    cost = orjson.loads(raw, ) and Decimal(raw.split(b'"cost":')[1].split(b",")[0].decode())
    assert cost == Decimal(5 * 3 + 3 * 15) / 1_000_000
    assert u.model_extra["is_byok"] is False


async def test_async_completion(stack: Stack) -> None:
    sim = stack.sim()
    gw = stack.gateway(config([("acme", sim, {"prompt": "1", "completion": "1"})]))
    async with aclient(gw) as c:
        r = await c.chat.completions.create(model="test/model", messages=PROMPT)
    assert r.choices[0].message.content.startswith("Echo: Say hello to the gateway")
    assert r.usage.model_extra["cost"] > 0


def _collect(stream) -> tuple[str, list]:
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_sync_stream_has_one_usage_chunk_with_cost(stack: Stack) -> None:
    sim = stack.sim(reply="one two three four")
    gw = stack.gateway(config([("acme", sim, {"prompt": "2", "completion": "4"})]))
    stream = client(gw).chat.completions.create(model="test/model", messages=PROMPT, stream=True)
    text, chunks = _collect(stream)
    assert text == "one two three four"
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("gen-")
    assert all(c.model == "test/model" and c.model_extra["provider"] == "acme" for c in chunks)
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
    assert chunks[-1].choices == []
    u = chunks[-1].usage
    assert (u.prompt_tokens, u.completion_tokens) == (5, 4)
    assert Decimal(str(u.model_extra["cost"])) == Decimal(5 * 2 + 4 * 4) / 1_000_000
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    # The upstream was asked for usage even though the client did not ask.
    assert sim.requests()[-1]["body"]["stream_options"] == {"include_usage": True}


async def test_async_stream(stack: Stack) -> None:
    sim = stack.sim(reply="alpha beta", tokens_per_s=500)
    gw = stack.gateway(config([("acme", sim, {"prompt": "1", "completion": "1"})]))
    async with aclient(gw) as c:
        stream = await c.chat.completions.create(
            model="test/model", messages=PROMPT, stream=True,
            stream_options={"include_usage": True},
        )
        text = ""
        last = None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            last = chunk
    assert text == "alpha beta"
    assert last is not None and last.usage is not None and last.usage.completion_tokens == 2


def test_upstream_never_sees_the_client_key_and_gets_its_own_model_id(stack: Stack) -> None:
    sim = stack.sim()
    gw = stack.gateway(config([("acme", sim, {})]))
    client(gw, key="sk-client-secret-key").chat.completions.create(
        model="test/model", messages=PROMPT, temperature=0.5,
        extra_body={"provider": {"sort": "price"}, "models": ["test/model"], "transforms": []},
    )
    req = sim.requests()[-1]
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert headers["authorization"] == "Bearer sk-upstream-provider-key"
    assert "sk-client-secret-key" not in orjson.dumps(req).decode()
    body = req["body"]
    assert body["model"] == "acme-upstream-model"
    assert body["temperature"] == 0.5 and body["messages"] == PROMPT
    for gateway_only in ("provider", "models", "transforms"):
        assert gateway_only not in body


def test_default_routing_shares_follow_inverse_square_price(stack: Stack) -> None:
    sims = [stack.sim() for _ in range(3)]
    eps = [(f"p{i}", s, {"prompt": str(i + 1)}) for i, s in enumerate(sims)]
    gw = stack.gateway(config(eps), seed=7)
    c = client(gw)
    n = 600
    for _ in range(n):
        c.chat.completions.create(model="test/model", messages=PROMPT, max_tokens=1)
    counts = [s.count() for s in sims]
    assert sum(counts) == n
    weights = [1, 1 / 4, 1 / 9]
    expected = [n * w / sum(weights) for w in weights]
    chi2 = sum((o - e) ** 2 / e for o, e in zip(counts, expected, strict=True))
    assert chi2 < 13.8, (counts, expected)  # p = 0.001 for 2 degrees of freedom
    assert counts[0] > counts[1] > counts[2]


def test_failing_endpoint_is_demoted_then_recovers(stack: Stack) -> None:
    cheap = stack.sim(fault="status", fault_status=500)
    dear = stack.sim()
    gw = stack.gateway(
        config([("cheap", cheap, {"prompt": "1"}), ("dear", dear, {"prompt": "20"})],
               routing={"window_s": 1, "bucket_ms": 100, "min_failures": 3}),
    )
    c = client(gw)
    for _ in range(10):
        r = c.chat.completions.create(model="test/model", messages=PROMPT)
        assert r.model_extra["provider"] == "dear"  # every failure fell back
    # Demoted after 3 failures: the later requests no longer tried the failing endpoint first.
    assert cheap.count() <= 4
    assert gw.gw.routes.is_degraded(gw.gw.routes.endpoints[0])
    cheap.configure(fault="")

    def status() -> dict[str, int]:  # OpenRouter's endpoint status: 0 ok, -1 degraded
        eps = httpx.get(gw.base_url + "/models/test/model/endpoints").json()["data"]["endpoints"]
        return {e["provider_name"]: e["status"] for e in eps}

    # the window slides past the failures
    wait_until(lambda: status() == {"cheap": 0, "dear": 0}, 10, what="cheap to recover")
    providers = [
        c.chat.completions.create(model="test/model", messages=PROMPT).model_extra["provider"]
        for _ in range(10)
    ]
    assert providers.count("cheap") >= 8


def test_nitro_follows_measured_throughput(stack: Stack) -> None:
    fast = stack.sim(tokens_per_s=400)
    slow = stack.sim(tokens_per_s=40)
    # Declared speeds say the opposite of what the providers really do.
    gw = stack.gateway(config([
        ("fast", fast, {"prompt": "1", "throughput": 10}),
        ("slow", slow, {"prompt": "1", "throughput": 1000}),
    ]))
    c = client(gw)

    def nitro() -> str:
        r = c.chat.completions.create(model="test/model:nitro", messages=PROMPT, max_tokens=8)
        return r.model_extra["provider"]

    assert nitro() == "slow"  # no history yet: the declared figure decides
    for name in ("fast", "slow"):
        for _ in range(2):
            list(c.chat.completions.create(
                model="test/model", messages=PROMPT, stream=True, max_tokens=8,
                extra_body={"provider": {"only": [name]}},
            ))
    assert [nitro() for _ in range(3)] == ["fast"] * 3
    floor = c.chat.completions.create(model="test/model:floor", messages=PROMPT)
    assert floor.model_extra["provider"] in ("fast", "slow")


@pytest.mark.parametrize(
    "fault",
    [
        {"fault": "status", "fault_status": 500},
        {"fault": "status", "fault_status": 503},
        {"fault": "status", "fault_status": 429, "retry_after": 30},
        {"fault": "status", "fault_status": 401},
        {"fault": "status", "fault_status": 402},
        {"fault": "status", "fault_status": 403},
        {"fault": "reset"},
        {"fault": "garbage"},
        {"fault": "hang"},
        {"error_rate": 1.0},
    ],
    ids=lambda f: f.get("fault", "") + str(f.get("fault_status", f.get("error_rate", ""))),
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_fallback_on_each_upstream_fault(stack: Stack, fault: dict, stream: bool) -> None:
    bad = stack.sim(**fault)
    good = stack.sim(reply="from the good one")
    gw = stack.gateway(config(
        [("bad", bad, {"prompt": "1"}), ("good", good, {"prompt": "2"})],
        providers_extra={"bad": {"first_byte_timeout_s": 0.5}},
    ))
    c = client(gw)
    kwargs = {"extra_body": {"provider": {"order": ["bad", "good"]}}}
    if stream:
        text, chunks = _collect(c.chat.completions.create(
            model="test/model", messages=PROMPT, stream=True, **kwargs))
        assert text == "from the good one"
        assert chunks[-1].model_extra["provider"] == "good"
    else:
        r = c.chat.completions.create(model="test/model", messages=PROMPT, **kwargs)
        assert r.choices[0].message.content == "from the good one"
        assert r.model_extra["provider"] == "good"
    assert bad.count() == 1
    if fault.get("fault_status") == 429:
        ep = gw.gw.routes.endpoints[0]
        assert gw.gw.routes.is_degraded(ep)  # cooled down for Retry-After seconds


def test_stream_falls_back_when_upstream_drops_before_content(stack: Stack) -> None:
    bad = stack.sim(fault="drop", drop_after=0)
    good = stack.sim(reply="safe and sound")
    gw = stack.gateway(config([("bad", bad, {"prompt": "1"}), ("good", good, {"prompt": "50"})]))
    text, _chunks = _collect(client(gw).chat.completions.create(
        model="test/model", messages=PROMPT, stream=True))
    assert text == "safe and sound"
    assert bad.count() == 1


def test_midstream_failure_ends_with_error_chunk_and_done(stack: Stack) -> None:
    bad = stack.sim(fault="drop", drop_after=3, reply="a b c d e f g h")
    good = stack.sim()
    gw = stack.gateway(config([("bad", bad, {"prompt": "1"}), ("good", good, {"prompt": "50"})]))
    with httpx.stream("POST", gw.base_url + "/chat/completions", json={
        "model": "test/model", "messages": PROMPT, "stream": True,
    }) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = orjson.loads(events[-2])
    assert last["choices"][0]["finish_reason"] == "error"
    assert last["error"]["code"] == 502 and "bad" in last["error"]["message"]
    text = "".join(
        (orjson.loads(e)["choices"][0]["delta"].get("content") or "") for e in events[:-2]
    )
    assert text == "a b c"
    assert good.count() == 0  # content had reached the client: no silent restart elsewhere


def test_client_disconnect_cancels_the_upstream(stack: Stack) -> None:
    sim = stack.sim(tokens_per_s=20, max_reply_tokens=200)
    gw = stack.gateway(config([("acme", sim, {})]))
    with httpx.stream("POST", gw.base_url + "/chat/completions", json={
        "model": "test/model", "messages": PROMPT, "stream": True,
    }) as r:
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                seen += 1
            if seen == 3:
                break
    wait_until(lambda: sim.stats()["cancelled"] >= 1, 10, what="the upstream to be cancelled")
    stats = sim.stats()
    assert stats["cancelled"] == 1 and stats["active"] == 0


def test_keepalive_comments_while_waiting_for_first_byte(stack: Stack) -> None:
    sim = stack.sim(latency_ms=1200, reply="late but here")
    gw = stack.gateway(config([("acme", sim, {})], server={"keepalive_s": 0.25}))
    with httpx.stream("POST", gw.base_url + "/chat/completions", json={
        "model": "test/model", "messages": PROMPT, "stream": True,
    }) as r:
        lines = [line for line in r.iter_lines() if line]
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data: "))
    comments = [line for line in lines[:first_data] if line == ": EDGEPROXY PROCESSING"]
    assert len(comments) >= 3
    assert all(not line.startswith(":") for line in lines[first_data:])
    # and the SDK, which must ignore them, still sees the whole answer
    text, _ = _collect(client(gw).chat.completions.create(
        model="test/model", messages=PROMPT, stream=True))
    assert text == "late but here"


def test_models_fallback_list_and_allow_fallbacks_false(stack: Stack) -> None:
    broken = stack.sim(fault="status", fault_status=500)
    backup = stack.sim(reply="backup model here")
    cfg = config([("broken", broken, {})], model="a/first")
    cfg2 = config([("backup", backup, {})], model="b/second")
    cfg["providers"].update(cfg2["providers"])
    cfg["models"].update(cfg2["models"])
    gw = stack.gateway(cfg)
    c = client(gw)
    r = c.chat.completions.create(model="a/first", messages=PROMPT,
                                  extra_body={"models": ["b/second"]})
    assert r.model == "b/second" and r.choices[0].message.content == "backup model here"
    with pytest.raises(openai.APIStatusError) as ei:
        c.chat.completions.create(model="a/first", messages=PROMPT,
                                  extra_body={"provider": {"allow_fallbacks": False}})
    assert ei.value.status_code == 502
    err = ei.value.body
    assert err["metadata"]["provider_name"] == "broken"
    assert err["metadata"]["raw"]["type"] == "server_error"


def test_provider_filters_and_404_names_the_requirement(stack: Stack) -> None:
    a, b = stack.sim(), stack.sim()
    gw = stack.gateway(config(
        [("a", a, {"prompt": "1", "quantization": "fp8"}),
         ("b", b, {"prompt": "2", "quantization": "int4", "supported_parameters": ["max_tokens"],
                   "context_length": 500})],
        context_length=1000,
        providers_extra={"a": {"data_collection": "allow"}, "b": {"data_collection": "deny"}},
    ))
    c = client(gw)

    def provider(**prefs) -> str:
        return c.chat.completions.create(
            model="test/model", messages=PROMPT, extra_body={"provider": prefs}
        ).model_extra["provider"]

    assert provider(only=["b"]) == "b"
    assert provider(ignore=["a"]) == "b"
    assert provider(quantizations=["int4"]) == "b"
    assert provider(data_collection="deny") == "b"
    assert provider(max_price={"prompt": 1.5}) == "a"
    assert provider(order=["b", "a"]) == "b"
    assert provider(sort="price") == "a"

    def status_of(**kw) -> tuple[int, str]:
        with pytest.raises(openai.APIStatusError) as ei:
            c.chat.completions.create(model="test/model", messages=PROMPT, **kw)
        return ei.value.status_code, ei.value.body["message"]

    s, msg = status_of(extra_body={"provider": {"zdr": True}})
    assert s == 404 and "zdr" in msg
    s, msg = status_of(extra_body={"provider": {"only": ["nobody"]}})
    assert s == 404 and "provider" in msg
    s, msg = status_of(max_tokens=800, extra_body={"provider": {"only": ["b"]}})
    assert s == 404 and "context length" in msg and "800" in msg
    s, msg = status_of(max_tokens=5000)  # more than any endpoint of the model has
    assert s == 400 and "1000" in msg and "5000" in msg and "middle-out" in msg
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    s, msg = status_of(tools=tools, extra_body={"provider": {"only": ["b"]}})
    assert s == 404 and "tools" in msg
    assert (a.count(), b.count()) == (2, 5)  # nothing reached an upstream for the 404s


def test_429_everywhere_is_a_429_with_retry_after(stack: Stack) -> None:
    sim = stack.sim(fault="status", fault_status=429, retry_after=7)
    gw = stack.gateway(config([("acme", sim, {})]))
    r = httpx.post(gw.base_url + "/chat/completions",
                   json={"model": "test/model", "messages": PROMPT})
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "7"
    assert r.json()["error"]["code"] == 429


def test_all_endpoints_degraded_gives_503(stack: Stack) -> None:
    sim = stack.sim(fault="status", fault_status=500)
    gw = stack.gateway(config([("acme", sim, {})], routing={"min_failures": 2}))
    codes = [httpx.post(gw.base_url + "/chat/completions",
                        json={"model": "test/model", "messages": PROMPT}).status_code
             for _ in range(4)]
    assert codes[:2] == [502, 502] and codes[2:] == [503, 503]
    r = httpx.get(gw.url + "/readyz")
    assert r.status_code == 503 and r.json()["degraded"] == ["test/model@acme"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b"[]", 400, "invalid request"),
        (b'{"model": "test/model", "messages": "hi"}', 400, "messages"),
        (b'{"model": "test/model", "messages": []}', 400, "messages"),
        (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', 400, "model"),
        (b'{"model": "nope/none", "messages": [{"role": "user", "content": "x"}]}', 400,
         "not a valid model"),
        (b'{"model": "test/model:turbo", "messages": [{"role": "user", "content": "x"}]}', 400,
         "variant"),
        (b'{"model": "test/model", "max_tokens": -1, "messages": [{"role": "user", "content": "x"}]}',
         400, "max_tokens"),
        (b'{"model": "test/model", "messages": [{"role": "wizard", "content": "x"}]}', 400, "role"),
        (b'{"model": "test/model", "temperature": "hot", "messages": [{"role": "user"}]}', 400,
         "temperature"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
    ],
)
def test_bad_input_is_a_clear_4xx_and_reaches_no_upstream(
    stack: Stack, body: bytes, status: int, words: str
) -> None:
    sim = stack.sim()
    gw = stack.gateway(config([("acme", sim, {})]))
    r = httpx.post(gw.base_url + "/chat/completions", content=body,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert err["code"] == status and words in err["message"]
    assert sim.count() == 0


def test_oversized_body_is_413(stack: Stack) -> None:
    sim = stack.sim()
    gw = stack.gateway(config([("acme", sim, {})], server={"max_body_bytes": 4096}))
    big = {"model": "test/model", "messages": [{"role": "user", "content": "x" * 10_000}]}
    r = httpx.post(gw.base_url + "/chat/completions", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == 413
    assert sim.count() == 0


def test_models_health_and_metrics(stack: Stack) -> None:
    sim = stack.sim()
    gw = stack.gateway(config([("acme", sim, {"prompt": "0.35", "completion": "0.4"})]))
    for prefix in ("/v1", "/api/v1"):
        models = httpx.get(gw.url + prefix + "/models").json()["data"]
        m = models[0]
        assert m["id"] == "test/model"
        assert m["pricing"]["prompt"] == "0.00000035"
        assert m["pricing"]["completion"] == "0.0000004"
        assert m["context_length"] == 32000
        assert m["architecture"]["input_modalities"] == ["text"]
    listed = client(gw).models.list()
    assert [x.id for x in listed] == ["test/model"]
    assert httpx.get(gw.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(gw.url + "/readyz").status_code == 200
    client(gw).chat.completions.create(model="test/model", messages=PROMPT)
    text = httpx.get(gw.url + "/metrics").text
    assert 'edgeproxy_requests_total{model="test/model",provider="acme",status="200"} 1' in text
    assert "edgeproxy_router_compiled 1" in text
    assert httpx.get(gw.url + "/v1/nowhere").json()["error"]["code"] == 404
    r = httpx.get(gw.base_url + "/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == 405


def test_api_v1_prefix_serves_chat(stack: Stack) -> None:
    sim = stack.sim(reply="prefix ok")
    gw = stack.gateway(config([("acme", sim, {})]))
    c = openai.OpenAI(base_url=gw.url + "/api/v1", api_key="x", max_retries=0)
    assert c.chat.completions.create(
        model="test/model", messages=PROMPT).choices[0].message.content == "prefix ok"


async def test_concurrent_streams_all_complete(stack: Stack) -> None:
    sims = [stack.sim(tokens_per_s=300), stack.sim(tokens_per_s=300)]
    gw = stack.gateway(config([("a", sims[0], {"prompt": "1"}), ("b", sims[1], {"prompt": "1"})]))
    async with aclient(gw) as c:
        async def one() -> int:
            s = await c.chat.completions.create(model="test/model", messages=PROMPT, stream=True)
            n = 0
            async for chunk in s:
                n += bool(chunk.usage)
            return n
        results = await asyncio.gather(*(one() for _ in range(32)))
    assert results == [1] * 32
