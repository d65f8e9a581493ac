"""The official OpenRouter Python SDK (`openrouter`) against the running gateway (SPEC §1.1: every
body validates as OpenRouter's SDKs check it). The SDK validates each response with pydantic and
raises ResponseValidationError on a missing or mistyped field, so each call here is also a schema
check; the assertions are what a user reads of the answer.

The SDK retries 5xx answers for up to an hour by default: every client here has
`retry_config=None`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from openrouter import OpenRouter, errors

from tests.conftest import GatewayHandle, SimHandle, Stack, config
from tests.functional.test_billing import ADMIN, new_key

MODEL = "test/model"
PRICES = {"prompt": "2", "completion": "10"}  # USD per 1M tokens
REPLY = "Paris is the capital of France"
ASK = [{"role": "user", "content": "Capital of France?"}]
PROTOCOLS = ("openai", "anthropic", "gemini", "openai-responses")
# What each simulator's mid-stream failure is in OpenRouter's `error_type`: a stream cut short or
# a server error is `provider_unavailable`, Anthropic's `overloaded_error` `provider_overloaded`.
MIDSTREAM_ERROR_TYPE = {"openai": "provider_unavailable", "anthropic": "provider_overloaded",
                        "gemini": "provider_unavailable", "openai-responses": "provider_unavailable"}
# The SDK warns when it reads /key's `rate_limit` and `is_provisioning_key`, two fields its schema
# both requires and marks deprecated: every /key answer makes the warning.
SDK_DEPRECATIONS = pytest.mark.filterwarnings("ignore:.*DEPRECATED.*:DeprecationWarning")


@pytest.fixture(autouse=True)
def _admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPROXY_ADMIN_KEY", ADMIN)
    monkeypatch.setenv("EDGEPROXY_BYOK_SECRET", "byok-sealing-secret")


def usd(value: Any) -> Decimal:
    return Decimal(str(value))


def price(prompt_tokens: int, completion_tokens: int) -> Decimal:
    return Decimal(prompt_tokens * int(PRICES["prompt"])
                   + completion_tokens * int(PRICES["completion"])) / 1_000_000


def keyed_gateway(stack: Stack, eps: list[tuple[str, SimHandle, dict[str, Any]]],
                  **kw: Any) -> GatewayHandle:
    return stack.gateway(config(eps, server={"auth": "keys"}, **kw))


Client = Callable[[GatewayHandle, str], OpenRouter]


@pytest.fixture
def sdk() -> Iterator[Client]:
    """Makes OpenRouter clients of a gateway and a key, closed at the test's end."""
    with ExitStack() as made:
        yield lambda gw, key: made.enter_context(OpenRouter(
            api_key=key, server_url=gw.base_url, retry_config=None, timeout_ms=20_000))


@pytest.fixture(params=PROTOCOLS)
def one_protocol(request: pytest.FixtureRequest, stack: Stack,
                 sdk: Client) -> tuple[str, GatewayHandle, OpenRouter]:
    sim = stack.sim(request.param, reply=REPLY)
    gw = keyed_gateway(stack, [("up", sim, PRICES)])
    return request.param, gw, sdk(gw, new_key(gw)["key"])


