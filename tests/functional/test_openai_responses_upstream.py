"""The `openai-responses` upstream protocol (SPEC §3, §4): models OpenAI serves on its Responses API
only, reached through the gateway with the openai SDK's chat.completions, and the Responses
simulator itself, checked with the SDK's own `responses` client.
"""

from __future__ import annotations

import argparse
import json
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from edgeproxy import simulate
from edgeproxy.config import DEFAULT_PARAMETERS
from tests.conftest import SimHandle, Stack, config
from tests.functional.test_translation import PIXEL
from tests.functional.test_translation import WEATHER_TOOL as WEATHER


def gateway_for(stack: Stack, **sim_opts: Any) -> tuple[SimHandle, openai.OpenAI]:
    sim = stack.sim("openai-responses", **sim_opts)
    gw = stack.gateway(config(
        [("openai-responses", sim, {"prompt": "15", "completion": "120"})],
        model="openai/gpt-5-pro",
        # A reasoning model: its reasoning settings are translated (edgeproxy.reasoning).
        model_extra={"input_modalities": ["text", "image"],
                     "supported_parameters": [*DEFAULT_PARAMETERS, "reasoning"]},
    ))
    return sim, openai.OpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0)


def last_body(sim: SimHandle) -> dict[str, Any]:
    return sim.requests()[-1]["body"]


def cost_of(usage: Any) -> Decimal:
    return Decimal(str(usage.model_extra["cost"]))


# =============================================================================== through the gateway


def test_text_usage_and_cost(stack: Stack) -> None:
    sim, c = gateway_for(stack, reply="Paris is the capital")
    r = c.chat.completions.create(
        model="openai/gpt-5-pro",
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Capital of France?"}],
        max_tokens=100,
    )
    choice = r.choices[0]
    assert choice.message.content == "Paris is the capital"
    assert choice.finish_reason == "stop"
    assert choice.model_extra["native_finish_reason"] == "completed"
    assert r.model_extra["provider"] == "openai-responses"
    assert r.usage.completion_tokens == 4 and r.usage.prompt_tokens == 5  # words, both sides
    assert cost_of(r.usage) == Decimal(5 * 15 + 4 * 120) / 1_000_000
    body = last_body(sim)
    assert sim.requests()[-1]["path"] == "/v1/responses"
    assert body["instructions"] == "Be brief."
    assert body["input"] == [{"type": "message", "role": "user",
                              "content": [{"type": "input_text", "text": "Capital of France?"}]}]
    assert body["store"] is False and body["max_output_tokens"] == 100
    assert body["model"] == "openai-responses-upstream-model"


def test_streaming_text_with_one_usage_chunk(stack: Stack) -> None:
    _, c = gateway_for(stack, reply="one two three")
    chunks = list(c.chat.completions.create(
        model="openai/gpt-5-pro", messages=[{"role": "user", "content": "count"}], stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "one two three"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    usage = [ch for ch in chunks if ch.usage is not None]
    assert len(usage) == 1 and usage[0] is chunks[-1] and chunks[-1].choices == []
    assert usage[0].usage.completion_tokens == 3
    assert cost_of(usage[0].usage) > 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_tool_call_round_trip(stack: Stack, stream: bool) -> None:
    sim, c = gateway_for(stack)
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Oslo?"}]
    if stream:
        calls: dict[int, dict[str, str]] = {}
        finish = None
        for ch in c.chat.completions.create(model="openai/gpt-5-pro", messages=messages,
                                            tools=[WEATHER], stream=True):
            if not ch.choices:
                continue
            finish = ch.choices[0].finish_reason or finish
            for tc in ch.choices[0].delta.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] = slot["id"] or (tc.id or "")
                slot["name"] = slot["name"] or (tc.function.name or "")
                slot["arguments"] += tc.function.arguments or ""
        assert list(calls) == [0]
        call_id, name, arguments = calls[0]["id"], calls[0]["name"], calls[0]["arguments"]
    else:
        r = c.chat.completions.create(model="openai/gpt-5-pro", messages=messages,
                                      tools=[WEATHER])
        finish = r.choices[0].finish_reason
        tc = r.choices[0].message.tool_calls[0]
        call_id, name, arguments = tc.id, tc.function.name, tc.function.arguments
    assert finish == "tool_calls"
    assert name == "get_weather" and call_id.startswith("call_")
    # Tools go out flat and not strict, as chat completions means them: only `city` is required,
    # so the simulated model leaves the optional `days` out (strict mode would require it).
    assert json.loads(arguments) == {"city": "test"}
    assert last_body(sim)["tools"] == [{
        "type": "function", "name": "get_weather", "description": "Current weather of a city",
        "parameters": WEATHER["function"]["parameters"], "strict": False}]
    follow = [
        *messages,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": "get_weather", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "12 degrees and rain"},
    ]
    final = c.chat.completions.create(model="openai/gpt-5-pro", messages=follow, tools=[WEATHER])
    assert final.choices[0].message.content == "The tool returned: 12 degrees and rain"
    assert final.choices[0].finish_reason == "stop"
    items = last_body(sim)["input"]
    assert [i["type"] for i in items] == ["message", "function_call", "function_call_output"]
    assert items[1]["call_id"] == items[2]["call_id"] == call_id


def test_json_schema_output(stack: Stack) -> None:
    sim, c = gateway_for(stack)
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = c.chat.completions.create(
        model="openai/gpt-5-pro", messages=[{"role": "user", "content": "A person as JSON"}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "person", "schema": schema, "strict": True}},
    )
    assert json.loads(r.choices[0].message.content) == {"name": "test", "age": 1}
    assert last_body(sim)["text"] == {"format": {
        "type": "json_schema", "name": "person", "schema": schema, "strict": True}}


