"""The `openai-responses` adapter on hand-made bodies (SPEC §3, §4).

Requests are checked against the openai SDK's own type of a Responses request (validated with
pydantic), responses and streams are written after the OpenAI API reference's examples ("The
response object", "Streaming events"). Streams are also fed in random byte splits, and garbage must
only ever raise UpstreamError subclasses (requests: BadRequest).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses.response_create_params import ResponseCreateParamsStreaming
from pydantic import TypeAdapter

from edgeproxy.errors import (
    BadRequest,
    EdgeproxyError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from edgeproxy.protocols import adapter_for
from edgeproxy.protocols.base import Target
from edgeproxy.protocols.openai_responses import ResponsesAdapter
from tests.unit.test_protocols import only_upstream_errors, run, same_outcome, sse_of

ADAPTER = ResponsesAdapter()
PRO = Target("https://api.openai.com/v1/", "sk-test", "gpt-5-pro", 272000)
REQUEST_TYPE: TypeAdapter[Any] = TypeAdapter(ResponseCreateParamsStreaming)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ROLE = {
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
}


def body_of(req: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    body = orjson.loads(ADAPTER.build_request(req, orjson.dumps(req), PRO, stream).body)
    REQUEST_TYPE.validate_python({**body, "stream": True})  # the shape the SDK would send
    return body


def delta(d: dict[str, Any]) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": d, "finish_reason": None}]}


def finish(reason: str, native: str) -> dict[str, Any]:
    return {
        "choices": [
            {"index": 0, "delta": {}, "finish_reason": reason, "native_finish_reason": native}
        ]
    }


def sse(*events: dict[str, Any]) -> bytes:
    """Events as the API frames them: `event: <type>`, `data: <json>` with a sequence_number."""
    return b"".join(
        b"event: %s\ndata: %s\n\n" % (e["type"].encode(), orjson.dumps({**e, "sequence_number": n}))
        for n, e in enumerate(events)
    )


# =============================================================================== requests


def test_registered_under_its_protocol_name() -> None:
    assert isinstance(adapter_for("openai-responses"), ResponsesAdapter)
    assert ADAPTER.name == "openai-responses" and ADAPTER.needs_dict


def test_plain_text_request() -> None:
    req = {
        "model": "openai/gpt-5-pro",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Capital of France?"},
        ],
        "max_tokens": 100,
        "temperature": 0.5,
        "top_p": 0.9,
        "user": "user-42",
        "stop": ["\n"],
        "seed": 7,
        # OpenRouter's own members never reach the upstream.
        "models": ["openai/o3-pro"],
        "provider": {"order": ["openai"]},
        "route": "fallback",
        "usage": {"include": True},
        "transforms": [],
        "session_id": "s1",
    }
    call = ADAPTER.build_request(req, orjson.dumps(req), PRO, False)
    assert call.url == "https://api.openai.com/v1/responses"
    assert call.headers == {"Content-Type": "application/json", "Authorization": "Bearer sk-test"}
    assert body_of(req) == {
        "model": "gpt-5-pro",
        "instructions": "Be brief.\n\nAnswer in French.",
        "input": [
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Capital of France?"}],
            }
        ],
        "store": False,
        "max_output_tokens": 100,
        "temperature": 0.5,
        "top_p": 0.9,
        "user": "user-42",
    }
    assert body_of(req, stream=True)["stream"] is True


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"max_tokens": 5}, 16),  # the API's floor
        ({"max_tokens": 300, "max_completion_tokens": 200}, 200),
        ({}, None),
    ],
)
def test_max_output_tokens(limits: dict[str, int], expected: int | None) -> None:
    req = {"messages": [{"role": "user", "content": "hi"}], **limits}
    assert body_of(req).get("max_output_tokens") == expected


def test_images_and_files() -> None:
    pdf = "data:application/pdf;base64,JVBERi0xLjQK"
    req = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
                    },
                    {"type": "file", "file": {"filename": "a.pdf", "file_data": pdf}},
                    {"type": "file", "file": {"file_id": "file-123"}},
                ],
            }
        ]
    }
    assert body_of(req)["input"][0]["content"] == [
        {"type": "input_text", "text": "What is in these?"},
        {"type": "input_image", "image_url": "https://x.test/a.png", "detail": "auto"},
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
        {"type": "input_file", "file_data": pdf, "filename": "a.pdf"},
        {"type": "input_file", "file_id": "file-123"},
    ]


def test_tools_and_a_tool_round_trip() -> None:
    strict_tool = {
        "type": "function",
        "function": {
            "name": "lookup",
            "strict": True,
            "parameters": {
                "type": "object",
                "properties": {"q": {"type": "string"}},
                "required": ["q"],
                "additionalProperties": False,
            },
        },
    }
    req = {
        "messages": [
            {"role": "user", "content": "Weather in Oslo and Paris?"},
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    },
                    {
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_a", "content": "12 degrees"},
            {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "20"}]},
        ],
        "tools": [WEATHER, strict_tool],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
    }
    body = body_of(req)
    assert body["tools"] == [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": WEATHER["function"]["parameters"],
            "strict": False,  # chat's default, not the Responses API's strict default
        },
        {
            "type": "function",
            "name": "lookup",
            "parameters": strict_tool["function"]["parameters"],
            "strict": True,
        },
    ]
    assert body["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert body["parallel_tool_calls"] is False
    assert body["input"][1:] == [
        {"type": "message", "role": "assistant", "content": "Let me check."},
        {
            "type": "function_call",
            "call_id": "call_a",
            "name": "get_weather",
            "arguments": '{"city":"Oslo"}',
        },
        {
            "type": "function_call",
            "call_id": "call_b",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        },
        {"type": "function_call_output", "call_id": "call_a", "output": "12 degrees"},
        {
            "type": "function_call_output",
            "call_id": "call_b",
            "output": [{"type": "input_text", "text": "20"}],
        },
    ]


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_tool_choice_words_pass(choice: str) -> None:
    req = {"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER], "tool_choice": choice}
    assert body_of(req)["tool_choice"] == choice


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        (
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "person",
                    "description": "A person",
                    "schema": {"type": "object"},
                    "strict": True,
                },
            },
            {
                "type": "json_schema",
                "name": "person",
                "description": "A person",
                "schema": {"type": "object"},
                "strict": True,
            },
        ),
        (
            {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
            {"type": "json_schema", "name": "response", "schema": {"type": "object"}, "strict": False},
        ),
        ({"type": "json_object"}, {"type": "json_object"}),
        ({"type": "text"}, {"type": "text"}),
    ],
)
def test_response_format_becomes_text_format(fmt: dict[str, Any], expected: dict[str, Any]) -> None:
    req = {"messages": [{"role": "user", "content": "x"}], "response_format": fmt}
    assert body_of(req)["text"] == {"format": expected}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"reasoning": {"effort": "high"}}, {"effort": "high"}),
        ({"reasoning_effort": "low"}, {"effort": "low"}),
        ({"reasoning_effort": "high", "reasoning": {"effort": "high"}}, {"effort": "high"}),
        ({"reasoning": {"max_tokens": 3000}, "max_tokens": 4000}, {"effort": "high"}),
        ({"reasoning": {"enabled": True}}, {"effort": "medium"}),
        ({"reasoning": {"effort": "max"}}, {"effort": "xhigh"}),
        ({"reasoning": {"effort": "high", "summary": "auto"}}, {"effort": "high", "summary": "auto"}),
        ({"reasoning": {"exclude": True}}, None),
    ],
)
def test_reasoning(extra: dict[str, Any], expected: dict[str, Any] | None) -> None:
    req = {"messages": [{"role": "user", "content": "x"}], **extra}
    assert body_of(req).get("reasoning") == expected


@pytest.mark.parametrize(
    "req",
    [
        {"messages": []},
        {"messages": [{"role": "narrator", "content": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
        {"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": "x"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]},
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}],
                }
            ]
        },
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search"}]},
        {"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER], "tool_choice": "any"},
        {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "yaml"}},
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
        {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
        {"messages": [{"role": "user", "content": "x"}], "reasoning": "high"},
        {"messages": [{"role": "user", "content": "x"}], "reasoning": {"effort": 3}},
        {"messages": [{"role": "user", "content": "x"}], "reasoning": {"effort": "high"},
         "reasoning_effort": "low"},
    ],
)
def test_what_the_api_cannot_express_is_a_400(req: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        ADAPTER.build_request(req, b"", PRO, False)


# =============================================================================== responses


def response(output: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A Response object as "The response object" shows it."""
    return {
        "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
        "object": "response",
        "created_at": 1741476542,
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "model": "gpt-5-pro-2025-10-06",
        "output": output,
        "usage": {
            "input_tokens": 36,
            "input_tokens_details": {"cached_tokens": 8},
            "output_tokens": 87,
            "output_tokens_details": {"reasoning_tokens": 64},
            "total_tokens": 123,
        },
        **extra,
    }


