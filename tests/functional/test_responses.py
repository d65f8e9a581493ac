"""`POST /v1/responses` through the gateway with the openai SDK's `responses` API, over every
upstream protocol: what a Responses client sees is the same whichever wire format the provider
speaks (SPEC §1.1, §3, §4)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import openai
import pydantic
import pytest

from tests.conftest import GatewayHandle, SimHandle, Stack, config

PROTOCOLS = ["openai", "anthropic", "gemini"]
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather of a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
# A 1×1 PNG.
PIXEL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQ"
         "DwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def gateway_for(
    stack: Stack, protocol: str, **sim_opts: Any
) -> tuple[SimHandle, GatewayHandle, openai.OpenAI]:
    sim = stack.sim(protocol, **sim_opts)
    gw = stack.gateway(config(
        [("up", sim, {"prompt": "2", "completion": "10"})],
        model_extra={"input_modalities": ["text", "image"]},
    ))
    return sim, gw, openai.OpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0)


def upstream_text(sim: SimHandle) -> str:
    """Everything the upstream was sent, as JSON text (to look for a phrase in any shape)."""
    return json.dumps(sim.requests()[-1]["body"])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_plain_text_with_instructions_and_cost(stack: Stack, protocol: str) -> None:
    sim, gw, c = gateway_for(stack, protocol, reply="Paris is the capital")
    r = c.responses.create(model="test/model", instructions="Be brief.",
                           input="Capital of France?", max_output_tokens=100, temperature=0.5)
    assert r.output_text == "Paris is the capital"
    assert r.status == "completed" and r.error is None and r.id.startswith("gen-")
    assert r.model == "test/model" and (r.model_extra or {})["provider"] == "up"
    assert r.instructions == "Be brief." and r.temperature == 0.5  # the settings, repeated
    assert r.max_output_tokens == 100
    assert r.usage is not None and r.usage.output_tokens == 4 and r.usage.input_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + 4
    expected = Decimal(r.usage.input_tokens * 2 + 4 * 10) / 1_000_000
    assert Decimal(str((r.usage.model_extra or {})["cost"])) == expected
    # The response id is the generation id: /generation knows it, billed the same.
    g = httpx.get(gw.base_url + "/generation", params={"id": r.id}).json()["data"]
    assert g["provider_name"] == "up" and g["tokens_completion"] == 4
    assert Decimal(str(g["total_cost"])) == expected
    body = sim.requests()[-1]["body"]
    if protocol == "openai":
        assert body["messages"][0] == {"role": "system", "content": "Be brief."}
        assert body["max_tokens"] == 100 and body["temperature"] == 0.5
    elif protocol == "anthropic":
        assert body["system"] == "Be brief." and body["max_tokens"] == 100
        assert [m["role"] for m in body["messages"]] == ["user"]
    else:
        assert body["systemInstruction"]["parts"][0]["text"] == "Be brief."
        assert body["generationConfig"]["maxOutputTokens"] == 100


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_streaming_event_grammar(stack: Stack, protocol: str) -> None:
    _, gw, c = gateway_for(stack, protocol, reply="one two three")
    with c.responses.stream(model="test/model", input="count") as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert "".join(e.delta for e in deltas) == "one two three"
    assert deltas[-1].snapshot == "one two three"  # the SDK's own accumulation
    assert final.output_text == "one two three" and final.status == "completed"
    assert final.id == events[0].response.id and final.id.startswith("gen-")
    assert final.usage is not None and final.usage.output_tokens == 3
    assert (final.usage.model_extra or {})["cost"] > 0
    g = httpx.get(gw.base_url + "/generation", params={"id": final.id}).json()["data"]
    assert g["streamed"] is True and g["tokens_completion"] == 3


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tool_call_round_trip(stack: Stack, protocol: str, stream: bool) -> None:
    sim, _gw, c = gateway_for(stack, protocol)
    conversation: list[Any] = [{"role": "user", "content": "What is the weather in Oslo?"}]
    if stream:
        with c.responses.stream(model="test/model", input=conversation,
                                tools=[WEATHER]) as s:
            events = list(s)
            first = s.get_final_response()
        assert any(e.type == "response.function_call_arguments.delta" for e in events)
        assert any(e.type == "response.function_call_arguments.done" for e in events)
    else:
        first = c.responses.create(model="test/model", input=conversation,
                                   tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1  # (an anthropic model may say a few words first: a message item)
    call = calls[0]
    assert call.name == "get_weather" and call.call_id
    assert isinstance(json.loads(call.arguments)["city"], str)
    # The tool's answer goes back with the whole conversation (the gateway keeps no state).
    conversation += [*first.output, {"type": "function_call_output", "call_id": call.call_id,
                                     "output": "12 degrees and rain"}]
    final = c.responses.create(model="test/model", input=conversation,
                               tools=[WEATHER])
    assert "12 degrees and rain" in final.output_text and final.status == "completed"
    body = sim.requests()[-1]["body"]
    if protocol == "openai":
        assistant, tool = body["messages"][1], body["messages"][2]
        assert assistant["tool_calls"][0]["id"] == call.call_id
        assert assistant["tool_calls"][0]["function"]["name"] == "get_weather"
        assert tool == {"role": "tool", "tool_call_id": call.call_id,
                        "content": "12 degrees and rain"}
        assert body["tools"][0]["function"]["name"] == "get_weather"
    elif protocol == "anthropic":
        blocks = body["messages"][1]["content"]
        assert any(b["type"] == "tool_use" and b["name"] == "get_weather" for b in blocks)
        result = body["messages"][2]["content"][0]
        assert result["type"] == "tool_result" and result["content"] == "12 degrees and rain"
    else:
        assert body["contents"][1]["parts"][0]["functionCall"]["name"] == "get_weather"
        assert body["contents"][2]["parts"][0]["functionResponse"]["name"] == "get_weather"


class Person(pydantic.BaseModel):
    name: str
    age: int


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_text_format_json_schema(stack: Stack, protocol: str) -> None:
    _, _gw, c = gateway_for(stack, protocol)
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = c.responses.create(model="test/model", input="A person as JSON", text={"format": {
        "type": "json_schema", "name": "person", "schema": schema, "strict": True}})
    doc = json.loads(r.output_text)
    assert isinstance(doc["name"], str) and isinstance(doc["age"], int)
    # The SDK's own structured-output helper: a pydantic model in, a parsed object out.
    parsed = c.responses.parse(model="test/model", input="A person", text_format=Person)
    assert isinstance(parsed.output_parsed, Person)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_image_input(stack: Stack, protocol: str) -> None:
    sim, _gw, c = gateway_for(stack, protocol, reply="a single pixel")
    r = c.responses.create(model="test/model", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": PIXEL, "detail": "auto"},
    ]}])
    assert r.output_text == "a single pixel"
    body = sim.requests()[-1]["body"]
    if protocol == "openai":
        part = body["messages"][0]["content"][1]
        assert part == {"type": "image_url", "image_url": {"url": PIXEL, "detail": "auto"}}
    elif protocol == "anthropic":
        image = body["messages"][0]["content"][1]
        assert image["type"] == "image" and image["source"]["media_type"] == "image/png"
    else:
        parts = body["contents"][0]["parts"]
        assert any("inline_data" in p or "inlineData" in p for p in parts)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_cut_answer_is_incomplete(stack: Stack, protocol: str) -> None:
    _, _gw, c = gateway_for(stack, protocol)
    r = c.responses.create(model="test/model", input="talk", max_output_tokens=2)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage is not None and r.usage.output_tokens == 2
    with c.responses.stream(model="test/model", input="talk", max_output_tokens=2) as s:
        events = list(s)
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"


def test_stateful_and_unsupported_requests_are_400s(stack: Stack) -> None:
    sim, gw, c = gateway_for(stack, "openai")
    with pytest.raises(openai.BadRequestError) as info:
        c.responses.create(model="test/model", input="and then?", previous_response_id="resp_1")
    assert info.value.status_code == 400
    assert "stateless" in info.value.message and "input" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        c.responses.create(model="test/model", input="news?",
                           tools=[{"type": "web_search"}])
    assert "web_search" in info.value.message
    for body in (b"{not json", b"[]", b'{"model": "test/model"}',
                 b'{"model": "test/model", "input": [{"type": "function_call"}]}'):
        for prefix in ("/v1", "/api/v1"):
            r = httpx.post(gw.url + prefix + "/responses", content=body,
                           headers={"Content-Type": "application/json"})
            assert r.status_code == 400, body
            error = r.json()["error"]
            assert error["code"] == 400 and error["message"]
    assert sim.count() == 0  # nothing of it reached the upstream


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_failing_upstream_mid_stream_is_response_failed(stack: Stack, protocol: str) -> None:
    _, _gw, c = gateway_for(stack, protocol, fault="midstream_error", drop_after=2,
                            reply="a b c d e f")
    with c.responses.stream(model="test/model", input="x") as s:
        events = list(s)
    assert events[0].type == "response.created"
    assert any(e.type == "response.output_text.delta" for e in events)
    last = events[-1]
    assert last.type == "response.failed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    failed = last.response
    assert failed.status == "failed" and failed.error is not None and failed.error.message
    assert (failed.error.model_extra or {})["metadata"]["provider_name"] == "up"
    # What reached the client before the failure stays in the failed response.
    message = failed.output[0]
    assert message.type == "message" and message.status == "incomplete"
    assert message.content[0].type == "output_text" and message.content[0].text