def test_reasoning_summary_and_reasoning_tokens(stack: Stack) -> None:
    _, c = gateway_for(stack, reply="Proven.")
    r = c.chat.completions.create(
        model="openai/gpt-5-pro", messages=[{"role": "user", "content": "Prove it"}],
        extra_body={"reasoning": {"effort": "high", "summary": "auto"}},
    )
    assert r.choices[0].message.content == "Proven."
    assert r.choices[0].message.model_extra["reasoning"] == "Considering: Prove it"
    assert r.usage.completion_tokens_details.reasoning_tokens == 3
    assert r.usage.completion_tokens == 1 + 3  # reasoning tokens are billed as output
    assert cost_of(r.usage) == Decimal(r.usage.prompt_tokens * 15 + 4 * 120) / 1_000_000


def test_image_input_and_truncation(stack: Stack) -> None:
    sim, c = gateway_for(stack, max_reply_tokens=40)
    r = c.chat.completions.create(
        model="openai/gpt-5-pro", max_tokens=16,
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": PIXEL}}]}],
    )
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].model_extra["native_finish_reason"] == "max_output_tokens"
    assert r.usage.completion_tokens == 16
    part = last_body(sim)["input"][0]["content"][1]
    assert part == {"type": "input_image", "image_url": PIXEL, "detail": "auto"}


def test_upstream_400_reaches_the_client_as_400(stack: Stack) -> None:
    sim, c = gateway_for(stack, fault="status", fault_status=400)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="openai/gpt-5-pro",
                                  messages=[{"role": "user", "content": "hi"}])
    assert sim.count() == 1


@pytest.mark.parametrize(
    "fault",
    [{"fault": "status", "fault_status": 500}, {"fault": "garbage"},
     {"fault": "midstream_error", "drop_after": 0}],
    ids=lambda f: f["fault"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_fallback_from_responses_to_chat_endpoint(stack: Stack, fault: dict[str, Any],
                                                  stream: bool) -> None:
    bad = stack.sim("openai-responses", **fault)
    good = stack.sim("openai", reply="from the chat endpoint")
    gw = stack.gateway(config([("responses", bad, {"prompt": "1"}), ("chat", good, {"prompt": "2"})]))
    c = openai.OpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0)
    kwargs: dict[str, Any] = {
        "model": "test/model", "messages": [{"role": "user", "content": "hi"}],
        "extra_body": {"provider": {"order": ["responses", "chat"]}},
    }
    if stream:
        chunks = list(c.chat.completions.create(stream=True, **kwargs))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        provider = chunks[-1].model_extra["provider"]
    else:
        r = c.chat.completions.create(**kwargs)
        text, provider = r.choices[0].message.content, r.model_extra["provider"]
    assert (text, provider) == ("from the chat endpoint", "chat")
    assert bad.count() == 1 and good.count() == 1


# =============================================================================== the simulator


def sdk(sim: SimHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)


def test_simulator_speaks_the_responses_api(stack: Stack) -> None:
    sim = stack.sim("openai-responses", reply="Hello from the sim", api_key="sk-test")
    r = sdk(sim).responses.create(model="gpt-5-pro", input="Hi", instructions="Be nice",
                                  metadata={"k": "v"})
    assert r.id.startswith("resp_") and r.status == "completed"
    assert r.output_text == "Hello from the sim"
    assert r.instructions == "Be nice" and r.metadata == {"k": "v"}
    assert (r.usage.input_tokens, r.usage.output_tokens) == (3, 4)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=sim.base_url, api_key="sk-wrong", max_retries=0).responses.create(
            model="gpt-5-pro", input="Hi")