def message(*texts: str) -> dict[str, Any]:
    parts = [{"type": "output_text", "text": t, "annotations": []} for t in texts]
    return {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
            "content": parts}


def function_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"type": "function_call", "id": "fc_" + call_id, "call_id": call_id, "name": name,
            "arguments": arguments, "status": "completed"}


REASONING = {
    "type": "reasoning",
    "id": "rs_1",
    "summary": [
        {"type": "summary_text", "text": "**Thinking** about moons."},
        {"type": "summary_text", "text": "Then the grove."},
    ],
}
USAGE = {
    "prompt_tokens": 36,
    "completion_tokens": 87,
    "total_tokens": 123,
    "prompt_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 64},
}


def parse(obj: dict[str, Any]) -> dict[str, Any]:
    return ADAPTER.parse_response(200, orjson.dumps(obj))


def test_text_response_with_reasoning_and_usage() -> None:
    out = parse(response([REASONING, message("In a peaceful grove ", "beneath a silver moon.")]))
    assert out == {
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "In a peaceful grove beneath a silver moon.",
                    "reasoning": "**Thinking** about moons.\n\nThen the grove.",
                    "reasoning_details": [
                        {"type": "reasoning.summary", "summary": "**Thinking** about moons.",
                         "id": "rs_1", "format": "openai-responses-v1", "index": 0},
                        {"type": "reasoning.summary", "summary": "Then the grove.",
                         "id": "rs_1", "format": "openai-responses-v1", "index": 1},
                    ],
                },
                "finish_reason": "stop",
                "native_finish_reason": "completed",
            }
        ],
        "usage": USAGE,
    }


