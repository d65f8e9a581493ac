"""The Responses codec as pure functions: Responses requests -> the canonical OpenAI chat request;
canonical results, chunks and errors -> what the openai SDK's own types accept
(`Response.model_validate`, the stream event union, and the accumulator behind
`client.responses.stream`)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import omit
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

from edgeproxy.billing.ledger import KeyRow
from edgeproxy.billing.pricing import cost_json
from edgeproxy.billing.service import AccountState, Caller
from edgeproxy.errors import BadRequest, EdgeproxyError, RateLimited, UpstreamStatusError
from edgeproxy.gateway import Generation
from edgeproxy.ingress.responses import CODEC
from edgeproxy.protocols.anthropic import AnthropicAdapter
from edgeproxy.protocols.base import Target
from edgeproxy.protocols.gemini import GeminiAdapter

PIXEL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQ"
         "DwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
TARGET = Target("http://upstream.test/v1", "sk-up", "upstream-model", 4096)
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"], "additionalProperties": False},
           "strict": True}
_events: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)


def gen() -> Generation:
    key = KeyRow("k1", "acct", "h", "sk-ep", "test", None, 0, False, False, 0)
    g = Generation("test/model", True, None, Caller(key, AccountState("acct")))
    g.provider = "up"
    return g


def decode(doc: dict[str, Any]) -> dict[str, Any]:
    return CODEC.decode(orjson.dumps(doc), {}).as_dict()


def base(**extra: Any) -> dict[str, Any]:
    return {"model": "test/model", "input": "hi", **extra}


# --------------------------------------------------------------------------- decode


def test_decode_string_input_with_every_setting() -> None:
    decoded = CODEC.decode(orjson.dumps({
        "model": "test/model", "input": "Capital of France?", "instructions": "Be brief.",
        "max_output_tokens": 100, "temperature": 0.5, "top_p": 0.9, "stream": True,
        "metadata": {"run": "7"}, "parallel_tool_calls": False, "user": "u-1",
        "reasoning": {"effort": "high", "summary": "auto"}, "store": True,
        "include": ["reasoning.encrypted_content"], "truncation": "disabled",
        "models": ["a/b"], "provider": {"order": ["up"]}, "route": "fallback",
        "transforms": [], "usage": {"include": True}, "session_id": "s1",
    }), {})
    assert decoded.stream and decoded.route.max_tokens == 100 and decoded.route.provider
    assert decoded.as_dict() == {
        "model": "test/model",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Capital of France?"}],
        "max_tokens": 100, "temperature": 0.5, "top_p": 0.9, "stream": True,
        "metadata": {"run": "7"}, "parallel_tool_calls": False, "user": "u-1",
        "reasoning": {"effort": "high", "summary": "auto"},
        "models": ["a/b"], "provider": {"order": ["up"]}, "route": "fallback",
        "transforms": [], "usage": {"include": True}, "session_id": "s1",
    }


def test_decode_a_whole_conversation_of_items() -> None:
    doc = decode(base(input=[
        {"role": "developer", "content": "Answer in English."},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Weather in Oslo and Bergen? See"},
            {"type": "input_image", "image_url": PIXEL, "detail": "low"},
            {"type": "input_image", "image_url": "https://x.test/a.png", "detail": "auto"},
            {"type": "input_file", "filename": "r.pdf", "file_data": "data:application/pdf;base64,JVBE"},
        ]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        # A replayed output message, as a client sends back the previous response's output.
        {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city":"Oslo"}', "status": "completed"},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather",
         "arguments": '{"city":"Bergen"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "12 degrees"},
        {"type": "function_call_output", "call_id": "call_2",
         "output": [{"type": "input_text", "text": "service down"}]},
        {"type": "function_call", "call_id": "call_3", "name": "get_weather", "arguments": ""},
        {"type": "function_call_output", "call_id": "call_3", "output": "9 degrees"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
        {"role": "user", "content": "Summarise."},
    ]))
    def call(call_id: str, arguments: str) -> dict[str, Any]:
        return {"id": call_id, "type": "function",
                "function": {"name": "get_weather", "arguments": arguments}}

    assert doc["messages"] == [
        {"role": "developer", "content": "Answer in English."},
        {"role": "user", "content": [
            {"type": "text", "text": "Weather in Oslo and Bergen? See"},
            {"type": "image_url", "image_url": {"url": PIXEL, "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://x.test/a.png", "detail": "auto"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE",
                                      "filename": "r.pdf"}},
        ]},
        {"role": "assistant", "content": [{"type": "text", "text": "Checking."}], "tool_calls": [
            call("call_1", '{"city":"Oslo"}'), call("call_2", '{"city":"Bergen"}')]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 degrees"},
        {"role": "tool", "tool_call_id": "call_2",
         "content": [{"type": "text", "text": "service down"}]},
        {"role": "assistant", "content": None, "tool_calls": [call("call_3", "")]},
        {"role": "tool", "tool_call_id": "call_3", "content": "9 degrees"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
        {"role": "user", "content": "Summarise."},
    ]


def test_decode_tools_tool_choice_and_text_format() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    doc = decode(base(
        tools=[WEATHER, {"type": "function", "name": "noop"}],
        tool_choice={"type": "function", "name": "get_weather"},
        text={"format": {"type": "json_schema", "name": "person", "schema": schema,
                         "strict": True, "description": "A person"}, "verbosity": "low"},
    ))
    assert doc["tools"] == [
        {"type": "function", "function": {
            "name": "get_weather", "description": "Weather of a city",
            "parameters": WEATHER["parameters"], "strict": True}},
        {"type": "function", "function": {"name": "noop"}},
    ]
    assert doc["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert doc["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "person", "schema": schema, "strict": True, "description": "A person"}}


@pytest.mark.parametrize(("fmt", "expected"), [
    ({"type": "json_object"}, {"type": "json_object"}),
    ({"type": "text"}, None),
    (None, None),
])
def test_text_formats(fmt: Any, expected: Any) -> None:
    assert decode(base(text={"format": fmt})).get("response_format") == expected


def test_nulls_are_omissions() -> None:
    doc = decode(base(stream=None, user=None, temperature=None, tools=None, text=None,
                      reasoning=None, previous_response_id=None, instructions=None))
    assert doc == {"model": "test/model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_string_tool_choices_pass(choice: str) -> None:
    assert decode(base(tools=[WEATHER], tool_choice=choice))["tool_choice"] == choice


@pytest.mark.parametrize("adapter", [AnthropicAdapter(), GeminiAdapter()], ids=["anthropic",
                                                                                 "gemini"])
def test_the_canonical_request_translates_to_each_upstream(adapter: Any) -> None:
    doc = decode(base(instructions="Be brief.", tools=[WEATHER], input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Oslo?"},
                                     {"type": "input_image", "image_url": PIXEL}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city":"Oslo"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "12 degrees"},
    ]))
    call = adapter.build_request(doc, b"", TARGET, False)
    body = orjson.loads(call.body)
    text = call.body.decode()
    assert "Be brief." in text and "12 degrees" in text and "get_weather" in text
    assert body  # a translated body, not the client's


@pytest.mark.parametrize(("doc", "words"), [
    (base(previous_response_id="resp_1"), ["previous_response_id", "stateless", "input"]),
    (base(conversation="conv_1"), ["conversation", "stateless", "input"]),
    (base(input=[{"type": "item_reference", "id": "msg_1"}]), ["item_reference", "stateless"]),
    (base(background=True), ["background"]),
    (base(prompt={"id": "pmpt_1"}), ["prompt"]),
    (base(tools=[{"type": "web_search"}]), ["web_search", "function tools"]),
    (base(tools=[{"type": "file_search", "vector_store_ids": ["v"]}]), ["file_search"]),
    (base(tools=[{"type": "computer_use_preview"}]), ["computer_use_preview"]),
    (base(input=[{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]),
     ["file ids"]),
    (base(input=[{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]),
     ["file ids"]),
    (base(input=[{"type": "web_search_call", "id": "ws"}]), ["web_search_call"]),
    ({"model": "m"}, ["input is required"]),
    (base(input=5), ["input must be"]),
    (base(input=[]), ["no message"]),
    (base(input=[{"type": "reasoning", "summary": []}]), ["no message"]),
    (base(input=["hi"]), ["input[0]"]),
    (base(input=[{"role": "tool", "content": "x"}]), ["input[0].role"]),
    (base(input=[{"role": "user", "content": 5}]), ["input[0].content"]),
    (base(input=[{"role": "user", "content": [{"type": "input_text"}]}]),
     ["input[0].content[0].text"]),
    (base(input=[{"role": "user", "content": [{"type": "input_video"}]}]), ["input_video"]),
    (base(input=[{"type": "function_call", "name": "f", "arguments": "{}"}]), ["call_id"]),
    (base(input=[{"type": "function_call_output", "call_id": "c", "output": 5}]), ["output"]),
    (base(instructions=["x"]), ["instructions"]),
    (base(max_output_tokens=0), ["max_output_tokens"]),
    (base(max_output_tokens="9"), ["max_output_tokens"]),
    (base(tools={"type": "function"}), ["tools must be an array"]),
    (base(tools=[{"type": "function"}]), ["tools[0].name"]),
    (base(tool_choice="any"), ["tool_choice"]),
    (base(tool_choice={"type": "web_search"}), ["tool_choice"]),
    (base(text={"format": {"type": "json_schema", "name": "x"}}), ["schema"]),
    (base(text={"format": {"type": "yaml"}}), ["text.format.type"]),
    (base(text="json"), ["text must be an object"]),
    (base(reasoning="high"), ["reasoning"]),
    (base(metadata=["x"]), ["metadata"]),
    (base(parallel_tool_calls="yes"), ["parallel_tool_calls"]),
    (base(temperature="hot"), ["temperature"]),
    (base(stream="yes"), ["stream"]),
    (base(model=""), ["model"]),
])
def test_bad_requests_are_400s_that_say_why(doc: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(BadRequest) as info:
        CODEC.decode(orjson.dumps(doc), {})
    assert info.value.status == 400
    for word in words:
        assert word in info.value.message


@pytest.mark.parametrize("body", [b"", b"{", b"[1]", b'"input"', b"null"])
def test_malformed_bodies_are_400s(body: bytes) -> None:
    with pytest.raises(BadRequest):
        CODEC.decode(body, {})


_scalar = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
_json = st.recursive(
    _scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=3),
    max_leaves=6,
)
_odd = st.deferred(lambda: _scalar)  # one branch, not five: the plausible values stay frequent
_text = st.text(max_size=5) | _odd
_part = st.fixed_dictionaries(
    {"type": st.sampled_from(["input_text", "output_text", "refusal", "input_image",
                              "input_file", "input_audio", "input_video"]) | _odd},
    optional={"text": _text, "refusal": _text, "image_url": _text, "detail": _text,
              "file_data": _text, "file_url": _text, "filename": _text, "input_audio": _json},
)
_item = st.fixed_dictionaries(
    {"type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning",
                              "item_reference", "web_search_call"]) | _odd},
    optional={"role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]),
              "content": _text | st.lists(_part | _json, max_size=3), "call_id": _text,
              "name": _text, "arguments": _text, "output": _text | st.lists(_part, max_size=2)},
)
_tool = st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "web_search"]) | _odd},
    optional={"name": _text, "description": _text, "parameters": _json, "strict": _scalar},
)
_format = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "json_object", "json_schema", "yaml"]) | _odd},
    optional={"name": _text, "schema": _json, "strict": _scalar, "description": _text},
)
_requests = st.fixed_dictionaries(
    {"model": st.just("test/model") | _odd,
     "input": st.text(max_size=5) | st.lists(_item, min_size=1, max_size=4)
     | st.lists(st.deferred(lambda: _json), max_size=2)},
    optional={"instructions": st.text(max_size=5), "tools": st.lists(_tool, max_size=2) | _json,
              "tool_choice": st.sampled_from(["auto", "none", "required"]) | _json,
              "text": st.fixed_dictionaries({"format": _format}) | _json,
              "reasoning": _json, "max_output_tokens": st.integers(-1, 10**10), "temperature": _scalar,
              "top_p": _scalar, "stream": _scalar, "provider": _json, "models": _json,
              "metadata": _json, "user": _scalar},
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_requests | st.deferred(lambda: _json))
def test_any_json_body_is_decoded_or_a_400(doc: Any) -> None:
    try:
        decoded = CODEC.decode(json.dumps(doc).encode(), {})  # json: integers of any size
    except BadRequest:
        return
    assert decoded.as_dict()["messages"]


# --------------------------------------------------------------------------- encode


def result(message: dict[str, Any], finish: str = "stop", **usage: Any) -> dict[str, Any]:
    return {
        "id": "gen-x", "object": "chat.completion", "created": 1, "model": "test/model",
        "provider": "up", "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", **message},
                     "finish_reason": finish, "native_finish_reason": finish}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16,
                  "cost": cost_json(52_000_000), "is_byok": False, **usage},
    }


def encode(res: dict[str, Any], g: Generation) -> Response:
    doc = orjson.loads(CODEC.encode(res, g))
    response = Response.model_validate(doc)
    assert response.id == g.id and response.model == "test/model"
    assert doc["provider"] == "up"
    return response


def test_encode_text_with_usage_and_cost() -> None:
    g = gen()
    r = encode(result({"content": "Paris is the capital"}, prompt_tokens_details={
        "cached_tokens": 3}, completion_tokens_details={"reasoning_tokens": 1}), g)
    assert r.status == "completed" and r.incomplete_details is None and r.error is None
    assert r.output_text == "Paris is the capital"
    assert [item.type for item in r.output] == ["message"]
    assert r.created_at == g.created and r.tools == [] and r.parallel_tool_calls is True
    assert r.usage is not None
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (12, 4, 16)
    assert r.usage.input_tokens_details.cached_tokens == 3
    assert r.usage.output_tokens_details.reasoning_tokens == 1
    extra = r.usage.model_extra or {}
    assert Decimal(str(extra["cost"])) == Decimal("0.000052") and extra["is_byok"] is False


def test_encode_repeats_the_request_settings() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    g = gen()
    g.echo = CODEC.decode(orjson.dumps(base(
        instructions="Be brief.", tools=[WEATHER], tool_choice="required", temperature=0.5,
        top_p=0.9, max_output_tokens=100, metadata={"run": "7"}, parallel_tool_calls=False,
        reasoning={"effort": "low"}, user="u-1", store=True, session_id="s1",
        text={"format": {"type": "json_schema", "name": "person", "schema": schema}},
    )), {}).echo
    r = encode(result({"content": '{"name": "Ada"}'}), g)
    assert r.instructions == "Be brief." and r.tool_choice == "required"
    assert [t.name for t in r.tools if t.type == "function"] == ["get_weather"]
    assert (r.temperature, r.top_p, r.max_output_tokens) == (0.5, 0.9, 100)
    assert r.metadata == {"run": "7"} and r.parallel_tool_calls is False and r.user == "u-1"
    assert r.reasoning is not None and r.reasoning.effort == "low"
    assert r.text is not None and r.text.format is not None
    assert r.text.format.type == "json_schema"
    # Without settings, OpenAI's defaults.
    plain = encode(result({"content": "hi"}), gen())
    assert plain.text is not None and plain.text.format is not None
    assert plain.text.format.type == "text" and plain.tool_choice == "auto"
    assert plain.instructions is None and plain.metadata == {}


def test_encode_tool_calls_and_reasoning() -> None:
    g = gen()
    r = encode(result({"content": None, "reasoning": "Need the weather.", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
        {"id": "call_2", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Bergen"}'}},
    ]}, "tool_calls"), g)
    assert [item.type for item in r.output] == ["reasoning", "function_call", "function_call"]
    reasoning, first, second = r.output
    assert reasoning.type == "reasoning" and reasoning.content is not None
    assert reasoning.content[0].text == "Need the weather." and reasoning.summary == []
    assert first.type == "function_call" and second.type == "function_call"
    assert (first.call_id, first.name, first.arguments) == ("call_1", "get_weather",
                                                            '{"city":"Oslo"}')
    assert second.call_id == "call_2" and first.id != second.id
    assert r.output_text == "" and r.status == "completed"


@pytest.mark.parametrize(("finish", "reason"), [("length", "max_output_tokens"),
                                                ("content_filter", "content_filter")])
def test_encode_a_cut_answer_is_incomplete(finish: str, reason: str) -> None:
    r = encode(result({"content": "Paris is"}, finish), gen())
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == reason and r.output_text == "Paris is"


def test_encode_an_empty_answer_and_a_refusal() -> None:
    assert encode(result({"content": None}), gen()).output_text == ""
    r = encode(result({"content": None, "refusal": "I can't help with that."}), gen())
    message = r.output[0]
    assert message.type == "message"
    assert [part.type for part in message.content] == ["refusal"]


def test_error_body_is_the_gateway_shape() -> None:
    exc = BadRequest("input is required")
    assert orjson.loads(CODEC.error_body(exc)) == {
        "error": {"code": 400, "message": "input is required", "metadata": {}}}


# --------------------------------------------------------------------------- stream


def events(data: bytes) -> list[dict[str, Any]]:
    """SSE frames -> event dicts, each checked against the SDK's event union and its name."""
    out = []
    for frame in data.split(b"\n\n"):
        if not frame:
            continue
        head, body = frame.split(b"\n", 1)
        assert head.startswith(b"event: ") and body.startswith(b"data: ")
        event = orjson.loads(body[6:])
        assert event["type"] == head[7:].decode()
        _events.validate_python(event)
        out.append(event)
    return out