def test_chat_whole_and_streamed_then_its_generation(
    one_protocol: tuple[str, GatewayHandle, OpenRouter],
) -> None:
    protocol, _, client = one_protocol
    r = client.chat.send(model=MODEL, messages=ASK, max_tokens=50)
    assert r.object == "chat.completion" and r.id.startswith("gen-") and r.model == MODEL
    assert r.system_fingerprint is None or isinstance(r.system_fingerprint, str)  # required key
    choice = r.choices[0]
    assert choice.message.content == REPLY and choice.finish_reason == "stop"
    u = r.usage
    assert u is not None and u.completion_tokens == len(REPLY.split())
    assert usd(u.cost) == price(u.prompt_tokens, u.completion_tokens) and u.is_byok is False

    with client.chat.send(model=MODEL, messages=ASK, max_tokens=50, stream=True) as st:
        chunks = list(st)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    su = chunks[-1].usage
    assert su is not None and chunks[-1].choices == []
    assert usd(su.cost) == price(su.prompt_tokens, su.completion_tokens)

    for gen_id, cost, streamed in ((r.id, u.cost, False), (chunks[0].id, su.cost, True)):
        g = client.generations.get_generation(id=gen_id).data
        assert g.id == gen_id and g.model == MODEL and g.provider_name == "up"
        assert usd(g.total_cost) == usd(g.usage) == usd(cost)
        assert g.streamed is streamed and g.finish_reason == "stop" and g.is_byok is False
        assert g.tokens_completion == len(REPLY.split())
        assert abs(datetime.fromisoformat(g.created_at) - datetime.now(UTC)).total_seconds() < 300
        assert g.upstream_inference_cost is None and g.cache_discount is None
        # The provider's own id where the wire format carries one through (openai's chatcmpl-…).
        assert (g.upstream_id or "").startswith("chatcmpl-") == (protocol == "openai")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_midstream_error_reaches_the_sdk_as_an_error_chunk(stack: Stack, sdk: Client,
                                                             protocol: str) -> None:
    sim = stack.sim(protocol, reply="one two three four five six", fault="midstream_error",
                    drop_after=2)
    gw = keyed_gateway(stack, [("up", sim, PRICES)])
    client = sdk(gw, new_key(gw)["key"])
    with client.chat.send(model=MODEL, messages=ASK, stream=True) as st:
        chunks = list(st)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("one two")  # what came before the failure reached the client
    last = chunks[-1]
    assert last.error is not None and last.error.code == 502 and last.error.message
    assert last.error.metadata is not None
    assert last.error.metadata.error_type == MIDSTREAM_ERROR_TYPE[protocol]
    assert last.choices[0].finish_reason == "error"
    # Billed for what it delivered, and recorded so.
    g = client.generations.get_generation(id=last.id).data
    assert g.finish_reason == "error" and g.streamed is True


def test_models_list_pages_and_each_models_endpoints(stack: Stack, sdk: Client) -> None:
    sim = stack.sim()
    cfg = config([("up", sim, PRICES)], server={"auth": "keys"})
    for name in ("test/second", "test/third"):
        cfg["models"][name] = {"context_length": 8000,
                               "endpoints": [{"provider": "up", "model": "m", **PRICES}]}
    gw = stack.gateway(cfg)
    client = sdk(gw, new_key(gw)["key"])
    page = client.models.list()
    assert page is not None
    listed = page.result
    assert [m.id for m in listed.data] == [MODEL, "test/second", "test/third"]
    assert listed.total_count == 3 and listed.links.next is None and page.next() is None
    m = listed.data[0]
    assert m.pricing.prompt == "0.000002" and m.pricing.completion == "0.00001"
    assert m.links.details == f"/v1/models/{MODEL}/endpoints"
    assert m.default_parameters is None and m.per_request_limits is None
    # One model a page: the SDK follows them to the end.
    first = client.models.list(limit=1)
    assert first is not None and first.result.total_count == 3
    assert first.result.links.next == "/v1/models?offset=1&limit=1"
    ids, p = [], first
    while p is not None:
        ids += [x.id for x in p.result.data]
        p = p.next()
    assert ids == [MODEL, "test/second", "test/third"]
    # Under /api/v1 the links say so; a malformed page is a 400.
    api = httpx.get(gw.url + "/api/v1/models?limit=2").json()
    assert api["links"]["next"] == "/api/v1/models?limit=2&offset=2"
    assert api["data"][0]["links"]["details"] == f"/api/v1/models/{MODEL}/endpoints"
    for bad in ("limit=0", "offset=-1", "limit=many"):
        r = httpx.get(gw.base_url + "/models?" + bad)
        assert r.status_code == 400 and r.json()["error"]["code"] == 400, bad


def test_endpoints_report_status_uptime_and_percentiles(stack: Stack, sdk: Client) -> None:
    bad = stack.sim(fault="status", fault_status=500)
    good = stack.sim(tokens_per_s=2000)
    gw = keyed_gateway(stack, [("bad", bad, PRICES), ("good", good, PRICES)])
    client = sdk(gw, new_key(gw)["key"])
    for _ in range(4):  # `bad` first, each time: it fails, `good` serves
        with client.chat.send(model=MODEL, messages=ASK, stream=True,
                              provider={"order": ["bad", "good"]}) as st:
            assert "".join(c.choices[0].delta.content or "" for c in st if c.choices)
    d = client.endpoints.list(author="test", slug="model").data
    assert d.id == MODEL and d.architecture.instruct_type is None
    eps = {e.tag: e for e in d.endpoints}
    assert set(eps) == {"bad", "good"}
    b, g = eps["bad"], eps["good"]
    assert b.model_id == g.model_id == MODEL and g.provider_name == "good"
    assert b.status == -1 and g.status == 0  # degraded, healthy
    assert b.uptime_last_5m == b.uptime_last_30m == b.uptime_last_1d == 0.0
    assert g.uptime_last_5m == g.uptime_last_30m == g.uptime_last_1d == 100.0
    assert b.latency_last_30m is None and b.throughput_last_30m is None  # it never answered
    lat, tput = g.latency_last_30m, g.throughput_last_30m
    assert lat is not None and 0 < lat.p50 <= lat.p75 <= lat.p90 <= lat.p99
    # Throughput's p90 is what 90 % of requests reach: the slowest figures are the high ones.
    assert tput is not None and tput.p50 >= tput.p75 >= tput.p90 >= tput.p99 > 0
    assert g.supports_tool_choice.required and g.native_tools == {} and g.service_tier is None
    assert g.context_length == 32000 and g.max_prompt_tokens is None
    with pytest.raises(errors.NotFoundResponseError) as ei:
        client.endpoints.list(author="nobody", slug="nothing")
    assert ei.value.data.error.code == 404