def test_function_calls_become_tool_calls() -> None:
    out = parse(response([
        function_call("call_a", "get_weather", '{"city":"Oslo"}'),
        function_call("call_b", "get_weather", '{"city":"Paris"}'),
    ]))
    choice = out["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
            {"id": "call_b", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        ],
    }
    assert (choice["finish_reason"], choice["native_finish_reason"]) == ("tool_calls", "completed")


@pytest.mark.parametrize(
    ("reason", "finish_reason"),
    [("max_output_tokens", "length"), ("content_filter", "content_filter")],
)
def test_incomplete_responses(reason: str, finish_reason: str) -> None:
    obj = response([message("Once upon")], status="incomplete",
                   incomplete_details={"reason": reason})
    choice = parse(obj)["choices"][0]
    assert choice["message"]["content"] == "Once upon"
    assert (choice["finish_reason"], choice["native_finish_reason"]) == (finish_reason, reason)


def test_refusal() -> None:
    refused = {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
               "content": [{"type": "refusal", "refusal": "I can't help with that."}]}
    msg = parse(response([refused]))["choices"][0]["message"]
    assert msg == {"role": "assistant", "content": None, "refusal": "I can't help with that."}


def test_failed_response_is_an_upstream_status_error() -> None:
    err = {"code": "rate_limit_exceeded", "message": "Slow down."}
    with pytest.raises(UpstreamStatusError) as ei:
        parse(response([], status="failed", error=err))
    assert ei.value.upstream_status == 429 and ei.value.raw == err
    assert "Slow down." in ei.value.message


