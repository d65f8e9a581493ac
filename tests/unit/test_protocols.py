"""Golden request/response pairs for the Anthropic and Gemini adapters (SPEC §3, §4).

The native sides are the vendors' documented examples, written out as literal dicts and SSE text:
Anthropic's Messages API reference, tool-use, vision, prompt-caching and streaming guides; Google's
generateContent / streamGenerateContent reference and the text, vision, function-calling and
structured-output guides. Streams are also fed in random byte splits (hypothesis) and must give
the chunks of one feed, and garbage must only ever raise UpstreamError subclasses.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeproxy.errors import (
    BadRequest,
    EdgeproxyError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from edgeproxy.protocols.anthropic import ANTHROPIC_VERSION, AnthropicAdapter
from edgeproxy.protocols.base import Target
from edgeproxy.protocols.gemini import SKIP_SIGNATURE, GeminiAdapter, clean_schema

ANTHROPIC = AnthropicAdapter()
GEMINI = GeminiAdapter()
CLAUDE = Target("https://api.anthropic.com/v1", "sk-ant-test", "claude-sonnet-4-5", 4096)
FLASH = Target(
    "https://generativelanguage.googleapis.com/v1beta/", "g-test", "gemini-2.5-flash", 8192
)

ROLE = {
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
}


def anthropic_body(req: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    return orjson.loads(ANTHROPIC.build_request(req, orjson.dumps(req), CLAUDE, stream).body)


def gemini_body(req: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    return orjson.loads(GEMINI.build_request(req, orjson.dumps(req), FLASH, stream).body)


def content(text: str, index: int = 0) -> dict[str, Any]:
    return {"choices": [{"index": index, "delta": {"content": text}, "finish_reason": None}]}


def finish(reason: str, native: str, index: int = 0) -> dict[str, Any]:
    return {
        "choices": [
            {"index": index, "delta": {}, "finish_reason": reason, "native_finish_reason": native}
        ]
    }


def run(decoder: Any, pieces: list[bytes]) -> tuple[list[dict[str, Any]], Exception | None]:
    """Feed the pieces, then close; the chunks produced and the UpstreamError raised, if any."""
    chunks: list[dict[str, Any]] = []
    try:
        for piece in pieces:
            chunks.extend(decoder.feed(piece))
        chunks.extend(decoder.close())
    except UpstreamError as exc:
        return chunks, exc
    return chunks, None


def split(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(raw)) for c in cuts})
    bounds = [0, *points, len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(bounds)]


def same_outcome(adapter: Any, raw: bytes, cuts: list[int]) -> None:
    whole, whole_exc = run(adapter.stream_decoder(), [raw])
    parts, parts_exc = run(adapter.stream_decoder(), split(raw, cuts))
    assert parts == whole
    assert type(parts_exc) is type(whole_exc)
    assert str(parts_exc) == str(whole_exc)


# =============================================================================== Anthropic: requests


def test_anthropic_plain_text() -> None:
    # Messages API reference, the basic request: model, max_tokens, one user turn.
    req = {
        "model": "anthropic/claude-sonnet-4.5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Hello, world"}],
    }
    call = ANTHROPIC.build_request(req, orjson.dumps(req), CLAUDE, False)
    assert call.url == "https://api.anthropic.com/v1/messages"
    assert call.headers == {
        "x-api-key": "sk-ant-test",
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }
    assert ANTHROPIC_VERSION == "2023-06-01"
    assert orjson.loads(call.body) == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Hello, world"}],
    }


def test_anthropic_max_tokens_and_sampling() -> None:
    base = {"messages": [{"role": "user", "content": "Hi"}]}
    # max_tokens is required by Anthropic: the endpoint default fills in.
    assert anthropic_body(base)["max_tokens"] == 4096
    assert (
        anthropic_body({**base, "max_tokens": 10, "max_completion_tokens": 20})["max_tokens"] == 20
    )
    body = anthropic_body(
        {
            **base,
            "temperature": 1.7,
            "top_p": 0.9,
            "stop": "\n\nHuman:",
            "user": "u-42",
            "top_k": 5,
        },
        stream=True,
    )
    assert body["temperature"] == 1.0  # clamped to Anthropic's 0..1
    assert body["top_p"] == 0.9
    assert body["top_k"] == 5
    assert body["stop_sequences"] == ["\n\nHuman:"]
    assert body["metadata"] == {"user_id": "u-42"}
    assert body["stream"] is True
    assert anthropic_body({**base, "stop": ["a", "b"]})["stop_sequences"] == ["a", "b"]
    with pytest.raises(BadRequest):
        anthropic_body({**base, "max_tokens": 0})


def test_anthropic_system_prompt() -> None:
    # Messages API reference: `system` is a top-level string (or text blocks, for caching).
    req = {
        "messages": [
            {"role": "system", "content": "You are a seasoned data scientist."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": "Analyze this dataset."},
        ]
    }
    body = anthropic_body(req)
    assert body["system"] == "You are a seasoned data scientist.\n\nAnswer in English."
    assert body["messages"] == [{"role": "user", "content": "Analyze this dataset."}]
    # Prompt caching guide: a cache_control breakpoint keeps the system prompt as blocks.
    cached = {"type": "text", "text": "<the entire text>", "cache_control": {"type": "ephemeral"}}
    req = {"messages": [{"role": "system", "content": [cached]}, {"role": "user", "content": "Q"}]}
    assert anthropic_body(req)["system"] == [cached]


def test_anthropic_multi_turn_merging() -> None:
    # Consecutive same-role turns are combined; a final assistant turn is a prefill without
    # trailing whitespace.
    req = {
        "messages": [
            {"role": "user", "content": "Hello there."},
            {"role": "user", "content": "Are you there?"},
            {"role": "assistant", "content": "Hi, I'm Claude."},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "Can you describe LLMs to me?"},
            {"role": "assistant", "content": "Sure: "},
        ]
    }
    assert anthropic_body(req)["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Hello there."},
                {"type": "text", "text": "Are you there?"},
            ],
        },
        {"role": "assistant", "content": "Hi, I'm Claude."},
        {"role": "user", "content": "Can you describe LLMs to me?"},
        {"role": "assistant", "content": "Sure:"},
    ]


def test_anthropic_image_input() -> None:
    # Vision guide: a base64 source (media_type + data) and a url source.
    req = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg=="},
                    },
                    {
                        "type": "image_url",
                        "image_url": {
                            "url": "https://upload.wikimedia.org/a.jpg",
                            "detail": "high",
                        },
                    },
                    {"type": "text", "text": "Describe this image."},
                ],
            }
        ]
    }
    assert anthropic_body(req)["messages"] == [
        {
            "role": "user",
            "content": [
                {
                    "type": "image",
                    "source": {
                        "type": "base64",
                        "media_type": "image/jpeg",
                        "data": "/9j/4AAQSkZJRg==",
                    },
                },
                {
                    "type": "image",
                    "source": {"type": "url", "url": "https://upload.wikimedia.org/a.jpg"},
                },
                {"type": "text", "text": "Describe this image."},
            ],
        }
    ]
    for bad in ("ftp://x/a.png", "data:image/png,notbase64"):
        with pytest.raises(BadRequest):
            anthropic_body(
                {
                    "messages": [
                        {
                            "role": "user",
                            "content": [{"type": "image_url", "image_url": {"url": bad}}],
                        }
                    ]
                }
            )
    with pytest.raises(BadRequest) as info:
        anthropic_body(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "input_audio",
                                "input_audio": {"data": "AAAA", "format": "wav"},
                            }
                        ],
                    }
                ]
            }
        )
    assert info.value.status == 400


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {
                    "type": "string",
                    "description": "The city and state, e.g. San Francisco, CA",
                },
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}


def test_anthropic_tool_round_trip_request() -> None:
    # Tool-use guide: the assistant's tool_use block, then the user's tool_result block.
    req = {
        "messages": [
            {"role": "user", "content": "What's the weather like in San Francisco?"},
            {
                "role": "assistant",
                "content": "I'll check the current weather in San Francisco for you.",
                "tool_calls": [
                    {
                        "id": "toolu_01A09q90qw90lq917835lq9",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": '{"location": "San Francisco, CA", "unit": "celsius"}',
                        },
                    },
                    {
                        "id": "call:2",  # another provider's id: rewritten to the allowed charset
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    },
                ],
            },
            {
                "role": "tool",
                "tool_call_id": "toolu_01A09q90qw90lq917835lq9",
                "content": "15 degrees",
            },
            {
                "role": "tool",
                "tool_call_id": "call:2",
                "content": [{"type": "text", "text": "sunny"}],
            },
        ],
        "tools": [WEATHER_TOOL],
    }
    body = anthropic_body(req)
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Get the current weather in a given location",
            "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
        }
    ]
    assert "tool_choice" not in body
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "text",
                    "text": "I'll check the current weather in San Francisco for you.",
                },
                {
                    "type": "tool_use",
                    "id": "toolu_01A09q90qw90lq917835lq9",
                    "name": "get_weather",
                    "input": {"location": "San Francisco, CA", "unit": "celsius"},
                },
                {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}},
            ],
        },
        {  # parallel results: one user turn
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
                    "content": "15 degrees",
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "sunny"}],
                },
            ],
        },
    ]


@pytest.mark.parametrize(
    ("choice", "parallel", "native"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            {"type": "tool", "name": "get_weather"},
        ),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
    ],
)
def test_anthropic_tool_choice(choice: Any, parallel: Any, native: dict[str, Any]) -> None:
    req: dict[str, Any] = {"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER_TOOL]}
    if choice is not None:
        req["tool_choice"] = choice
    if parallel is not None:
        req["parallel_tool_calls"] = parallel
    assert anthropic_body(req)["tool_choice"] == native


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", "42"])
def test_anthropic_invalid_tool_arguments_are_400(arguments: str) -> None:
    req = {
        "messages": [
            {"role": "user", "content": "x"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "t1",
                        "type": "function",
                        "function": {"name": "f", "arguments": arguments},
                    }
                ],
            },
        ]
    }
    with pytest.raises(BadRequest) as info:
        anthropic_body(req)
    assert info.value.status == 400


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_anthropic_json_schema_request() -> None:
    req = {
        "messages": [{"role": "user", "content": "Extract: John is 30."}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "person", "strict": True, "schema": SCHEMA},
        },
    }
    body = anthropic_body(req)
    assert body["tools"] == [
        {
            "name": "json_schema__person",
            "description": body["tools"][0]["description"],
            "input_schema": SCHEMA,
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "json_schema__person"}
    # With the client's own tools the model must call one of them or answer through the schema.
    body = anthropic_body({**req, "tools": [WEATHER_TOOL]})
    assert [t["name"] for t in body["tools"]] == ["get_weather", "json_schema__person"]
    assert body["tool_choice"] == {"type": "any"}
    # json_object has no schema: an instruction in the system prompt.
    body = anthropic_body({**req, "response_format": {"type": "json_object"}})
    assert "JSON" in body["system"] and "tools" not in body


# =============================================================================== Anthropic: responses


def test_anthropic_text_response() -> None:
    # Messages API reference, the example response.
    message = {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "Hi! My name is Claude."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 2095, "output_tokens": 503},
    }
    assert ANTHROPIC.parse_response(200, orjson.dumps(message)) == {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi! My name is Claude."},
                "finish_reason": "stop",
                "native_finish_reason": "end_turn",
            }
        ],
        "usage": {
            "prompt_tokens": 2095,
            "completion_tokens": 503,
            "total_tokens": 2598,
            "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        },
    }


def test_anthropic_tool_use_response() -> None:
    # Tool-use guide, the example response with stop_reason tool_use.
    message = {
        "id": "msg_01Aq9w938a90dw8q",
        "model": "claude-sonnet-4-5",
        "stop_reason": "tool_use",
        "role": "assistant",
        "content": [
            {"type": "text", "text": "I'll check the current weather in San Francisco for you."},
            {
                "type": "tool_use",
                "id": "toolu_01A09q90qw90lq917835lq9",
                "name": "get_weather",
                "input": {"location": "San Francisco, CA", "unit": "celsius"},
            },
        ],
        "usage": {"input_tokens": 472, "output_tokens": 89},
    }
    choice = ANTHROPIC.parse_response(200, orjson.dumps(message))["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["native_finish_reason"] == "tool_use"
    assert (
        choice["message"]["content"] == "I'll check the current weather in San Francisco for you."
    )
    call = choice["message"]["tool_calls"][0]
    assert call["id"] == "toolu_01A09q90qw90lq917835lq9"
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == {
        "location": "San Francisco, CA",
        "unit": "celsius",
    }


def test_anthropic_json_schema_response() -> None:
    message = {
        "type": "message",
        "role": "assistant",
        "content": [
            {
                "type": "tool_use",
                "id": "toolu_01",
                "name": "json_schema__person",
                "input": {"name": "John", "age": 30},
            }
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }
    choice = ANTHROPIC.parse_response(200, orjson.dumps(message))["choices"][0]
    assert orjson.loads(choice["message"]["content"]) == {"name": "John", "age": 30}
    assert "tool_calls" not in choice["message"]
    assert (choice["finish_reason"], choice["native_finish_reason"]) == ("stop", "tool_use")


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("refusal", "content_filter"),
        ("tool_use", "stop"),  # no client tool_use block in this message
        ("a_reason_added_later", "stop"),
    ],
)
def test_anthropic_stop_reasons(stop_reason: str, expected: str) -> None:
    message = {"content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason, "usage": {}}
    choice = ANTHROPIC.parse_response(200, orjson.dumps(message))["choices"][0]
    assert (choice["finish_reason"], choice["native_finish_reason"]) == (expected, stop_reason)


def test_anthropic_usage_with_cache_tokens() -> None:
    # Prompt caching guide: input_tokens counts only what follows the last cache breakpoint.
    message = {
        "content": [
            {"type": "thinking", "thinking": "Let me think.", "signature": "sig"},
            {"type": "text", "text": "Done."},
        ],
        "stop_reason": "end_turn",
        "usage": {
            "input_tokens": 21,
            "cache_creation_input_tokens": 188086,
            "cache_read_input_tokens": 1200,
            "output_tokens": 393,
        },
    }
    out = ANTHROPIC.parse_response(200, orjson.dumps(message))
    assert out["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Done.",
        "reasoning": "Let me think.",
        "reasoning_details": [{"type": "reasoning.text", "text": "Let me think.",
                               "signature": "sig", "id": None,
                               "format": "anthropic-claude-v1", "index": 0}],
    }
    assert out["usage"] == {
        "prompt_tokens": 21 + 188086 + 1200,
        "completion_tokens": 393,
        "total_tokens": 21 + 188086 + 1200 + 393,
        "prompt_tokens_details": {"cached_tokens": 1200, "cache_write_tokens": 188086},
        # Thinking is inside output_tokens; its share is estimated from its text (13 chars).
        "completion_tokens_details": {"reasoning_tokens": 4},
    }


def test_anthropic_parse_error() -> None:
    # Errors page: the error body shape; 529 overloaded_error.
    body = {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }
    assert ANTHROPIC.parse_error(529, orjson.dumps(body)) == (
        "anthropic: overloaded_error: Overloaded",
        {"type": "overloaded_error", "message": "Overloaded"},
    )
    assert ANTHROPIC.parse_error(502, b"<html>Bad Gateway</html>") == (
        "anthropic: HTTP 502: <html>Bad Gateway</html>",
        "<html>Bad Gateway</html>",
    )


# =============================================================================== Anthropic: streams

# Streaming guide, "Basic streaming request": the documented response, verbatim.
ANTHROPIC_TEXT_STREAM = b"""event: message_start
data: {"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant", "content": [], "model": "claude-opus-4-1-20250805", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}