def test_simulator_stream_satisfies_the_sdk_stream_helper(stack: Stack) -> None:
    sim = stack.sim("openai-responses", reply="one two three")
    with sdk(sim).responses.stream(model="gpt-5-pro", input="count",
                                   reasoning={"effort": "low", "summary": "auto"}) as s:
        events = list(s)
        final = s.get_final_response()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == (
        "one two three")
    assert [o.type for o in final.output] == ["reasoning", "message"]
    assert final.output[0].summary[0].text == "Considering: count"
    assert final.output_text == "one two three"
    assert final.usage.output_tokens_details.reasoning_tokens == 2


def test_simulator_function_calls_and_strict_mode(stack: Stack) -> None:
    sim = stack.sim("openai-responses")
    client = sdk(sim)
    params = WEATHER["function"]["parameters"]
    tool: dict[str, Any] = {"type": "function", "name": "get_weather", "parameters": params}
    # Strict unless told otherwise: the optional property becomes required.
    r = client.responses.create(model="m", input="weather in Oslo?", tools=[tool])
    call = r.output[0]
    assert call.type == "function_call" and call.call_id.startswith("call_")
    assert json.loads(call.arguments) == {"city": "test", "days": 1}
    r = client.responses.create(model="m", input="weather?", tools=[{**tool, "strict": False}])
    assert json.loads(r.output[0].arguments) == {"city": "test"}
    with pytest.raises(openai.BadRequestError) as ei:
        client.responses.create(model="m", input="weather?", tools=[{**tool, "strict": True}])
    assert ei.value.body["param"] == "tools[0].parameters"
    # The answer to the call, sent statelessly with the call it answers.
    r = client.responses.create(model="m", store=False, input=[
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city":"Oslo"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ])
    assert r.output_text == "The tool returned: sunny"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages"),
        ({"input": "hi", "max_tokens": 10}, "max_tokens"),
        ({"input": "hi", "response_format": {"type": "json_object"}}, "response_format"),
        ({"input": "hi", "stop": ["x"]}, "stop"),
        ({"input": "hi", "max_output_tokens": 8}, "max_output_tokens"),
        ({"input": "hi", "tools": [{"type": "function", "function": {"name": "f"}}]},
         "tools[0].name"),
        ({"input": "hi", "text": {"format": {"type": "json_schema", "schema": {}}}},
         "text.format.name"),
        ({"input": [{"role": "assistant", "content": [{"type": "input_text", "text": "x"}]}]},
         "input[0].content[0].type"),
        ({"input": [{"type": "function_call_output", "call_id": "call_9", "output": "x"}]},
         "input"),
        ({"input": "hi", "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ],
)
def test_simulator_refuses_what_the_api_refuses(stack: Stack, body: dict[str, Any],
                                                 param: str) -> None:
    sim = stack.sim("openai-responses")
    r = httpx.post(sim.base_url + "/responses", json={"model": "m", **body})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param


def test_simulator_midstream_failure_and_drop(stack: Stack) -> None:
    sim = stack.sim("openai-responses", fault="midstream_error", drop_after=2,
                    reply="a b c d e")
    with sdk(sim).responses.stream(model="m", input="hi") as s:
        events = list(s)
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.code == "server_error"
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == ["a", " b"]
    sim.configure(fault="drop", drop_after=1)
    with pytest.raises(openai.APIConnectionError), sdk(sim).responses.stream(
            model="m", input="hi") as s:
        list(s)
    assert sim.stats()["errors_injected"] == 2


def test_simulate_provider_command_offers_the_protocol() -> None:
    parser = argparse.ArgumentParser()
    simulate.add_arguments(parser)
    args = parser.parse_args(["--protocol", "openai-responses", "--port", "0"])
    assert args.protocol == "openai-responses"
    assert simulate.build_app("openai-responses")[simulate.SIM_KEY].protocol == "openai-responses"