@pytest.mark.parametrize(
    "data",
    [
        b"<html>502</html>",
        b"[]",
        orjson.dumps(response([], status="in_progress")),
        orjson.dumps(response("nope")),  # type: ignore[arg-type]
        orjson.dumps(response([{"type": "function_call", "name": "f"}])),
        orjson.dumps({**response([]), "usage": {"input_tokens": -1}}),
    ],
)
def test_untranslatable_responses(data: bytes) -> None:
    with pytest.raises(UpstreamProtocolError):
        ADAPTER.parse_response(200, data)


def test_parse_error_reads_openais_error_body() -> None:
    err = {"message": "Invalid 'input[0]'.", "type": "invalid_request_error", "param": "input",
           "code": None}
    assert ADAPTER.parse_error(400, orjson.dumps({"error": err})) == ("Invalid 'input[0]'.", err)
    assert ADAPTER.effective_status(400, err) == 400


# =============================================================================== streaming


def created(status: str = "in_progress") -> dict[str, Any]:
    return {"type": "response.created", "response": response([], status=status, usage=None)}


TEXT_STREAM = sse(
    created(),
    {"type": "response.in_progress", "response": response([], status="in_progress", usage=None)},
    {"type": "response.output_item.added", "output_index": 0,
     "item": {"id": "msg_1", "type": "message", "status": "in_progress", "role": "assistant",
              "content": []}},
    {"type": "response.content_part.added", "item_id": "msg_1", "output_index": 0,
     "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}},
    {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
     "content_index": 0, "delta": "Hi", "logprobs": []},
    {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
     "content_index": 0, "delta": " there", "logprobs": []},
    {"type": "response.output_text.done", "item_id": "msg_1", "output_index": 0,
     "content_index": 0, "text": "Hi there", "logprobs": []},
    {"type": "response.content_part.done", "item_id": "msg_1", "output_index": 0,
     "content_index": 0, "part": {"type": "output_text", "text": "Hi there", "annotations": []}},
    {"type": "response.output_item.done", "output_index": 0, "item": message("Hi there")},
    {"type": "response.completed", "response": response([message("Hi there")])},
)


def decode(raw: bytes) -> list[dict[str, Any]]:
    chunks, exc = run(ADAPTER.stream_decoder(), [raw])
    if exc is not None:
        raise exc
    return chunks


def test_text_stream() -> None:
    assert decode(TEXT_STREAM) == [
        ROLE,
        delta({"content": "Hi"}),
        delta({"content": " there"}),
        finish("stop", "completed"),
        {"choices": [], "usage": USAGE},
    ]


def call_events(index: int, call_id: str, pieces: list[str]) -> list[dict[str, Any]]:
    item_id = "fc_" + call_id
    added = {"id": item_id, "type": "function_call", "status": "in_progress", "call_id": call_id,
             "name": "get_weather", "arguments": ""}
    return [
        {"type": "response.output_item.added", "output_index": index, "item": added},
        *[
            {"type": "response.function_call_arguments.delta", "item_id": item_id,
             "output_index": index, "delta": p}
            for p in pieces
        ],
        {"type": "response.function_call_arguments.done", "item_id": item_id,
         "output_index": index, "arguments": "".join(pieces)},
        {"type": "response.output_item.done", "output_index": index,
         "item": function_call(call_id, "get_weather", "".join(pieces))},
    ]


TOOL_STREAM = sse(
    created(),
    {"type": "response.output_item.added", "output_index": 0,
     "item": {"type": "reasoning", "id": "rs_1", "summary": []}},
    {"type": "response.reasoning_summary_text.delta", "item_id": "rs_1", "output_index": 0,
     "summary_index": 0, "delta": "Two cities"},
    {"type": "response.reasoning_summary_text.delta", "item_id": "rs_1", "output_index": 0,
     "summary_index": 0, "delta": ", two calls."},
    {"type": "response.reasoning_summary_text.delta", "item_id": "rs_1", "output_index": 0,
     "summary_index": 1, "delta": "Go."},
    *call_events(1, "call_a", ['{"city":', '"Oslo"}']),
    *call_events(2, "call_b", ['{"city":"Paris"}']),
    {"type": "response.completed", "response": response([
        REASONING,
        function_call("call_a", "get_weather", '{"city":"Oslo"}'),
        function_call("call_b", "get_weather", '{"city":"Paris"}'),
    ])},
)


def tool_delta(index: int, **fields: Any) -> dict[str, Any]:
    return delta({"tool_calls": [{"index": index, **fields}]})


def announce(index: int, call_id: str) -> dict[str, Any]:
    return tool_delta(index, id=call_id, type="function",
                      function={"name": "get_weather", "arguments": ""})


def test_tool_stream_with_reasoning() -> None:
    assert decode(TOOL_STREAM) == [
        ROLE,
        delta({"reasoning": "Two cities"}),
        delta({"reasoning": ", two calls."}),
        delta({"reasoning": "\n\nGo."}),  # a new summary part, as parse_response joins them
        announce(0, "call_a"),
        tool_delta(0, function={"arguments": '{"city":'}),
        tool_delta(0, function={"arguments": '"Oslo"}'}),
        announce(1, "call_b"),
        tool_delta(1, function={"arguments": '{"city":"Paris"}'}),
        finish("tool_calls", "completed"),
        {"choices": [], "usage": USAGE},
    ]


def test_arguments_sent_whole_go_out_once() -> None:
    # A compatible server that sends no argument deltas: the done events carry them.
    events = [e for e in call_events(0, "call_a", ['{"city":"Oslo"}'])
              if e["type"] != "response.function_call_arguments.delta"]
    raw = sse(created(), *events, {"type": "response.completed", "response": response([])})
    assert decode(raw)[1:3] == [
        announce(0, "call_a"),
        tool_delta(0, function={"arguments": '{"city":"Oslo"}'}),
    ]
    # ...or only the finished item, with no `added` either.
    raw = sse(created(), events[-1], {"type": "response.completed", "response": response([])})
    assert decode(raw)[1] == tool_delta(0, id="call_a", type="function", function={
        "name": "get_weather", "arguments": '{"city":"Oslo"}'})


def test_incomplete_stream_is_a_length_finish() -> None:
    truncated = response([message("Once")], status="incomplete",
                         incomplete_details={"reason": "max_output_tokens"})
    raw = sse(created(), {"type": "response.output_text.delta", "item_id": "msg_1",
                          "output_index": 0, "content_index": 0, "delta": "Once"},
              {"type": "response.incomplete", "response": truncated})
    assert decode(raw)[-2:] == [finish("length", "max_output_tokens"),
                                {"choices": [], "usage": USAGE}]


def test_anything_after_the_end_is_ignored() -> None:
    # Some compatible servers still send chat's sentinel; nothing after the end is read.
    assert decode(TEXT_STREAM + b"data: [DONE]\n\n") == decode(TEXT_STREAM)


def test_failed_stream_raises_after_the_content_that_came() -> None:
    failed = response([], status="failed", error={"code": "server_error", "message": "Boom"})
    raw = TEXT_STREAM.split(b"event: response.output_text.done")[0] + sse(
        {"type": "response.failed", "response": failed})
    decoder = ADAPTER.stream_decoder()
    chunks = decoder.feed(raw)
    assert chunks == [ROLE, delta({"content": "Hi"}), delta({"content": " there"})]
    with pytest.raises(UpstreamStatusError) as ei:
        decoder.close()
    assert ei.value.upstream_status == 500 and "Boom" in ei.value.message


def test_error_event() -> None:
    raw = sse(created(), {"type": "error", "code": "rate_limit_exceeded", "message": "Too fast",
                          "param": None})
    chunks, exc = run(ADAPTER.stream_decoder(), [raw])
    assert chunks == [ROLE]
    assert isinstance(exc, UpstreamStatusError) and exc.upstream_status == 429


def test_cut_streams_are_protocol_errors() -> None:
    chunks, exc = run(ADAPTER.stream_decoder(), [TEXT_STREAM.split(b"event: response.completed")[0]])
    assert isinstance(exc, UpstreamProtocolError)
    assert chunks[-1] == delta({"content": " there"})
    _, exc = run(ADAPTER.stream_decoder(), [TEXT_STREAM[:-10]])  # inside the last event's JSON
    assert isinstance(exc, UpstreamProtocolError)
    # A whole last event that only lacks its blank line still counts.
    assert run(ADAPTER.stream_decoder(), [TEXT_STREAM[:-2]]) == run(
        ADAPTER.stream_decoder(), [TEXT_STREAM])


def test_arguments_for_an_unknown_call_are_a_protocol_error() -> None:
    raw = sse(created(), {"type": "response.function_call_arguments.delta", "item_id": "fc_x",
                          "output_index": 0, "delta": "{"})
    assert isinstance(run(ADAPTER.stream_decoder(), [raw])[1], UpstreamProtocolError)


FAILED_STREAM = sse(created(), {"type": "response.failed", "response": response(
    [], status="failed", error={"code": "server_error", "message": "Boom"})})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([TEXT_STREAM, TOOL_STREAM, FAILED_STREAM, TEXT_STREAM.replace(b"\n", b"\r\n")]),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=40),
)
def test_any_split_gives_the_same_chunks(raw: bytes, cuts: list[int]) -> None:
    same_outcome(ADAPTER, raw, cuts)


