"""Every upstream protocol through the gateway with the openai SDK: what a client sees is the same
OpenAI shape whichever wire format the provider speaks (SPEC §3, §4)."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import openai
import orjson
import pytest

from tests.conftest import Stack, config

PROTOCOLS = ["openai", "anthropic", "gemini"]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
# A 1×1 PNG.
PIXEL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQ"
         "DwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def gateway_for(stack: Stack, protocol: str, **sim_opts):
    sim = stack.sim(protocol, **sim_opts)
    gw = stack.gateway(config(
        [("up", sim, {"prompt": "2", "completion": "10"})],
        model_extra={"input_modalities": ["text", "image"]},
    ))
    return sim, gw, openai.OpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_plain_text_and_cost(stack: Stack, protocol: str) -> None:
    sim, _gw, c = gateway_for(stack, protocol, reply="Paris is the capital")
    r = c.chat.completions.create(
        model="test/model",
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Capital of France?"}],
        max_tokens=100,
    )
    assert r.choices[0].message.content == "Paris is the capital"
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].model_extra["native_finish_reason"] in ("stop", "end_turn", "STOP")
    assert r.usage.completion_tokens == 4 and r.usage.prompt_tokens > 0
    expected = Decimal(r.usage.prompt_tokens * 2 + 4 * 10) / 1_000_000
    assert Decimal(str(r.usage.model_extra["cost"])) == expected
    body = sim.requests()[-1]["body"]
    if protocol == "anthropic":
        assert body["system"] == "Be brief." and body["max_tokens"] == 100
        assert [m["role"] for m in body["messages"]] == ["user"]
    elif protocol == "gemini":
        assert body["systemInstruction"]["parts"][0]["text"] == "Be brief."
        assert body["contents"][0]["role"] == "user"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_streaming_text_with_usage(stack: Stack, protocol: str) -> None:
    _, _gw, c = gateway_for(stack, protocol, reply="one two three")
    chunks = list(c.chat.completions.create(
        model="test/model", messages=[{"role": "user", "content": "count"}], stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "one two three"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    usage = [ch for ch in chunks if ch.usage is not None]
    assert len(usage) == 1 and usage[0] is chunks[-1] and chunks[-1].choices == []
    assert usage[0].usage.completion_tokens == 3
    assert usage[0].usage.model_extra["cost"] > 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tool_call_round_trip(stack: Stack, protocol: str, stream: bool) -> None:
    sim, _gw, c = gateway_for(stack, protocol)
    messages = [{"role": "user", "content": "What is the weather in Oslo?"}]
    if stream:
        chunks = list(c.chat.completions.create(
            model="test/model", messages=messages, tools=[WEATHER_TOOL], stream=True))
        calls: dict[int, dict] = {}
        for ch in chunks:
            for tc in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
                slot = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                slot["id"] = slot["id"] or tc.id
                if tc.function and tc.function.name:
                    slot["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    slot["arguments"] += tc.function.arguments
        finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1]
        call = calls[min(calls)]
        call_id, name, arguments = call["id"], call["name"], call["arguments"]
    else:
        r = c.chat.completions.create(model="test/model", messages=messages,
                                      tools=[WEATHER_TOOL])
        finish = r.choices[0].finish_reason
        tc = r.choices[0].message.tool_calls[0]
        call_id, name, arguments = tc.id, tc.function.name, tc.function.arguments
    assert finish == "tool_calls"
    assert name == "get_weather" and call_id
    args = json.loads(arguments)
    assert isinstance(args["city"], str)
    # The tool's answer goes back; the model's final answer uses it.
    follow = [
        *messages,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": "get_weather", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "12 degrees and rain"},
    ]
    final = c.chat.completions.create(model="test/model", messages=follow, tools=[WEATHER_TOOL])
    assert "12 degrees and rain" in final.choices[0].message.content
    assert final.choices[0].finish_reason == "stop"
    body = sim.requests()[-1]["body"]
    if protocol == "anthropic":
        blocks = body["messages"][1]["content"]
        assert any(b["type"] == "tool_use" and b["name"] == "get_weather" for b in blocks)
        assert body["messages"][2]["content"][0]["type"] == "tool_result"
    elif protocol == "gemini":
        assert "functionCall" in body["contents"][1]["parts"][0]
        assert body["contents"][2]["parts"][0]["functionResponse"]["name"] == "get_weather"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_json_schema_output(stack: Stack, protocol: str) -> None:
    _, _gw, c = gateway_for(stack, protocol)
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = c.chat.completions.create(
        model="test/model", messages=[{"role": "user", "content": "A person as JSON"}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "person", "schema": schema, "strict": True}},
    )
    doc = json.loads(r.choices[0].message.content)
    assert isinstance(doc["name"], str) and isinstance(doc["age"], int)
    assert r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_image_input(stack: Stack, protocol: str) -> None:
    sim, _gw, c = gateway_for(stack, protocol, reply="a single pixel")
    r = c.chat.completions.create(model="test/model", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": PIXEL}},
    ]}])
    assert r.choices[0].message.content == "a single pixel"
    body = sim.requests()[-1]["body"]
    if protocol == "anthropic":
        img = body["messages"][0]["content"][1]
        assert img["type"] == "image" and img["source"]["media_type"] == "image/png"
    elif protocol == "gemini":
        parts = body["contents"][0]["parts"]
        assert any("inline_data" in p or "inlineData" in p for p in parts)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_length_stop_reason(stack: Stack, protocol: str) -> None:
    _, _gw, c = gateway_for(stack, protocol)
    r = c.chat.completions.create(model="test/model",
                                  messages=[{"role": "user", "content": "talk"}], max_tokens=2)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 2


def test_gemini_safety_is_content_filter(stack: Stack) -> None:
    _, _gw, c = gateway_for(stack, "gemini")
    r = c.chat.completions.create(model="test/model",
                                  messages=[{"role": "user", "content": "something unsafe"}])
    assert r.choices[0].finish_reason == "content_filter"
    assert r.choices[0].model_extra["native_finish_reason"] == "SAFETY"


@pytest.mark.parametrize("protocol", ["anthropic", "gemini"])
@pytest.mark.parametrize("fault", [
    {"fault": "status", "fault_status": 500},
    {"fault": "status", "fault_status": 529},
    {"fault": "status", "fault_status": 429},
    {"fault": "garbage"},
    {"error_rate": 1.0},
], ids=lambda f: f.get("fault", "rate") + str(f.get("fault_status", "")))
def test_each_upstream_error_is_a_502_naming_the_provider(
    stack: Stack, protocol: str, fault: dict
) -> None:
    sim = stack.sim(protocol, **fault)
    gw = stack.gateway(config([("native", sim, {})]))
    r = httpx.post(gw.base_url + "/chat/completions",
                   json={"model": "test/model", "messages": [{"role": "user", "content": "x"}]})
    expected = 429 if fault.get("fault_status") == 429 else 502
    assert r.status_code == expected
    err = r.json()["error"]
    assert err["code"] == expected and err["metadata"]["provider_name"] == "native"
    if expected == 502 and fault.get("fault") != "garbage":
        assert err["metadata"]["raw"]


@pytest.mark.parametrize("protocol", ["anthropic", "gemini"])
def test_overload_falls_back_and_midstream_error_ends_stream(stack: Stack, protocol: str) -> None:
    over = stack.sim(protocol, error_rate=1.0)
    good = stack.sim(protocol, reply="from the spare")
    gw = stack.gateway(config([("over", over, {"prompt": "1"}), ("good", good, {"prompt": "9"})]))
    c = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
    chunks = list(c.chat.completions.create(
        model="test/model", messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_body={"provider": {"order": ["over", "good"]}}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == \
        "from the spare"
    mid = stack.sim(protocol, fault="midstream_error", drop_after=2, reply="a b c d e f")
    gw2 = stack.gateway(config([("mid", mid, {})]))
    with httpx.stream("POST", gw2.base_url + "/chat/completions", json={
        "model": "test/model", "messages": [{"role": "user", "content": "x"}], "stream": True,
    }) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = orjson.loads(events[-2])
    assert last["choices"][0]["finish_reason"] == "error"
    assert last["error"]["metadata"]["provider_name"] == "mid"


def test_anthropic_cache_tokens_reach_usage(stack: Stack) -> None:
    _, _gw, c = gateway_for(stack, "anthropic")
    details = [c.chat.completions.create(model="test/model", messages=[{"role": "user", "content": [
        {"type": "text", "text": "a long shared prefix " * 10, "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "and the question"},
    ]}]).usage.prompt_tokens_details for _ in range(2)]  # the prefix written, then read
    assert [(d.cache_write_tokens, d.cached_tokens) for d in details] == \
        [(40, 0), (0, 40)]
