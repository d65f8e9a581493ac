"""The Anthropic Messages dialect through the running gateway, driven by the anthropic SDK against
simulated upstreams of every protocol: what a Messages client (a Claude-style coding agent) sees is
Anthropic's own wire shape whichever format the provider speaks (SPEC §3)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import Message

from edgeproxy.simulate.anthropic import signature
from tests.conftest import Stack, config
from tests.functional.test_billing import ADMIN, new_key

PROTOCOLS = ["openai", "anthropic", "gemini"]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather of a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]


def gateway_for(stack: Stack, protocol: str, server: dict[str, Any] | None = None,
                **sim_opts: Any) -> tuple[Any, Any, anthropic.Anthropic]:
    sim = stack.sim(protocol, **sim_opts)
    gw = stack.gateway(config([("up", sim, {"prompt": "2", "completion": "10"})], server=server))
    return sim, gw, anthropic.Anthropic(base_url=gw.url, api_key="sk-client", max_retries=0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_create_text_with_usage_and_cost(stack: Stack, protocol: str) -> None:
    sim, gw, c = gateway_for(stack, protocol, reply="Paris is the capital")
    msg = c.messages.create(model="test/model", max_tokens=100, system="Be brief.",
                            messages=[{"role": "user", "content": "Capital of France?"}])
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "Paris is the capital"
    assert msg.stop_reason == "end_turn" and msg.model == "test/model"
    assert msg.usage.output_tokens == 4 and msg.usage.input_tokens > 0
    expected = Decimal(msg.usage.input_tokens * 2 + 4 * 10) / 1_000_000
    assert Decimal(str(msg.usage.model_extra["cost"])) == expected
    # The message id is the generation's: /generation knows it.
    g = httpx.get(gw.base_url + "/generation", params={"id": msg.id})
    assert g.status_code == 200 and g.json()["data"]["tokens_completion"] == 4
    body = sim.requests()[-1]["body"]
    if protocol == "openai":
        assert body["messages"][0] == {"role": "system", "content": "Be brief."}
        assert body["max_tokens"] == 100
    elif protocol == "anthropic":
        assert body["system"] == "Be brief." and body["max_tokens"] == 100
    else:
        assert body["systemInstruction"]["parts"][0]["text"] == "Be brief."


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_stream_text_and_final_message(stack: Stack, protocol: str) -> None:
    _, _gw, c = gateway_for(stack, protocol, reply="one two three")
    with c.messages.stream(model="test/model", max_tokens=50,
                           messages=[{"role": "user", "content": "count"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "one two three"
    assert final.id.startswith("gen-") and final.model == "test/model"
    assert final.content[0].text == "one two three"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 3 and final.usage.input_tokens > 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tool_use_round_trip(stack: Stack, protocol: str, stream: bool) -> None:
    sim, _gw, c = gateway_for(stack, protocol)
    msg: Message
    if stream:
        with c.messages.stream(model="test/model", max_tokens=200, messages=ASK,
                               tools=[WEATHER_TOOL]) as s:
            msg = s.get_final_message()
    else:
        msg = c.messages.create(model="test/model", max_tokens=200, messages=ASK,
                                tools=[WEATHER_TOOL])
    assert msg.stop_reason == "tool_use"
    calls = [b for b in msg.content if b.type == "tool_use"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].id
    assert isinstance(calls[0].input, dict) and isinstance(calls[0].input["city"], str)
    # The tool's answer goes back as a tool_result; the model's final answer uses it.
    final = c.messages.create(model="test/model", max_tokens=200, tools=[WEATHER_TOOL], messages=[
        *ASK,
        {"role": "assistant", "content": msg.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": calls[0].id,
                                      "content": "12 degrees and rain"}]},
    ])
    assert final.stop_reason == "end_turn"
    assert "12 degrees and rain" in final.content[0].text
    body = sim.requests()[-1]["body"]
    if protocol == "openai":
        assert body["messages"][1]["tool_calls"][0]["id"] == calls[0].id
        assert body["messages"][2] == {"role": "tool", "tool_call_id": calls[0].id,
                                       "content": "12 degrees and rain"}
    elif protocol == "anthropic":
        assert body["messages"][1]["content"][-1]["type"] == "tool_use"
        assert body["messages"][2]["content"][0] == {
            "type": "tool_result", "tool_use_id": calls[0].id, "content": "12 degrees and rain"}
    else:
        assert "functionCall" in body["contents"][1]["parts"][-1]
        assert body["contents"][2]["parts"][0]["functionResponse"]["name"] == "get_weather"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_system_as_blocks(stack: Stack, protocol: str) -> None:
    sim, _gw, c = gateway_for(stack, protocol, reply="ok")
    system = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
              {"type": "text", "text": " Answer in English."}]
    msg = c.messages.create(model="test/model", max_tokens=20, system=system,
                            messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "ok"
    body = sim.requests()[-1]["body"]
    if protocol == "openai":  # (OpenAI caches by itself: the mark is not sent)
        assert body["messages"][0] == {"role": "system", "content": [
            {"type": "text", "text": "Be brief."}, {"type": "text", "text": " Answer in English."}]}
    elif protocol == "anthropic":
        assert body["system"] == system
    else:
        texts = [p["text"] for p in body["systemInstruction"]["parts"]]
        assert "".join(texts).replace("\n", "") == "Be brief. Answer in English."


def test_anthropic_upstream_gets_the_clients_body_but_model_and_stream(stack: Stack) -> None:
    sim, _gw, c = gateway_for(stack, "anthropic", reply="fine")
    sent: dict[str, Any] = {
        "max_tokens": 2048,  # above the thinking budget, as the API requires
        "system": [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hello"}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": signature("hmm")},
                {"type": "text", "text": "Hi."}]},
            {"role": "user", "content": "again"},
        ],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "metadata": {"user_id": "u-1"},
        "stop_sequences": ["END"],
        "service_tier": "auto",
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "none"},
    }
    with c.messages.stream(model="test/model", **sent,
                           extra_body={"provider": {"order": ["up"]}}) as s:
        streamed_msg = s.get_final_message()
    plain_msg = c.messages.create(model="test/model", **sent)
    for msg in (streamed_msg, plain_msg):
        # The upstream's signed thinking comes back as it made it (the next turn sends it back).
        thinking, text = msg.content
        assert thinking.type == "thinking" and thinking.signature == signature(thinking.thinking)
        assert text.type == "text" and text.text == "fine"
    streamed, plain = (r["body"] for r in sim.requests()[-2:])
    assert streamed == {**sent, "model": "up-upstream-model", "stream": True}
    assert plain == {**sent, "model": "up-upstream-model"}


def test_count_tokens(stack: Stack) -> None:
    _, _gw, c = gateway_for(stack, "openai")
    messages = [{"role": "user", "content": "a few words " * 20}]
    plain = c.messages.count_tokens(model="test/model", messages=messages)
    with_more = c.messages.count_tokens(model="test/model", messages=messages,
                                        system="Be brief. " * 40, tools=[WEATHER_TOOL])
    assert plain.input_tokens >= 60
    assert with_more.input_tokens >= plain.input_tokens + 100


def test_errors_in_anthropics_shape(stack: Stack) -> None:
    _, _gw, c = gateway_for(stack, "openai")
    # No endpoint meets the request (this model has no free endpoint): 404.
    with pytest.raises(anthropic.NotFoundError) as nf:
        c.messages.create(model="test/model:free", max_tokens=10, messages=ASK)
    assert nf.value.status_code == 404
    assert nf.value.body["type"] == "error"
    assert nf.value.body["error"]["type"] == "not_found_error"
    # A model id the gateway does not know is a 400, as on OpenRouter.
    with pytest.raises(anthropic.BadRequestError) as unknown:
        c.messages.create(model="nobody/serves-this", max_tokens=10, messages=ASK)
    assert unknown.value.body["error"]["type"] == "invalid_request_error"
    assert "nobody/serves-this" in unknown.value.body["error"]["message"]
    # The SDK insists on max_tokens; its generic post sends the body as given.
    with pytest.raises(anthropic.BadRequestError) as bad:
        c.post("/v1/messages", cast_to=Message, body={"model": "test/model", "messages": ASK})
    assert bad.value.body["error"] == {
        "type": "invalid_request_error", "message": "max_tokens: Field required"}
    with pytest.raises(anthropic.BadRequestError) as server_tool:
        c.messages.create(model="test/model", max_tokens=10, messages=ASK,
                          tools=[{"type": "web_search_20250305", "name": "web_search"}])
    assert "server tools" in server_tool.value.body["error"]["message"]


def test_midstream_failure_is_an_error_event(stack: Stack) -> None:
    _, _gw, c = gateway_for(stack, "anthropic", fault="midstream_error", drop_after=2,
                            reply="a b c d e f")
    got: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as err, c.messages.stream(
        model="test/model", max_tokens=50, messages=[{"role": "user", "content": "x"}]
    ) as s:
        for text in s.text_stream:
            got.append(text)
    assert got and "a b c d e f".startswith("".join(got))
    assert err.value.body["type"] == "error"
    assert err.value.body["error"]["type"] == "api_error"
    assert "overloaded" in err.value.body["error"]["message"]


@pytest.fixture
def _admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPROXY_ADMIN_KEY", ADMIN)


@pytest.mark.usefixtures("_admin_env")
def test_x_api_key_bearer_and_api_base_url(stack: Stack) -> None:
    _, gw, _c = gateway_for(stack, "openai", server={"auth": "keys"}, reply="hello there")
    key = new_key(gw)["key"]
    ask = {"model": "test/model", "max_tokens": 10, "messages": ASK}
    # x-api-key (api_key=) and Bearer (auth_token=), at the root and under /api; the beta header
    # Claude-style agents send is accepted.
    beta = {"anthropic-beta": "prompt-caching-2024-07-31"}
    for client in (anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0,
                                       default_headers=beta),
                   anthropic.Anthropic(base_url=gw.url + "/api", api_key=key, max_retries=0),
                   anthropic.Anthropic(base_url=gw.url, auth_token=key, max_retries=0)):
        msg = client.messages.create(**ask)
        assert msg.content[0].text == "hello there"
        assert client.messages.count_tokens(model="test/model", messages=ASK).input_tokens > 0
    wrong = anthropic.Anthropic(base_url=gw.url, api_key="sk-ep-v1-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as denied:
        wrong.messages.create(**ask)
    assert denied.value.body["error"]["type"] == "authentication_error"