# =============================================================================== garbage in

NAMES = st.sampled_from([
    "type", "response", "status", "output", "usage", "item", "item_id", "output_index", "delta",
    "arguments", "call_id", "name", "id", "summary", "summary_index", "content", "text", "error",
    "code", "message", "incomplete_details", "reason", "input_tokens", "output_tokens",
    "response.created", "response.output_text.delta", "response.output_item.added",
    "response.output_item.done", "response.function_call_arguments.delta",
    "response.function_call_arguments.done", "response.reasoning_summary_text.delta",
    "response.completed", "response.incomplete", "response.failed", "error", "function_call",
    "message", "output_text", "refusal", "reasoning", "completed", "incomplete", "failed",
    "max_output_tokens",
])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | NAMES | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(NAMES | st.text(max_size=4), inner, max_size=6),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | JSON.map(orjson.dumps))
def test_garbage_responses_raise_only_upstream_errors(data: bytes) -> None:
    only_upstream_errors(lambda: ADAPTER.parse_response(200, data))
    message_, _raw = ADAPTER.parse_error(500, data)  # never raises
    assert isinstance(message_, str)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.lists(st.binary(max_size=80), max_size=6),
        st.builds(
            lambda values, names, cut: [sse_of(values, names)[:cut], sse_of(values, names)[cut:]],
            st.lists(JSON, min_size=1, max_size=6),
            st.lists(NAMES, min_size=6, max_size=6),
            st.integers(min_value=0, max_value=400),
        ),
        # Well-formed frames around garbage events, so the handlers themselves are reached.
        st.lists(st.tuples(NAMES, st.dictionaries(NAMES, JSON, max_size=6)), max_size=6).map(
            lambda events: [sse(created(), *[{**fields, "type": t} for t, fields in events])]
        ),
    )
)
def test_garbage_streams_raise_only_upstream_errors(pieces: list[bytes]) -> None:
    only_upstream_errors(lambda: run(ADAPTER.stream_decoder(), pieces)[1] and None)
    decoder = ADAPTER.stream_decoder()
    for piece in pieces:  # and straight, without the helper's catch
        try:
            decoder.feed(piece)
        except UpstreamError:
            break


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from([
            "tools", "tool_choice", "response_format", "max_tokens", "max_completion_tokens",
            "temperature", "top_p", "parallel_tool_calls", "user", "metadata", "reasoning",
            "reasoning_effort",
        ]),
        JSON,
    ),
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["system", "user", "assistant", "tool", "developer", "x"])},
            optional={
                "content": JSON | st.lists(st.fixed_dictionaries(
                    {"type": st.sampled_from(["text", "image_url", "file", "input_audio",
                                              "refusal"])},
                    optional={"text": JSON, "image_url": JSON, "file": JSON},
                )),
                "tool_calls": JSON,
                "tool_call_id": JSON,
            },
        ),
        max_size=5,
    ),
)
def test_garbage_requests_raise_only_bad_request(req: dict[str, Any], messages: list[Any]) -> None:
    req["messages"] = messages
    try:
        ADAPTER.build_request(req, b"", PRO, False)
    except EdgeproxyError as exc:
        assert isinstance(exc, BadRequest) and exc.status == 400