def replay(evs: list[dict[str, Any]]) -> list[Any]:
    """What `client.responses.stream(...)` yields for these events (its own accumulator)."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=[WEATHER],
                                                          text_format=omit)
    seen = []
    for ev in evs:
        event: Any = construct_type(type_=ResponseStreamEvent, value=ev)  # as the SDK builds it
        seen.extend(state.handle_event(event))
    return seen


def chunk(**delta: Any) -> dict[str, Any]:
    finish = delta.pop("finish", None)
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
         "cost": cost_json(52_000_000), "is_byok": False}  # pico-USD: $0.000052


def run(g: Generation, *batches: list[dict[str, Any]], usage: dict[str, Any] | None = USAGE,
        error: EdgeproxyError | None = None) -> list[dict[str, Any]]:
    enc = CODEC.stream_encoder(g)
    data = b"".join(enc.chunks(batch) for batch in batches)
    data += enc.error(error) if error is not None else enc.finish(usage or {})
    evs = events(data)
    assert [ev["sequence_number"] for ev in evs] == list(range(len(evs)))
    return evs


def test_stream_text() -> None:
    g = gen()
    # The opening role-only chunk comes twice: an attempt failed before content and the next began.
    evs = run(g, [chunk(role="assistant", content="")], [chunk(role="assistant")],
              [chunk(content="one "), chunk(content="two")], [chunk(content=" three")],
              [chunk(finish="stop")])
    assert [ev["type"] for ev in evs] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed",
    ]
    assert evs[0]["response"]["status"] == "in_progress" and evs[0]["response"]["id"] == g.id
    assert evs[7]["text"] == "one two three"
    seen = replay(evs)
    deltas = [ev for ev in seen if ev.type == "response.output_text.delta"]
    assert deltas[-1].snapshot == "one two three"
    final = seen[-1].response
    assert final.status == "completed" and final.output_text == "one two three"
    assert final.usage.output_tokens == 3 and Decimal(str(final.usage.model_extra["cost"])) == \
        Decimal("0.000052")


def test_stream_reasoning_then_text() -> None:
    evs = run(gen(), [chunk(role="assistant", reasoning="Think"), chunk(reasoning="ing.")],
              [chunk(content="Done.", finish="stop")])
    types = [ev["type"] for ev in evs]
    assert types[2:10] == [
        "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done",
        "response.output_item.done", "response.output_item.added",
    ]
    final = replay(evs)[-1].response
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output[0].content[0].text == "Thinking." and final.output_text == "Done."
    assert len({item.id for item in final.output}) == 2


def test_stream_tool_calls_interleaved() -> None:
    evs = run(gen(), [chunk(role="assistant", content="Checking.")], [
        chunk(tool_calls=[{"index": 0, "id": "call_1", "type": "function",
                           "function": {"name": "get_weather", "arguments": ""}}]),
        chunk(tool_calls=[{"index": 1, "id": "call_2", "type": "function",
                           "function": {"name": "get_weather", "arguments": '{"city":'}}]),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"city":'}}]),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": '"Oslo"}'}}]),
        chunk(tool_calls=[{"index": 1, "function": {"arguments": '"Bergen"}'}}]),
    ], [chunk(finish="tool_calls")])
    done = [ev for ev in evs if ev["type"] == "response.function_call_arguments.done"]
    assert [ev["arguments"] for ev in done] == ['{"city":"Oslo"}', '{"city":"Bergen"}']
    seen = replay(evs)
    final = seen[-1].response
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_1", "get_weather", '{"city":"Oslo"}'), ("call_2", "get_weather", '{"city":"Bergen"}')]
    # The tool is strict, so the SDK parses the arguments with the input tools it was given.
    assert [c.parsed_arguments for c in calls] == [{"city": "Oslo"}, {"city": "Bergen"}]
    assert final.output_text == "Checking." and final.status == "completed"


def test_stream_cut_short_is_incomplete() -> None:
    evs = run(gen(), [chunk(content="Paris is", finish="length")])
    last = evs[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert last["response"]["usage"]["output_tokens"] == 3


def test_stream_with_no_content_still_has_a_message() -> None:
    final = replay(run(gen(), [chunk(role="assistant")], [chunk(finish="stop")]))[-1].response
    assert [item.type for item in final.output] == ["message"] and final.output_text == ""


@pytest.mark.parametrize("batches", [
    [[chunk(role="assistant")], [chunk(content="one two")],
     [chunk(tool_calls=[{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{"}}])]],
    [],
], ids=["after-content", "before-any-chunk"])
def test_stream_failure_is_response_failed(batches: list[list[dict[str, Any]]]) -> None:
    exc = UpstreamStatusError("upstream: overloaded", provider="up", raw={"type": "overloaded"})
    evs = run(gen(), *batches, error=exc)
    assert evs[0]["type"] == "response.created" and evs[-1]["type"] == "response.failed"
    failed = evs[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "server_error"
    assert failed["error"]["message"] == "upstream: overloaded"
    assert failed["error"]["metadata"]["provider_name"] == "up"
    seen = replay(evs)
    assert seen[-1].type == "response.failed"
    if batches:
        # The message was complete when the call began; the call was cut.
        output = seen[-1].response.output
        assert [(item.type, item.status) for item in output] == [
            ("message", "completed"), ("function_call", "incomplete")]
        assert output[0].content[0].text == "one two" and output[1].arguments == "{"


def test_stream_rate_limit_code() -> None:
    evs = run(gen(), error=RateLimited("slow down", retry_after=3))
    assert evs[-1]["response"]["error"]["code"] == "rate_limit_exceeded"


def test_reasoning_items_go_with_their_assistant_turn() -> None:
    # An OpenAI reasoning item (with its encrypted content) before the calls it led to; one
    # after the last assistant item belongs to that turn; one with nothing to go with is dropped.
    doc = decode(base(input=[
        {"type": "reasoning", "id": "rs_0", "summary": [], "encrypted_content": "orphan"},
        {"role": "user", "content": "weather?"},
        {"type": "reasoning", "id": "rs_1", "encrypted_content": "enc1",
         "summary": [{"type": "summary_text", "text": "Need a tool."}]},
        {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
        {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "enc2"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    ]))
    fmt = "openai-responses-v1"
    assert doc["messages"][1]["reasoning_details"] == [
        {"type": "reasoning.summary", "summary": "Need a tool.", "id": "rs_1", "format": fmt,
         "index": 0},
        {"type": "reasoning.encrypted", "data": "enc1", "id": "rs_1", "format": fmt, "index": 1},
        {"type": "reasoning.encrypted", "data": "enc2", "id": "rs_2", "format": fmt, "index": 0},
    ]
    assert [m["role"] for m in doc["messages"]] == ["user", "assistant", "tool"]
    assert "reasoning_details" not in doc["messages"][0]