@SDK_DEPRECATIONS
def test_key_credits_and_generations_of_an_account(stack: Stack, sdk: Client) -> None:
    sim = stack.sim(reply="a b c d")
    cfg = config([("acme", sim, PRICES)], server={"auth": "keys"})
    cfg["models"]["test/free"] = {"context_length": 8000,
                                  "endpoints": [{"provider": "acme", "model": "f"}]}
    gw = stack.gateway(cfg)
    made = new_key(gw, credits="10", limit="5")
    client = sdk(gw, made["key"])
    costs = [usd(client.chat.send(model=MODEL, messages=ASK).usage.cost) for _ in range(2)]
    client.chat.send(model="test/free", messages=ASK)
    credits = client.credits.get_credits().data
    assert usd(credits.total_credits) == 10 and usd(credits.total_usage) == sum(costs)

    k = client.api_keys.get_current_key_metadata().data
    assert k.label == "tester" and usd(k.usage) == sum(costs)
    assert usd(k.usage_daily) == usd(k.usage_weekly) == usd(k.usage_monthly) == sum(costs)
    assert k.byok_usage == k.byok_usage_daily == k.byok_usage_monthly == 0
    assert usd(k.limit) == 5 and usd(k.limit_remaining) == 5 - sum(costs)
    assert k.limit_reset is None and k.include_byok_in_limit is False
    assert k.is_free_tier is False and k.is_management_key is False
    assert [b.scope for b in k.budgets] == ["key_limit"] and k.effective_budget is not None
    assert usd(k.effective_budget.remaining_usd) == 5 - sum(costs)
    assert k.free_model_daily_requests.limit == 1000  # $10 bought: the paid tier (SPEC §5.5)
    assert k.free_model_daily_requests.used == 1
    assert k.free_model_daily_requests.remaining == k.free_model_daily_requests.limit - 1

    # Errors arrive as the SDK's typed ones.
    with pytest.raises(errors.NotFoundResponseError):
        client.generations.get_generation(id="gen-0-doesnotexist")
    with pytest.raises(errors.UnauthorizedResponseError) as ei:
        sdk(gw, "sk-ep-v1-nope").api_keys.get_current_key_metadata()
    assert ei.value.data.error.code == 401
    with pytest.raises(errors.BadRequestResponseError) as bi:
        client.chat.send(model="nope/does-not-exist", messages=ASK)
    assert bi.value.data.error.code == 400


@SDK_DEPRECATIONS
def test_byok_usage_is_what_the_accounts_own_key_paid(stack: Stack, sdk: Client) -> None:
    sim = stack.sim(reply="a b c d")
    gw = keyed_gateway(stack, [("acme", sim, PRICES)])
    key = new_key(gw, credits="1")["key"]
    r = httpx.post(gw.base_url + "/byok", headers={"Authorization": f"Bearer {key}"},
                   json={"provider": "acme", "api_key": "sk-my-own-provider-key"})
    assert r.status_code == 200
    client = sdk(gw, key)
    out = client.chat.send(model=MODEL, messages=ASK)
    assert out.usage.is_byok is True and out.usage.cost == 0  # within the free allowance
    would = price(out.usage.prompt_tokens, out.usage.completion_tokens)
    g = client.generations.get_generation(id=out.id).data
    assert g.is_byok is True and usd(g.upstream_inference_cost) == would and g.total_cost == 0
    k = client.api_keys.get_current_key_metadata().data
    assert usd(k.byok_usage) == usd(k.byok_usage_daily) == usd(k.byok_usage_monthly) == would
    assert k.usage == 0