event: content_block_start
data: {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}

event: content_block_stop
data: {"type": "content_block_stop", "index": 0}

event: message_delta
data: {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence":null}, "usage": {"output_tokens": 15}}

event: message_stop
data: {"type": "message_stop"}

"""

# Streaming guide, "Streaming request with tool use" (text deltas shortened).
ANTHROPIC_TOOL_STREAM = b"""event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-opus-4-1-20250805","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":", let's check:"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"location\\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \\"San"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" Francisc"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"o,"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" CA\\""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":", "}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\\"unit\\": \\"fah"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"renheit\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}
"""

# Streaming guide, "Error events": an overloaded_error mid-stream.
ANTHROPIC_ERROR_STREAM = ANTHROPIC_TEXT_STREAM.split(b"event: content_block_stop")[0] + (
    b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", '
    b'"message": "Overloaded"}}\n\n'
)
ANTHROPIC_TRUNCATED_STREAM = ANTHROPIC_TEXT_STREAM.split(b"event: message_delta")[0]


def tool_delta(index: int, **fields: Any) -> dict[str, Any]:
    return {
        "choices": [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": index, **fields}]},
                "finish_reason": None,
            }
        ]
    }


def test_anthropic_text_stream() -> None:
    chunks, exc = run(ANTHROPIC.stream_decoder(), [ANTHROPIC_TEXT_STREAM])
    assert exc is None
    assert chunks == [
        ROLE,
        content("Hello"),
        content("!"),
        finish("stop", "end_turn"),
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 25,
                "completion_tokens": 15,
                "total_tokens": 40,
                "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            },
        },
    ]


def test_anthropic_tool_stream() -> None:
    chunks, exc = run(ANTHROPIC.stream_decoder(), [ANTHROPIC_TOOL_STREAM])
    assert exc is None
    pieces = ['{"location":', ' "San', " Francisc", "o,", ' CA"', ", ", '"unit": "fah', 'renheit"}']
    assert chunks == [
        ROLE,
        content("Okay"),
        content(", let's check:"),
        tool_delta(
            0,
            id="toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            type="function",
            function={"name": "get_weather", "arguments": ""},
        ),
        *[tool_delta(0, function={"arguments": p}) for p in pieces],
        finish("tool_calls", "tool_use"),
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 472,
                "completion_tokens": 89,
                "total_tokens": 561,
                "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            },
        },
    ]
    assert orjson.loads("".join(pieces)) == {"location": "San Francisco, CA", "unit": "fahrenheit"}


def test_anthropic_stream_tool_index_counts_tool_blocks_only() -> None:
    # Two tool_use blocks at content indexes 1 and 2 are OpenAI tool calls 0 and 1; thinking goes
    # to delta.reasoning and reasoning_details (its signature too); the json_schema tool streams
    # as content.
    events = [
        {
            "type": "message_start",
            "message": {"usage": {"input_tokens": 3, "cache_read_input_tokens": 7}},
        },
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": ""},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "Hmm."},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "Eq"},
        },
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "t_a", "name": "a", "input": {}},
        },
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "t_b", "name": "b", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": "{}"},
        },
        {
            "type": "content_block_start",
            "index": 3,
            "content_block": {
                "type": "tool_use",
                "id": "t_j",
                "name": "json_schema__x",
                "input": {},
            },
        },
        {
            "type": "content_block_delta",
            "index": 3,
            "delta": {"type": "input_json_delta", "partial_json": '{"k": 1}'},
        },
        {"type": "a_new_event_type", "whatever": [1, 2]},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
    ]
    raw = b"".join(
        b"event: %s\ndata: %s\n\n" % (e["type"].encode(), orjson.dumps(e)) for e in events
    )
    chunks, exc = run(ANTHROPIC.stream_decoder(), [raw])
    assert exc is None
    assert chunks == [
        ROLE,
        {"choices": [{"index": 0, "delta": {"reasoning": "Hmm.", "reasoning_details": [
            {"type": "reasoning.text", "text": "Hmm.", "id": None,
             "format": "anthropic-claude-v1", "index": 0}]}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"reasoning_details": [
            {"type": "reasoning.text", "text": "", "signature": "Eq", "id": None,
             "format": "anthropic-claude-v1", "index": 0}]}, "finish_reason": None}]},
        tool_delta(0, id="t_a", type="function", function={"name": "a", "arguments": ""}),
        tool_delta(1, id="t_b", type="function", function={"name": "b", "arguments": ""}),
        tool_delta(1, function={"arguments": "{}"}),
        content('{"k": 1}'),
        finish("tool_calls", "tool_use"),
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": 9,
                "total_tokens": 19,
                "prompt_tokens_details": {"cached_tokens": 7, "cache_write_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 1},
            },
        },
    ]


def test_anthropic_stream_error_event() -> None:
    chunks, exc = run(ANTHROPIC.stream_decoder(), [ANTHROPIC_ERROR_STREAM])
    # The content that arrived before the error is handed over before the error is raised.
    assert chunks == [ROLE, content("Hello"), content("!")]
    assert isinstance(exc, UpstreamStatusError)
    assert exc.retryable and exc.upstream_status == 529
    assert exc.message == "anthropic: overloaded_error: Overloaded"
    assert exc.raw == {"type": "overloaded_error", "message": "Overloaded"}
    assert exc.provider == ""  # the caller fills it in


def test_anthropic_stream_truncated() -> None:
    chunks, exc = run(ANTHROPIC.stream_decoder(), [ANTHROPIC_TRUNCATED_STREAM])
    assert chunks == [ROLE, content("Hello"), content("!")]
    assert isinstance(exc, UpstreamProtocolError)
    assert "ended early" in exc.message


def test_anthropic_stream_malformed_json() -> None:
    decoder = ANTHROPIC.stream_decoder()
    with pytest.raises(UpstreamProtocolError):
        decoder.feed(b"event: a_new_event_type\ndata: {not json\n\n")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(
        [
            ANTHROPIC_TEXT_STREAM,
            ANTHROPIC_TOOL_STREAM,
            ANTHROPIC_ERROR_STREAM,
            ANTHROPIC_TRUNCATED_STREAM,
            ANTHROPIC_TEXT_STREAM.replace(b"\n", b"\r\n"),
        ]
    ),
    st.lists(st.integers(min_value=0, max_value=6000), max_size=40),
)
def test_anthropic_stream_any_split(raw: bytes, cuts: list[int]) -> None:
    same_outcome(ANTHROPIC, raw, cuts)


# =============================================================================== Gemini: requests


def test_gemini_plain_text() -> None:
    # Text generation guide: {"contents": [{"parts": [{"text": ...}]}]}.
    req = {"messages": [{"role": "user", "content": "Explain how AI works in a few words"}]}
    call = GEMINI.build_request(req, orjson.dumps(req), FLASH, False)
    assert call.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    )
    assert call.headers == {"x-goog-api-key": "g-test", "content-type": "application/json"}
    assert orjson.loads(call.body) == {
        "contents": [{"role": "user", "parts": [{"text": "Explain how AI works in a few words"}]}]
    }
    stream = GEMINI.build_request(req, b"", FLASH._replace(model="models/gemini-2.5-flash"), True)
    assert stream.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash"
        ":streamGenerateContent?alt=sse"
    )


def test_gemini_system_prompt_and_generation_config() -> None:
    # Text generation guide: system_instruction; generationConfig with stopSequences, temperature,
    # topP, topK.
    req = {
        "messages": [
            {"role": "system", "content": "You are a cat."},
            {"role": "developer", "content": "Your name is Neko."},
            {"role": "user", "content": "Hello there"},
        ],
        "stop": ["Title"],
        "temperature": 1.0,
        "top_p": 0.8,
        "top_k": 10,
        "max_tokens": 800,
        "n": 2,
        "seed": 7,
    }
    body = gemini_body(req)
    assert body["systemInstruction"] == {
        "parts": [{"text": "You are a cat.\n\nYour name is Neko."}]
    }
    assert body["contents"] == [{"role": "user", "parts": [{"text": "Hello there"}]}]
    assert body["generationConfig"] == {
        "stopSequences": ["Title"],
        "temperature": 1.0,
        "topP": 0.8,
        "topK": 10,
        "maxOutputTokens": 800,
        "candidateCount": 2,
        "seed": 7,
    }
    assert gemini_body({**req, "stop": "END"})["generationConfig"]["stopSequences"] == ["END"]
    assert "generationConfig" not in gemini_body({"messages": req["messages"]})


def test_gemini_multi_turn_merging() -> None:
    # Text generation guide, multi-turn: roles user and model, alternating.
    req = {
        "messages": [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Great to meet you. What would you like to know?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Ask away."}]},
            {"role": "user", "content": "I have two dogs in my house."},
            {"role": "user", "content": "How many paws are in my house?"},
        ]
    }
    assert gemini_body(req)["contents"] == [
        {"role": "user", "parts": [{"text": "Hello"}]},
        {
            "role": "model",
            "parts": [
                {"text": "Great to meet you. What would you like to know?"},
                {"text": "Ask away."},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"text": "I have two dogs in my house."},
                {"text": "How many paws are in my house?"},
            ],
        },
    ]


def test_gemini_image_input() -> None:
    # Image understanding guide: inline_data {mime_type, data}; file_data {file_uri, mime_type}.
    req = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/cat.png?size=2"},
                    },
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                    {"type": "text", "text": "Caption this image."},
                ],
            }
        ]
    }
    assert gemini_body(req)["contents"][0]["parts"] == [
        {"inline_data": {"mime_type": "image/jpeg", "data": "/9j/4AAQ"}},
        {"file_data": {"file_uri": "https://example.com/cat.png?size=2", "mime_type": "image/png"}},
        {"inline_data": {"mime_type": "audio/wav", "data": "UklGRg=="}},
        {"text": "Caption this image."},
    ]


LIGHT_TOOL = {
    "type": "function",
    "function": {
        "name": "set_light_values",
        "description": "Sets the brightness and color temperature of a light.",
        "parameters": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {
                "brightness": {"type": "integer", "description": "Light level from 0 to 100."},
                "color_temp": {
                    "type": "string",
                    "enum": ["daylight", "cool", "warm"],
                    "description": "Color temperature of the light fixture.",
                },
            },
            "required": ["brightness", "color_temp"],
            "additionalProperties": False,
        },
    },
}


def test_gemini_tool_round_trip_request() -> None:
    # Function calling guide: functionDeclarations; the model's functionCall part; the user's
    # functionResponse part naming the function.
    req = {
        "messages": [
            {"role": "user", "content": "Turn the lights down to a romantic level"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_0",
                        "type": "function",
                        "function": {
                            "name": "set_light_values",
                            "arguments": '{"brightness": 25, "color_temp": "warm"}',
                        },
                    },
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": "{}"},
                        "extra_content": {"google": {"thought_signature": "c2ln"}},
                    },
                ],
            },
            {
                "role": "tool",
                "tool_call_id": "call_0",
                "content": '{"brightness": 25, "colorTemperature": "warm"}',
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "It is 9pm."},
        ],
        "tools": [
            LIGHT_TOOL,
            {
                "type": "function",
                "function": {
                    "name": "get_time",
                    "parameters": {"type": "object", "properties": {}},
                },
            },
        ],
    }
    body = gemini_body(req)
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "set_light_values",
                    "description": "Sets the brightness and color temperature of a light.",
                    "parameters": {
                        "type": "OBJECT",
                        "properties": {
                            "brightness": {
                                "type": "INTEGER",
                                "description": "Light level from 0 to 100.",
                            },
                            "color_temp": {
                                "type": "STRING",
                                "format": "enum",
                                "enum": ["daylight", "cool", "warm"],
                                "description": "Color temperature of the light fixture.",
                            },
                        },
                        "required": ["brightness", "color_temp"],
                    },
                },
                {"name": "get_time"},  # no arguments: no parameters field
            ]
        }
    ]
    assert "toolConfig" not in body
    assert body["contents"][1:] == [
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {
                        "name": "set_light_values",
                        "args": {"brightness": 25, "color_temp": "warm"},
                    },
                    "thoughtSignature": SKIP_SIGNATURE,
                },
                {"functionCall": {"name": "get_time", "args": {}}, "thoughtSignature": "c2ln"},
            ],
        },
        {
            "role": "user",
            "parts": [
                {
                    "functionResponse": {
                        "name": "set_light_values",
                        "response": {"content": {"brightness": 25, "colorTemperature": "warm"}},
                    }
                },
                {"functionResponse": {"name": "get_time", "response": {"content": "It is 9pm."}}},
            ],
        },
    ]
    bad = {"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}
    with pytest.raises(BadRequest):
        gemini_body(bad)
    bad = {
        "messages": [
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
                ],
            }
        ]
    }
    with pytest.raises(BadRequest):
        gemini_body(bad)


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "set_light_values"}},
            {"mode": "ANY", "allowedFunctionNames": ["set_light_values"]},
        ),
    ],
)
def test_gemini_tool_choice(choice: Any, config: dict[str, Any]) -> None:
    req = {
        "messages": [{"role": "user", "content": "x"}],
        "tools": [LIGHT_TOOL],
        "tool_choice": choice,
    }
    assert gemini_body(req)["toolConfig"] == {"functionCallingConfig": config}


def test_gemini_schema_cleaning() -> None:
    # Schema reference: an OpenAPI 3.0 subset. What pydantic emits for
    # `class Recipe(BaseModel): name: str; note: str | None; steps: list[Step]` must fit it.
    schema = {
        "$defs": {
            "Step": {
                "type": "object",
                "title": "Step",
                "additionalProperties": False,
                "properties": {
                    "text": {"type": "string", "format": "uri"},
                    "minutes": {"type": "number", "exclusiveMinimum": 0},
                },
                "required": ["text", "ghost"],
            },
        },
        "type": "object",
        "title": "Recipe",
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            "steps": {"type": "array", "items": {"$ref": "#/$defs/Step"}, "maxItems": 20},
            "kind": {"const": "recipe"},
            "when": {"type": ["string", "null"], "format": "date-time"},
            "size": {"enum": [1, 2, 3]},
        },
        "required": ["name", "steps"],
    }
    assert clean_schema(schema) == {
        "type": "OBJECT",
        "title": "Recipe",
        "properties": {
            "name": {"type": "STRING", "minLength": 1},
            "note": {"type": "STRING", "nullable": True},
            "steps": {
                "type": "ARRAY",
                "maxItems": 20,
                "items": {
                    "type": "OBJECT",
                    "title": "Step",
                    "properties": {"text": {"type": "STRING"}, "minutes": {"type": "NUMBER"}},
                    "required": ["text"],
                },
            },
            "kind": {"type": "STRING", "format": "enum", "enum": ["recipe"]},
            "when": {"type": "STRING", "format": "date-time", "nullable": True},
            "size": {},
        },
        "required": ["name", "steps"],
    }
    recursive = {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
            }
        },
        "$ref": "#/$defs/Node",
    }
    with pytest.raises(BadRequest):
        clean_schema(recursive)
    with pytest.raises(BadRequest):
        clean_schema({"$ref": "https://example.com/schema.json"})
    # Exponential $ref fan-out is bounded.
    defs = {
        f"D{i}": {
            "type": "object",
            "properties": {"a": {"$ref": f"#/$defs/D{i + 1}"}, "b": {"$ref": f"#/$defs/D{i + 1}"}},
        }
        for i in range(30)
    }
    defs["D30"] = {"type": "string"}
    with pytest.raises(BadRequest):
        clean_schema({"$defs": defs, "$ref": "#/$defs/D0"})


def test_gemini_json_schema_request() -> None:
    # Structured output guide: responseMimeType application/json + responseSchema.
    req = {
        "messages": [{"role": "user", "content": "Extract: John is 30."}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": SCHEMA},
        },
    }
    assert gemini_body(req)["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseSchema": {
            "type": "OBJECT",
            "properties": {"name": {"type": "STRING"}, "age": {"type": "INTEGER"}},
            "required": ["name", "age"],
        },
    }
    req["response_format"] = {"type": "json_object"}
    assert gemini_body(req)["generationConfig"] == {"responseMimeType": "application/json"}


# =============================================================================== Gemini: responses

GEMINI_TEXT_RESPONSE = {
    "candidates": [
        {
            "content": {"parts": [{"text": "AI learns patterns from data."}], "role": "model"},
            "finishReason": "STOP",
            "avgLogprobs": -0.19,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 8,
        "candidatesTokenCount": 7,
        "totalTokenCount": 1055,
        "thoughtsTokenCount": 1040,
        "cachedContentTokenCount": 4,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}],
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "Il0taoSYJ5Cez7",
}


def test_gemini_text_response() -> None:
    assert GEMINI.parse_response(200, orjson.dumps(GEMINI_TEXT_RESPONSE)) == {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "AI learns patterns from data."},
                "finish_reason": "stop",
                "native_finish_reason": "STOP",
            }
        ],
        "usage": {
            "prompt_tokens": 8,
            "completion_tokens": 1047,
            "total_tokens": 1055,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 1040},
        },
    }


def test_gemini_function_call_response() -> None:
    # Function calling guide: the model's reply is a functionCall part; finishReason is STOP.
    response = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {
                            "functionCall": {
                                "name": "set_light_values",
                                "args": {"color_temp": "warm", "brightness": 25},
                            },
                            "thoughtSignature": "CiQB0e2Kb",
                        },
                        {"functionCall": {"name": "get_time", "args": {}}},
                    ],
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 70,
            "candidatesTokenCount": 20,
            "totalTokenCount": 90,
        },
    }
    choice = GEMINI.parse_response(200, orjson.dumps(response))["choices"][0]
    assert (choice["finish_reason"], choice["native_finish_reason"]) == ("tool_calls", "STOP")
    assert choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert [c["id"] for c in calls] == ["call_0", "call_1"]
    assert calls[0]["type"] == "function"
    assert calls[0]["function"]["name"] == "set_light_values"
    assert orjson.loads(calls[0]["function"]["arguments"]) == {
        "color_temp": "warm",
        "brightness": 25,
    }
    assert calls[0]["extra_content"] == {"google": {"thought_signature": "CiQB0e2Kb"}}
    assert "extra_content" not in calls[1]
    # Deterministic per response: the same body gives the same ids.
    again = GEMINI.parse_response(200, orjson.dumps(response))["choices"][0]["message"][
        "tool_calls"
    ]
    assert again == calls


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("OTHER", "stop"),
        ("LANGUAGE", "stop"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("FINISH_REASON_UNSPECIFIED", "stop"),
    ],
)
def test_gemini_finish_reasons(reason: str, expected: str) -> None:
    response = {
        "candidates": [{"finishReason": reason, "index": 0}]
    }  # a blocked candidate has no content
    choice = GEMINI.parse_response(200, orjson.dumps(response))["choices"][0]
    assert (choice["finish_reason"], choice["native_finish_reason"]) == (expected, reason)
    assert choice["message"] == {"role": "assistant", "content": None}


def test_gemini_blocked_prompt_and_candidates() -> None:
    # PromptFeedback: "If set, the prompt was blocked and no candidates are returned".
    blocked = {
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": {"promptTokenCount": 12559, "totalTokenCount": 12559},
    }
    out = GEMINI.parse_response(200, orjson.dumps(blocked))
    assert out["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": None},
            "finish_reason": "content_filter",
            "native_finish_reason": "PROHIBITED_CONTENT",
        }
    ]
    assert out["usage"]["prompt_tokens"] == 12559
    # candidateCount 2: two choices, each with its own index; thought parts are reasoning.
    two = {
        "candidates": [
            {
                "content": {"parts": [{"text": "plan", "thought": True}, {"text": "A"}]},
                "finishReason": "STOP",
            },
            {"content": {"parts": [{"text": "B"}]}, "finishReason": "MAX_TOKENS", "index": 1},
        ]
    }
    choices = GEMINI.parse_response(200, orjson.dumps(two))["choices"]
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in choices] == [
        (0, "A", "stop"),
        (1, "B", "length"),
    ]
    assert choices[0]["message"]["reasoning"] == "plan"


def test_gemini_parse_error() -> None:
    body = {
        "error": {
            "code": 429,
            "message": "Resource has been exhausted (e.g. check quota).",
            "status": "RESOURCE_EXHAUSTED",
        }
    }
    assert GEMINI.parse_error(429, orjson.dumps(body)) == (
        "gemini: RESOURCE_EXHAUSTED: Resource has been exhausted (e.g. check quota).",
        body["error"],
    )
    assert GEMINI.parse_error(400, orjson.dumps([body]))[0].startswith("gemini: RESOURCE_EXHAUSTED")
    assert GEMINI.parse_error(503, b"") == ("gemini: HTTP 503: empty body", None)


# =============================================================================== Gemini: streams


def sse(*events: dict[str, Any]) -> bytes:
    # streamGenerateContent?alt=sse: one `data:` line per GenerateContentResponse, CRLF framing.
    return b"".join(b"data: " + orjson.dumps(e) + b"\r\n\r\n" for e in events)


GEMINI_TEXT_STREAM = sse(
    {
        "candidates": [{"content": {"parts": [{"text": "The"}], "role": "model"}, "index": 0}],
        "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4},
        "modelVersion": "gemini-2.5-flash",
    },
    {
        "candidates": [
            {"content": {"parts": [{"text": " quick brown fox"}], "role": "model"}, "index": 0}
        ],
        "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 4, "totalTokenCount": 8},
    },
    {
        "candidates": [
            {
                "content": {"parts": [{"text": " jumps."}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 8, "totalTokenCount": 12},
    },
)

GEMINI_TOOL_STREAM = sse(
    {
        "candidates": [
            {
                "content": {
                    "parts": [
                        {
                            "functionCall": {
                                "name": "set_light_values",
                                "args": {"brightness": 25, "color_temp": "warm"},
                            },
                            "thoughtSignature": "CiQB",
                        },
                        {"functionCall": {"name": "get_time", "args": {}}},
                    ],
                    "role": "model",
                },
                "index": 0,
            }
        ]
    },
    {
        "candidates": [
            {
                "content": {"parts": [{"text": ""}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 70,
            "candidatesTokenCount": 20,
            "thoughtsTokenCount": 5,
        },
    },
)

GEMINI_BLOCKED_STREAM = sse(
    {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 9}}
)
GEMINI_ERROR_STREAM = (
    GEMINI_TEXT_STREAM.split(b"\r\n\r\n")[0]
    + b"\r\n\r\n"
    + sse({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}})
)
GEMINI_TRUNCATED_STREAM = GEMINI_TEXT_STREAM.rsplit(b"data: ", 1)[0]


def test_gemini_text_stream() -> None:
    chunks, exc = run(GEMINI.stream_decoder(), [GEMINI_TEXT_STREAM])
    assert exc is None
    assert chunks == [
        ROLE,
        content("The"),
        content(" quick brown fox"),
        content(" jumps."),
        finish("stop", "STOP"),
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 4,
                "completion_tokens": 8,
                "total_tokens": 12,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        },
    ]


def test_gemini_tool_stream() -> None:
    chunks, exc = run(GEMINI.stream_decoder(), [GEMINI_TOOL_STREAM])
    assert exc is None
    args = orjson.dumps({"brightness": 25, "color_temp": "warm"}).decode()
    assert chunks == [
        ROLE,
        {
            "choices": [
                {
                    "index": 0,
                    "finish_reason": None,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_0",
                                "type": "function",
                                "function": {"name": "set_light_values", "arguments": args},
                                "extra_content": {"google": {"thought_signature": "CiQB"}},
                            },
                            {
                                "index": 1,
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "get_time", "arguments": "{}"},
                            },
                        ],
                        # OpenRouter's form of the signature: an encrypted item, by call id.
                        "reasoning_details": [
                            {"type": "reasoning.encrypted", "data": "CiQB", "id": "call_0",
                             "format": "google-gemini-v1", "index": 0},
                        ],
                    },
                }
            ]
        },
        finish("tool_calls", "STOP"),
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 70,
                "completion_tokens": 25,
                "total_tokens": 95,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 5},
            },
        },
    ]


def test_gemini_blocked_stream() -> None:
    chunks, exc = run(GEMINI.stream_decoder(), [GEMINI_BLOCKED_STREAM])
    assert exc is None
    assert chunks[:2] == [ROLE, finish("content_filter", "SAFETY")]
    assert chunks[2]["usage"]["prompt_tokens"] == 9


def test_gemini_stream_error_and_truncation() -> None:
    chunks, exc = run(GEMINI.stream_decoder(), [GEMINI_ERROR_STREAM])
    assert chunks == [ROLE, content("The")]
    assert isinstance(exc, UpstreamStatusError)
    assert exc.message == "gemini: UNAVAILABLE: The model is overloaded."
    assert exc.upstream_status == 503 and exc.retryable
    chunks, exc = run(GEMINI.stream_decoder(), [GEMINI_TRUNCATED_STREAM])
    assert chunks == [ROLE, content("The"), content(" quick brown fox")]
    assert isinstance(exc, UpstreamProtocolError)
    # Cut inside an event's JSON: also an error, not a silent end; a whole last event that only
    # lacks its blank line still counts.
    chunks, exc = run(GEMINI.stream_decoder(), [GEMINI_TEXT_STREAM[:-10]])
    assert isinstance(exc, UpstreamProtocolError)
    assert run(GEMINI.stream_decoder(), [GEMINI_TEXT_STREAM[:-4]]) == run(
        GEMINI.stream_decoder(), [GEMINI_TEXT_STREAM]
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(
        [
            GEMINI_TEXT_STREAM,
            GEMINI_TOOL_STREAM,
            GEMINI_BLOCKED_STREAM,
            GEMINI_ERROR_STREAM,
            GEMINI_TRUNCATED_STREAM,
            GEMINI_TEXT_STREAM.replace(b"\r\n", b"\n"),
        ]
    ),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=40),
)
def test_gemini_stream_any_split(raw: bytes, cuts: list[int]) -> None:
    same_outcome(GEMINI, raw, cuts)


# =============================================================================== garbage in

# Field names and values the decoders look at, so random JSON reaches past the first check.
NAMES = st.sampled_from(
    [
        "type",
        "index",
        "content_block",
        "delta",
        "text",
        "partial_json",
        "thinking",
        "message",
        "usage",
        "stop_reason",
        "error",
        "name",
        "id",
        "input",
        "input_tokens",
        "output_tokens",
        "content",
        "message_start",
        "content_block_start",
        "content_block_delta",
        "message_delta",
        "message_stop",
        "text_delta",
        "input_json_delta",
        "thinking_delta",
        "tool_use",
        "json_schema__x",
        "candidates",
        "parts",
        "functionCall",
        "args",
        "finishReason",
        "usageMetadata",
        "promptFeedback",
        "blockReason",
        "thought",
        "thoughtSignature",
        "promptTokenCount",
        "STOP",
        "code",
        "status",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | NAMES
    | st.text(max_size=8)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(NAMES | st.text(max_size=4), inner, max_size=5)
    ),
    max_leaves=25,
)


def sse_of(values: list[Any], names: list[str]) -> bytes:
    return b"".join(
        b"event: %s\ndata: %s\n\n" % (name.encode(), orjson.dumps(value))
        for value, name in zip(values, names, strict=False)
    )


def only_upstream_errors(call: Any) -> None:
    try:
        call()
    except UpstreamError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | JSON.map(orjson.dumps))
def test_garbage_responses_raise_only_upstream_errors(data: bytes) -> None:
    for adapter in (ANTHROPIC, GEMINI):
        only_upstream_errors(lambda a=adapter: a.parse_response(200, data))
        message, _raw = adapter.parse_error(500, data)  # never raises
        assert isinstance(message, str)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.lists(st.binary(max_size=80), max_size=6),
        st.builds(
            lambda values, names, cut: [sse_of(values, names)[:cut], sse_of(values, names)[cut:]],
            st.lists(JSON, min_size=1, max_size=6),
            st.lists(NAMES, min_size=6, max_size=6),
            st.integers(min_value=0, max_value=400),
        ),
    )
)
def test_garbage_streams_raise_only_upstream_errors(pieces: list[bytes]) -> None:
    for adapter in (ANTHROPIC, GEMINI):
        decoder = adapter.stream_decoder()
        only_upstream_errors(lambda d=decoder: run(d, pieces)[1] and None)
        decoder = adapter.stream_decoder()
        for piece in pieces:  # and straight, without the helper's catch
            try:
                decoder.feed(piece)
            except UpstreamError:
                break


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "messages",
                "tools",
                "tool_choice",
                "response_format",
                "stop",
                "max_tokens",
                "temperature",
                "parallel_tool_calls",
                "user",
                "n",
            ]
        ),
        JSON,
    ),
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["system", "user", "assistant", "tool", "developer", "x"])},
            optional={
                "content": JSON
                | st.lists(
                    st.fixed_dictionaries(
                        {
                            "type": st.sampled_from(
                                ["text", "image_url", "file", "input_audio", "refusal"]
                            )
                        },
                        optional={
                            "text": JSON,
                            "image_url": JSON,
                            "file": JSON,
                            "input_audio": JSON,
                        },
                    )
                ),
                "tool_calls": JSON,
                "tool_call_id": JSON,
            },
        ),
        max_size=5,
    ),
)
def test_garbage_requests_raise_only_bad_request(req: dict[str, Any], messages: list[Any]) -> None:
    req.setdefault("messages", messages)
    for adapter, target in ((ANTHROPIC, CLAUDE), (GEMINI, FLASH)):
        try:
            adapter.build_request(req, b"", target, False)
        except EdgeproxyError as exc:
            assert isinstance(exc, BadRequest) and exc.status == 400
