"""The simulated providers, served on loopback and checked on the wire with aiohttp (and the
openai SDK): response shapes field by field, streams, validation, tools, every fault, run-time
configuration and cancellation accounting."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import os
import re
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from edgeproxy.simulate import SIM_KEY, SimOptions, build_app, start

ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "unit": {"type": "string", "enum": ["c", "f"]},
        },
        "required": ["city", "days"],
    },
}
OTHER_TOOL = {
    "name": "lookup",
    "parameters": {
        "type": "object",
        "properties": {"q": {"type": "string"}, "exact": {"type": "boolean"}},
        "required": ["q", "exact"],
    },
}
PROTOCOLS = ["openai", "anthropic", "gemini"]


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def simulator():
    """Start simulators on free loopback ports: `base = await simulator("openai", seed=1)`."""
    runners: list[web.AppRunner] = []

    async def make(protocol: str, **opts: Any) -> str:
        runner = await start(protocol, "127.0.0.1", 0, SimOptions(**opts))
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield make
    for runner in runners:
        await runner.cleanup()


def sse(text: str) -> list[dict[str, Any]]:
    """Parse an SSE body into [{event, data}] (data JSON-decoded unless it is [DONE])."""
    events = []
    for block in re.split(r"\r?\n\r?\n", text.strip()):
        event: dict[str, Any] = {"event": None, "data": None}
        for line in block.splitlines():
            if line.startswith("event:"):
                event["event"] = line[6:].strip()
            elif line.startswith("data:"):
                raw = line[5:].strip()
                event["data"] = raw if raw == "[DONE]" else json.loads(raw)
        events.append(event)
    return events


def request_for(protocol: str, base: str, *, stream: bool = False, text: str = "hello there"):
    """(url, headers, body) of a minimal valid generation request in `protocol`."""
    if protocol == "openai":
        body = {"model": "gpt-x", "messages": [{"role": "user", "content": text}]}
        return f"{base}/v1/chat/completions", {}, {**body, "stream": stream}
    if protocol == "anthropic":
        body = {
            "model": "claude-x",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": text}],
        }
        return f"{base}/v1/messages", ANTHROPIC_HEADERS, {**body, "stream": stream}
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    return f"{base}/v1beta/models/gemini-x:{method}", {}, body


def content_chunks(protocol: str, events: list[dict[str, Any]]) -> list[str]:
    """The text pieces of a parsed stream, in the protocol's own framing."""
    out = []
    for e in events:
        data = e["data"]
        if protocol == "openai" and isinstance(data, dict) and data["choices"]:
            piece = data["choices"][0]["delta"].get("content")
            if piece:
                out.append(piece)
        elif protocol == "anthropic" and e["event"] == "content_block_delta":
            out.append(data["delta"]["text"])
        elif protocol == "gemini" and isinstance(data, dict):
            out.append(data["candidates"][0]["content"]["parts"][0]["text"])
    return out


async def read_until_broken(resp: aiohttp.ClientResponse) -> tuple[str, bool]:
    """Read a body line by line; returns (what arrived, whether the connection broke)."""
    got = []
    try:
        async for line in resp.content:
            got.append(line.decode())
    except aiohttp.ClientPayloadError:
        return "".join(got), True
    return "".join(got), False


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        return await resp.json()


async def post_json(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with session.post(url, json=body) as resp:
        return resp.status, await resp.json()


async def wait_stats(session: aiohttp.ClientSession, base: str, **want: int) -> dict[str, int]:
    stats: dict[str, int] = {}
    for _ in range(150):
        stats = await get_json(session, f"{base}/_sim/stats")
        if all(stats[k] == v for k, v in want.items()):
            return stats
        await asyncio.sleep(0.02)
    raise AssertionError(f"stats never became {want}: {stats}")


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


# --- OpenAI ---------------------------------------------------------------------------------


async def test_openai_chat_completion_shape(simulator, session):
    base = await simulator("openai", seed=1)
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello there friend"}]},
        ],
    }
    async with session.post(f"{base}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        data = await resp.json()
    assert data["id"].startswith("chatcmpl-")
    assert data["object"] == "chat.completion"
    assert isinstance(data["created"], int) and abs(data["created"] - time.time()) < 60
    assert data["model"] == "gpt-4o-mini"
    [choice] = data["choices"]
    assert choice["index"] == 0
    assert choice["logprobs"] is None
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    assert content.startswith("Echo: hello there friend")
    assert "tool_calls" not in choice["message"]
    usage = data["usage"]
    assert usage["prompt_tokens"] == 5  # words over every message
    assert usage["completion_tokens"] == len(content.split()) == 16
    assert usage["total_tokens"] == 21
    # Same request, same text; the unversioned path serves the same thing.
    async with session.post(f"{base}/chat/completions", json=body) as resp:
        again = await resp.json()
    assert again["choices"][0]["message"]["content"] == content


async def test_openai_max_tokens_caps_with_length(simulator, session):
    base = await simulator("openai")
    for name in ("max_tokens", "max_completion_tokens"):
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], name: 3}
        status, data = await post_json(session, f"{base}/v1/chat/completions", body)
        assert status == 200
        assert data["choices"][0]["finish_reason"] == "length"
        assert len(data["choices"][0]["message"]["content"].split()) == 3
        assert data["usage"]["completion_tokens"] == 3


async def test_openai_stop_sequence_and_fixed_reply(simulator, session):
    base = await simulator("openai", reply="one two three four")
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["three"]}
    _, data = await post_json(session, f"{base}/v1/chat/completions", body)
    assert data["choices"][0]["message"]["content"] == "one two "
    assert data["choices"][0]["finish_reason"] == "stop"


async def test_openai_stream_without_usage(simulator, session):
    base = await simulator("openai")
    url, _, body = request_for("openai", base, stream=True)
    async with session.post(url, json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Cache-Control"] == "no-cache"
        events = sse(await resp.text())
    assert events[-1]["data"] == "[DONE]"
    chunks = [e["data"] for e in events[:-1]]
    assert all(e["event"] is None for e in events)
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    for c in chunks:
        assert c["object"] == "chat.completion.chunk"
        assert c["model"] == "gpt-x"
        assert "usage" not in c
        assert len(c["choices"]) == 1 and c["choices"][0]["index"] == 0
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    middle = chunks[1:-1]
    assert len(middle) == 16  # one chunk per token
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    streamed = "".join(content_chunks("openai", events))
    _, whole = await post_json(session, url, {**body, "stream": False})
    assert streamed == whole["choices"][0]["message"]["content"]


async def test_openai_stream_include_usage(simulator, session):
    base = await simulator("openai")
    url, _, body = request_for("openai", base, stream=True)
    body["stream_options"] = {"include_usage": True}
    body["max_tokens"] = 4
    async with session.post(url, json=body) as resp:
        events = sse(await resp.text())
    assert events[-1]["data"] == "[DONE]"
    *chunks, usage_chunk = [e["data"] for e in events[:-1]]
    # "All other chunks will also include a usage field, but with a null value."
    assert all("usage" in c and c["usage"] is None for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == 2
    assert usage_chunk["usage"]["completion_tokens"] == 4
    assert usage_chunk["usage"]["total_tokens"] == 6


@pytest.mark.parametrize(
    ("body", "param", "code", "fragment"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, None, None, "model parameter"),
        ({"model": "m"}, "messages", "missing_required_parameter", "'messages'"),
        ({"model": "m", "messages": []}, "messages", "empty_array", "empty array"),
        (
            {"model": "m", "messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role",
            "invalid_value",
            "'robot'",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"},
            "max_tokens",
            "invalid_type",
            "expected an integer",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1},
            "max_tokens",
            "integer_below_min_value",
            ">= 1",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2.5},
            "max_tokens",
            "invalid_type",
            "expected an integer",
        ),
    ],
)
async def test_openai_validation_errors(simulator, session, body, param, code, fragment):
    base = await simulator("openai")
    status, data = await post_json(session, f"{base}/v1/chat/completions", body)
    assert status == 400
    assert set(data["error"]) == {"message", "type", "param", "code"}
    assert data["error"]["type"] == "invalid_request_error"
    assert data["error"]["param"] == param
    assert data["error"]["code"] == code
    assert fragment in data["error"]["message"]


async def test_openai_invalid_json_body(simulator, session):
    base = await simulator("openai")
    async with session.post(f"{base}/v1/chat/completions", data=b"{nope") as resp:
        assert resp.status == 400
        assert "parse the JSON body" in (await resp.json())["error"]["message"]
    requests = await get_json(session, f"{base}/_sim/requests")
    assert requests[-1]["body"] == "{nope"  # raw text when not JSON


async def test_openai_api_key(simulator, session):
    base = await simulator("openai", api_key="sk-right")
    url, _, body = request_for("openai", base)
    async with session.post(url, json=body) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
    async with session.post(url, json=body, headers={"Authorization": "Bearer sk-wrong-key"}) as r:
        assert r.status == 401
        err = (await r.json())["error"]
        assert err["code"] == "invalid_api_key" and "sk-wrong-key" not in err["message"]
    async with session.post(url, json=body, headers={"Authorization": "Bearer sk-right"}) as r:
        assert r.status == 200


async def test_openai_tool_call(simulator, session):
    base = await simulator("openai")
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "What's the weather in Paris?"}],
        "tools": [{"type": "function", "function": WEATHER_TOOL}],
    }
    _, data = await post_json(session, f"{base}/v1/chat/completions", body)
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "test", "days": 1}

    async with session.post(f"{base}/v1/chat/completions", json={**body, "stream": True}) as r:
        events = sse(await r.text())
    deltas = [e["data"]["choices"][0] for e in events[:-1]]
    first = deltas[0]["delta"]
    assert first["role"] == "assistant"
    [start_call] = first["tool_calls"]
    assert start_call["index"] == 0 and start_call["id"].startswith("call_")
    assert start_call["type"] == "function"
    assert start_call["function"] == {"name": "get_weather", "arguments": ""}
    pieces = [d["delta"]["tool_calls"][0]["function"]["arguments"] for d in deltas[1:-1]]
    assert len(pieces) >= 2
    assert all(set(d["delta"]["tool_calls"][0]) == {"index", "function"} for d in deltas[1:-1])
    assert json.loads("".join(pieces)) == {"city": "test", "days": 1}
    assert deltas[-1]["finish_reason"] == "tool_calls"


async def test_openai_tool_choice_and_tool_result(simulator, session):
    base = await simulator("openai")
    url = f"{base}/v1/chat/completions"
    tools = [
        {"type": "function", "function": WEATHER_TOOL},
        {"type": "function", "function": OTHER_TOOL},
    ]
    plain = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools}
    _, data = await post_json(session, url, plain)
    assert data["choices"][0]["finish_reason"] == "stop"  # no trigger word
    _, data = await post_json(session, url, {**plain, "tool_choice": "required"})
    assert data["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    named = {"type": "function", "function": {"name": "lookup"}}
    _, data = await post_json(session, url, {**plain, "tool_choice": named})
    call = data["choices"][0]["message"]["tool_calls"][0]["function"]
    assert call["name"] == "lookup"
    assert json.loads(call["arguments"]) == {"q": "test", "exact": True}
    weather = {**plain, "messages": [{"role": "user", "content": "weather?"}]}
    _, data = await post_json(session, url, {**weather, "tool_choice": "none"})
    assert data["choices"][0]["finish_reason"] == "stop"
    follow_up = {
        **plain,
        "messages": [
            {"role": "user", "content": "weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny and 21C"},
        ],
    }
    _, data = await post_json(session, url, follow_up)
    assert data["choices"][0]["finish_reason"] == "stop"
    assert "sunny and 21C" in data["choices"][0]["message"]["content"]


async def test_openai_response_format(simulator, session):
    base = await simulator("openai")
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    }
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "a person"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "p", "schema": schema, "strict": True},
        },
    }
    _, data = await post_json(session, f"{base}/v1/chat/completions", body)
    assert json.loads(data["choices"][0]["message"]["content"]) == {
        "name": "test",
        "age": 1,
        "tags": ["test"],
    }
    body["response_format"] = {"type": "json_object"}
    _, data = await post_json(session, f"{base}/v1/chat/completions", body)
    assert json.loads(data["choices"][0]["message"]["content"])["reply"].startswith("Echo:")


async def test_openai_legacy_completions_and_models(simulator, session):
    base = await simulator("openai", models=["a/b", "c"])
    body = {"model": "davinci", "prompt": "Say this is a test", "max_tokens": 5}
    status, data = await post_json(session, f"{base}/v1/completions", body)
    assert status == 200
    assert data["object"] == "text_completion" and data["id"].startswith("cmpl-")
    [choice] = data["choices"]
    assert choice["text"].startswith("Echo: Say") and choice["finish_reason"] == "length"
    assert choice["logprobs"] is None and choice["index"] == 0
    assert data["usage"] == {**data["usage"], "prompt_tokens": 5, "completion_tokens": 5}
    async with session.post(f"{base}/v1/completions", json={**body, "stream": True}) as resp:
        events = sse(await resp.text())
    assert events[-1]["data"] == "[DONE]"
    texts = [e["data"]["choices"][0]["text"] for e in events[:-1]]
    assert "".join(texts) == choice["text"]
    assert events[-2]["data"]["choices"][0]["finish_reason"] == "length"
    status, _ = await post_json(session, f"{base}/v1/completions", {"model": "m"})
    assert status == 400
    models = await get_json(session, f"{base}/v1/models")
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["a/b", "c"]
    assert all(m["object"] == "model" for m in models["data"])


async def test_openai_sdk(simulator):
    openai = pytest.importorskip("openai")
    base = await simulator("openai", api_key="sk-sdk")
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-sdk", max_retries=0) as client:
        completion = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello sdk"}]
        )
        assert completion.choices[0].message.content.startswith("Echo: hello sdk")
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage.total_tokens == 2 + 16
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hello sdk"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage, finish = [], None, None
        async for chunk in stream:
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
            else:
                usage = chunk.usage
        assert "".join(text) == completion.choices[0].message.content
        assert finish == "stop" and usage.completion_tokens == 16
        with pytest.raises(openai.AuthenticationError):
            await client.with_options(api_key="sk-bad").chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}]
            )


# --- OpenAI embeddings ----------------------------------------------------------------------


def _unpack(b64: str) -> list[float]:
    raw = base64.b64decode(b64)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


async def test_openai_embeddings_shape(simulator, session):
    base = await simulator("openai")
    url = f"{base}/v1/embeddings"
    body = {"model": "text-embedding-3-small", "input": ["the quick fox", "a dog"]}
    status, data = await post_json(session, url, body)
    assert status == 200
    assert set(data) == {"object", "data", "model", "usage"}
    assert data["object"] == "list" and data["model"] == "text-embedding-3-small"
    assert data["usage"] == {"prompt_tokens": 3 + 2, "total_tokens": 3 + 2}
    first, second = data["data"]
    assert [(e["object"], e["index"]) for e in data["data"]] == [("embedding", 0), ("embedding", 1)]
    assert len(first["embedding"]) == len(second["embedding"]) == 1536
    assert math.isclose(math.fsum(v * v for v in first["embedding"]), 1.0, rel_tol=1e-5)
    assert first["embedding"] != second["embedding"]
    # Deterministic: the same input gives the same vector, alone or in a list.
    _, again = await post_json(session, url, {**body, "input": "the quick fox"})
    assert again["data"][0]["embedding"] == first["embedding"]
    _, large = await post_json(session, url, {"model": "text-embedding-3-large", "input": "x"})
    assert len(large["data"][0]["embedding"]) == 3072
    _, tokens = await post_json(session, url, {**body, "input": [[1, 2, 3], [4, 5]]})
    assert len(tokens["data"]) == 2 and tokens["usage"]["prompt_tokens"] == 5


async def test_openai_embeddings_base64_and_dimensions(simulator, session):
    base = await simulator("openai")
    url = f"{base}/v1/embeddings"
    body = {"model": "text-embedding-3-small", "input": "hello there"}
    _, floats = await post_json(session, url, body)
    _, b64 = await post_json(session, url, {**body, "encoding_format": "base64"})
    assert _unpack(b64["data"][0]["embedding"]) == floats["data"][0]["embedding"]
    _, short = await post_json(session, url, {**body, "dimensions": 256})
    vector = short["data"][0]["embedding"]
    assert len(vector) == 256
    assert math.isclose(math.fsum(v * v for v in vector), 1.0, rel_tol=1e-5)
    # A shortened text-embedding-3 vector is the full one's prefix, renormalised.
    full = floats["data"][0]["embedding"][:256]
    scale = math.sqrt(math.fsum(v * v for v in full))
    assert all(math.isclose(a, b / scale, rel_tol=1e-4, abs_tol=1e-6)
               for a, b in zip(vector, full, strict=True))


@pytest.mark.parametrize(
    ("patch", "param", "code", "fragment"),
    [
        ({"model": None}, None, None, "model parameter"),
        ({"input": None}, "input", "missing_required_parameter", "'input'"),
        ({"input": ""}, None, None, "'$.input' is invalid"),
        ({"input": []}, None, None, "'$.input' is invalid"),
        ({"input": ["a", ""]}, None, None, "'$.input' is invalid"),
        ({"input": ["a"] * 2049}, None, None, "'$.input' is invalid"),
        ({"input": "w " * 8193}, None, None, "maximum context length is 8192 tokens"),
        ({"dimensions": 0}, "dimensions", "integer_below_min_value", ">= 1"),
        ({"dimensions": "8"}, "dimensions", "invalid_type", "expected an integer"),
        ({"dimensions": 2000}, "dimensions", "integer_above_max_value", "<= 1536"),
        ({"model": "text-embedding-ada-002", "dimensions": 8}, None, None, "dimensions"),
        ({"encoding_format": "hex"}, "encoding_format", "invalid_value", "'hex'"),
    ],
)
async def test_openai_embeddings_validation(simulator, session, patch, param, code, fragment):
    base = await simulator("openai")
    body = {"model": "text-embedding-3-small", "input": "x", **patch}
    body = {k: v for k, v in body.items() if v is not None}
    status, data = await post_json(session, f"{base}/v1/embeddings", body)
    assert status == 400
    assert set(data["error"]) == {"message", "type", "param", "code"}
    assert data["error"]["type"] == "invalid_request_error"
    assert (data["error"]["param"], data["error"]["code"]) == (param, code)
    assert fragment in data["error"]["message"]


async def test_openai_embeddings_faults(simulator, session):
    base = await simulator("openai", error_rate=1.0, seed=3)
    body = {"model": "text-embedding-3-small", "input": "x"}
    status, data = await post_json(session, f"{base}/v1/embeddings", body)
    assert status == 500 and data["error"]["type"] == "server_error"
    await post_json(session, f"{base}/_sim/config",
                    {"error_rate": 0, "fault": "status", "fault_status": 429, "retry_after": 4})
    async with session.post(f"{base}/embeddings", json=body) as resp:
        assert resp.status == 429 and resp.headers["Retry-After"] == "4"
        assert (await resp.json())["error"]["code"] == "rate_limit_exceeded"
    await post_json(session, f"{base}/_sim/config", {"fault": "drop"})
    with pytest.raises(aiohttp.ClientPayloadError):  # half the JSON, then the connection closes
        async with session.post(f"{base}/v1/embeddings", json=body) as resp:
            assert resp.status == 200
            await resp.read()
    await post_json(session, f"{base}/_sim/config", {"fault": "", "api_key": "sk-right"})
    status, data = await post_json(session, f"{base}/v1/embeddings", body)
    assert status == 401 and data["error"]["type"] == "invalid_request_error"
    stats = await get_json(session, f"{base}/_sim/stats")
    assert stats["errors_injected"] == 3 and stats["requests"] == 4


async def test_openai_embeddings_sdk(simulator):
    openai = pytest.importorskip("openai")
    base = await simulator("openai")
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk", max_retries=0) as client:
        # The SDK asks for base64 unless told otherwise, and decodes it.
        default = await client.embeddings.create(model="text-embedding-3-small",
                                                 input=["one", "two three"])
        floats = await client.embeddings.create(model="text-embedding-3-small",
                                                input=["one", "two three"],
                                                encoding_format="float", dimensions=64)
    assert [len(e.embedding) for e in default.data] == [1536, 1536]
    assert default.usage.prompt_tokens == default.usage.total_tokens == 3
    assert [len(e.embedding) for e in floats.data] == [64, 64]
    assert floats.data[1].index == 1


# --- Anthropic ------------------------------------------------------------------------------


async def test_anthropic_headers_required(simulator, session):
    base = await simulator("anthropic", api_key="sk-ant-test")
    url, headers, body = request_for("anthropic", base)
    cases = [
        ({"anthropic-version": "2023-06-01"}, 401, "authentication_error"),
        ({"x-api-key": "sk-ant-test"}, 400, "invalid_request_error"),
        ({"x-api-key": "wrong", "anthropic-version": "2023-06-01"}, 401, "authentication_error"),
    ]
    for hdrs, status, kind in cases:
        async with session.post(url, json=body, headers=hdrs) as resp:
            assert resp.status == status
            data = await resp.json()
            assert data["type"] == "error" and data["error"]["type"] == kind
            assert data["request_id"].startswith("req_")
    async with session.post(url, json=body, headers=headers) as resp:
        assert resp.status == 200


async def test_anthropic_message_shape(simulator, session):
    base = await simulator("anthropic", seed=3)
    body = {
        "model": "claude-3-5-sonnet-20241022",
        "max_tokens": 100,
        "system": "you are terse",
        "messages": [
            {"role": "user", "content": "hello claude"},
            {"role": "assistant", "content": "hi"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look at this"},
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/png",
                            "data": "iVBORw0KGgo=",
                        },
                    },
                ],
            },
        ],
    }
    async with session.post(f"{base}/v1/messages", json=body, headers=ANTHROPIC_HEADERS) as r:
        assert r.status == 200
        assert r.headers["request-id"].startswith("req_")
        data = await r.json()
    assert data["id"].startswith("msg_")
    assert data["type"] == "message" and data["role"] == "assistant"
    assert data["model"] == "claude-3-5-sonnet-20241022"
    [block] = data["content"]
    assert block["type"] == "text" and block["text"].startswith("Echo: look at this")
    assert data["stop_reason"] == "end_turn" and data["stop_sequence"] is None
    assert data["usage"] == {
        "input_tokens": 3 + 2 + 1 + 3,
        "output_tokens": 16,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


async def test_anthropic_limits_and_stop_sequences(simulator, session):
    base = await simulator("anthropic", reply="alpha beta gamma delta")
    url, headers, body = request_for("anthropic", base)
    async with session.post(url, json={**body, "max_tokens": 2}, headers=headers) as r:
        data = await r.json()
    assert data["stop_reason"] == "max_tokens" and data["content"][0]["text"] == "alpha beta"
    async with session.post(url, json={**body, "stop_sequences": ["gamma"]}, headers=headers) as r:
        data = await r.json()
    assert data["stop_reason"] == "stop_sequence" and data["stop_sequence"] == "gamma"
    assert data["content"][0]["text"] == "alpha beta "


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"max_tokens": None}, "max_tokens: Field required"),
        ({"max_tokens": "9"}, "max_tokens"),
        ({"messages": []}, "at least one message"),
        ({"messages": [{"role": "system", "content": "x"}]}, 'Unexpected role "system"'),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "first message must use"),
        ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "Input tag 'video'"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/bmp",
                                    "data": "x",
                                },
                            }
                        ],
                    }
                ]
            },
            "media_type",
        ),
        ({"tools": [{"name": "t"}]}, "input_schema"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice"),
    ],
)
async def test_anthropic_validation(simulator, session, patch, fragment):
    base = await simulator("anthropic")
    url, headers, body = request_for("anthropic", base)
    body = {k: v for k, v in {**body, **patch}.items() if v is not None}
    async with session.post(url, json=body, headers=headers) as resp:
        assert resp.status == 400
        data = await resp.json()
    assert data["type"] == "error"
    assert data["error"]["type"] == "invalid_request_error"
    assert fragment in data["error"]["message"]


async def test_anthropic_stream_event_order(simulator, session):
    base = await simulator("anthropic")
    url, headers, body = request_for("anthropic", base, stream=True)
    async with session.post(url, json=body, headers=headers) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = sse(await resp.text())
    names = [e["event"] for e in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[3:-3] == ["content_block_delta"] * 16
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(e["data"]["type"] == e["event"] for e in events)
    start = events[0]["data"]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == 2 and start["usage"]["output_tokens"] == 1
    assert events[1]["data"] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert all(e["data"]["delta"]["type"] == "text_delta" for e in events[3:-3])
    delta = events[-2]["data"]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"] == {"output_tokens": 16}
    async with session.post(url, json={**body, "stream": False}, headers=headers) as resp:
        whole = await resp.json()
    assert "".join(content_chunks("anthropic", events)) == whole["content"][0]["text"]


async def test_anthropic_tool_use(simulator, session):
    base = await simulator("anthropic")
    url, headers, body = request_for("anthropic", base, text="please call the weather tool")
    tool = {"name": "get_weather", "input_schema": WEATHER_TOOL["parameters"]}
    body["tools"] = [tool, {"name": "lookup", "input_schema": OTHER_TOOL["parameters"]}]
    async with session.post(url, json=body, headers=headers) as resp:
        data = await resp.json()
    assert data["stop_reason"] == "tool_use"
    text, use = data["content"]  # unforced: a few words, then the call
    assert text["type"] == "text" and "get_weather" in text["text"]
    assert use["type"] == "tool_use" and use["id"].startswith("toolu_")
    assert use["name"] == "get_weather" and use["input"] == {"city": "test", "days": 1}

    forced = {**body, "tool_choice": {"type": "tool", "name": "lookup"}, "stream": True}
    forced["messages"] = [{"role": "user", "content": "hi"}]
    async with session.post(url, json=forced, headers=headers) as resp:
        events = sse(await resp.text())
    start = events[1]["data"]
    assert start["index"] == 0
    assert start["content_block"]["type"] == "tool_use"
    assert start["content_block"]["name"] == "lookup" and start["content_block"]["input"] == {}
    deltas = [e["data"]["delta"] for e in events if e["event"] == "content_block_delta"]
    assert len(deltas) >= 2 and all(d["type"] == "input_json_delta" for d in deltas)
    assert json.loads("".join(d["partial_json"] for d in deltas)) == {"q": "test", "exact": True}
    assert events[-2]["data"]["delta"]["stop_reason"] == "tool_use"

    result = {
        **body,
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "rainy, 12C"}
                ],
            },
        ],
    }
    async with session.post(url, json=result, headers=headers) as resp:
        data = await resp.json()
    assert data["stop_reason"] == "end_turn" and "rainy, 12C" in data["content"][0]["text"]


async def test_anthropic_cache_accounting(simulator, session):
    base = await simulator("anthropic")
    url, headers, body = request_for("anthropic", base, text="one two three four")
    body["system"] = [
        {
            "type": "text",
            "text": "a long cached system prompt here",
            "cache_control": {"type": "ephemeral"},
        }
    ]
    usages = []
    for _ in range(2):
        async with session.post(url, json=body, headers=headers) as resp:
            usages.append((await resp.json())["usage"])
    # The marked system prompt (6 words) is written first, then read; the question is input.
    assert [(u["cache_creation_input_tokens"], u["cache_read_input_tokens"], u["input_tokens"])
            for u in usages] == [(6, 0, 4), (0, 6, 4)]


async def test_anthropic_midstream_error_event(simulator, session):
    base = await simulator("anthropic", fault="midstream_error", drop_after=2)
    url, headers, body = request_for("anthropic", base, stream=True)
    async with session.post(url, json=body, headers=headers) as resp:
        assert resp.status == 200
        events = sse(await resp.text())
    names = [e["event"] for e in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "error",
    ]
    assert events[-1]["data"] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    assert (await get_json(session, f"{base}/_sim/stats"))["errors_injected"] == 1


# --- Gemini ---------------------------------------------------------------------------------


async def test_gemini_generate_content_shape(simulator, session):
    base = await simulator("gemini")
    body = {
        "systemInstruction": {"parts": [{"text": "be nice"}]},
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "hello gemini"},
                    {"inline_data": {"mime_type": "image/png", "data": "AA=="}},
                ],
            },
        ],
        "generationConfig": {"temperature": 0.2},
    }
    url = f"{base}/v1beta/models/gemini-2.5-flash:generateContent"
    status, data = await post_json(session, url, body)
    assert status == 200
    [cand] = data["candidates"]
    assert cand["index"] == 0 and cand["finishReason"] == "STOP"
    assert cand["content"]["role"] == "model"
    [part] = cand["content"]["parts"]
    assert part["text"].startswith("Echo: hello gemini")
    assert data["usageMetadata"] == {
        "promptTokenCount": 4,
        "candidatesTokenCount": 16,
        "totalTokenCount": 20,
    }
    assert data["modelVersion"] == "gemini-2.5-flash"
    body["generationConfig"] = {"maxOutputTokens": 3, "stopSequences": ["zzz"]}
    _, data = await post_json(session, url, body)
    assert data["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert data["usageMetadata"]["candidatesTokenCount"] == 3


async def test_gemini_streams(simulator, session):
    base = await simulator("gemini")
    url, _, body = request_for("gemini", base, stream=True)
    async with session.post(url, json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = await resp.read()
    frames = raw.split(b"\r\n\r\n")
    assert frames[-1] == b"" and all(f.startswith(b"data: ") for f in frames[:-1])
    assert b"\n\n" not in raw.replace(b"\r\n", b"")  # CRLF framing only
    chunks = [json.loads(f[6:]) for f in frames[:-1]]
    assert len(chunks) == 16
    assert all("finishReason" not in c["candidates"][0] for c in chunks[:-1])
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] == 16
    text = "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks)
    _, whole = await post_json(
        session, url.replace("streamGenerateContent?alt=sse", "generateContent"), body
    )
    assert text == whole["candidates"][0]["content"]["parts"][0]["text"]
    # Without alt=sse Google answers one JSON array of the same responses.
    async with session.post(url.replace("?alt=sse", ""), json=body) as resp:
        assert resp.content_type == "application/json"
        array = json.loads(await resp.text())
    assert [c["candidates"] for c in array] == [c["candidates"] for c in chunks]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"contents": []}, "contents is not specified"),
        ({}, "contents is not specified"),
        ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "valid role"),
        ({"contents": [{"role": "user", "parts": []}]}, "parts must not be empty"),
        ({"contents": [{"role": "user", "parts": [{}]}]}, "required oneof field 'data'"),
        (
            {
                "contents": [{"parts": [{"text": "x"}]}],
                "generationConfig": {"maxOutputTokens": "many"},
            },
            "max_output_tokens",
        ),
    ],
)
async def test_gemini_validation(simulator, session, body, fragment):
    base = await simulator("gemini")
    status, data = await post_json(session, f"{base}/v1beta/models/g:generateContent", body)
    assert status == 400
    assert data["error"]["code"] == 400 and data["error"]["status"] == "INVALID_ARGUMENT"
    assert fragment in data["error"]["message"]


async def test_gemini_api_key(simulator, session):
    base = await simulator("gemini", api_key="AIza-right")
    url, _, body = request_for("gemini", base)
    status, data = await post_json(session, url, body)
    assert status == 403 and data["error"]["status"] == "PERMISSION_DENIED"
    async with session.post(url, json=body, headers={"x-goog-api-key": "AIza-wrong"}) as resp:
        assert resp.status == 400
        err = (await resp.json())["error"]
    assert err["status"] == "INVALID_ARGUMENT" and err["details"][0]["reason"] == "API_KEY_INVALID"
    async with session.post(url, json=body, headers={"x-goog-api-key": "AIza-right"}) as resp:
        assert resp.status == 200
    async with session.post(url + "?key=AIza-right", json=body) as resp:
        assert resp.status == 200


async def test_gemini_function_calling_json_and_safety(simulator, session):
    base = await simulator("gemini")
    url = f"{base}/v1beta/models/g:generateContent"
    tools = [{"functionDeclarations": [WEATHER_TOOL, OTHER_TOOL]}]
    body = {"contents": [{"role": "user", "parts": [{"text": "weather in Rome"}]}], "tools": tools}
    _, data = await post_json(session, url, body)
    cand = data["candidates"][0]
    assert cand["finishReason"] == "STOP"
    assert cand["content"]["parts"] == [
        {"functionCall": {"name": "get_weather", "args": {"city": "test", "days": 1}}}
    ]
    forced = {
        **body,
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "toolConfig": {
            "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["lookup"]}
        },
    }
    _, data = await post_json(session, url, forced)
    assert data["candidates"][0]["content"]["parts"][0]["functionCall"]["name"] == "lookup"
    follow_up = {
        **body,
        "contents": [
            {"role": "user", "parts": [{"text": "weather in Rome"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {}}}]},
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"sky": "clear"}}}
                ],
            },
        ],
    }
    _, data = await post_json(session, url, follow_up)
    assert "clear" in data["candidates"][0]["content"]["parts"][0]["text"]
    schema = {
        "type": "OBJECT",
        "properties": {"title": {"type": "STRING"}, "pages": {"type": "INTEGER"}},
    }
    as_json = {
        "contents": [{"parts": [{"text": "a book"}]}],
        "generationConfig": {"responseMimeType": "application/json", "responseSchema": schema},
    }
    _, data = await post_json(session, url, as_json)
    doc = json.loads(data["candidates"][0]["content"]["parts"][0]["text"])
    assert doc == {"title": "test", "pages": 1}
    unsafe = {"contents": [{"role": "user", "parts": [{"text": "something unsafe please"}]}]}
    _, data = await post_json(session, url, unsafe)
    cand = data["candidates"][0]
    assert cand["finishReason"] == "SAFETY" and "content" not in cand
    assert any(r.get("blocked") for r in cand["safetyRatings"])
    assert "candidatesTokenCount" not in data["usageMetadata"]


# --- faults, for every protocol -------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_fault_error_rate(simulator, session, protocol):
    base = await simulator(protocol, error_rate=1.0, seed=7)
    url, headers, body = request_for(protocol, base)
    async with session.post(url, json=body, headers=headers) as resp:
        data = await resp.json()
        status = resp.status
    if protocol == "openai":
        assert status == 500 and data["error"]["type"] == "server_error"
        assert set(data["error"]) == {"message", "type", "param", "code"}
    elif protocol == "anthropic":
        assert status == 529
        assert data["type"] == "error" and data["error"]["type"] == "overloaded_error"
    else:
        assert status == 503
        assert data["error"] == {**data["error"], "code": 503, "status": "UNAVAILABLE"}
    stats = await get_json(session, f"{base}/_sim/stats")
    assert stats == {
        "requests": 1,
        "completed": 1,
        "cancelled": 0,
        "errors_injected": 1,
        "active": 0,
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_fault_status_429_retry_after(simulator, session, protocol):
    base = await simulator(protocol, fault="status", fault_status=429, retry_after=7)
    url, headers, body = request_for(protocol, base)
    async with session.post(url, json=body, headers=headers) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "7"
        data = await resp.json()
    kind = {
        "openai": lambda d: d["error"]["code"] == "rate_limit_exceeded",
        "anthropic": lambda d: d["error"]["type"] == "rate_limit_error",
        "gemini": lambda d: d["error"]["status"] == "RESOURCE_EXHAUSTED",
    }
    assert kind[protocol](data)


@pytest.mark.parametrize(
    ("protocol", "status", "kind"),
    [
        ("openai", 401, "invalid_api_key"),
        ("anthropic", 402, "billing_error"),
        ("anthropic", 403, "permission_error"),
        ("gemini", 500, "INTERNAL"),
    ],
)
async def test_fault_status_bodies(simulator, session, protocol, status, kind):
    base = await simulator(protocol, fault="status", fault_status=status)
    url, headers, body = request_for(protocol, base)
    async with session.post(url, json=body, headers=headers) as resp:
        assert resp.status == status
        assert "Retry-After" not in resp.headers
        err = (await resp.json())["error"]
    assert kind in (err.get("code"), err.get("type"), err.get("status"))


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_fault_hang(simulator, session, protocol, caplog):
    base = await simulator(protocol, fault="hang")
    url, headers, body = request_for(protocol, base)
    with pytest.raises(asyncio.TimeoutError):
        async with session.post(
            url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=0.3)
        ) as resp:
            await resp.read()
    # The client gave up and closed the connection: the request counts as cancelled.
    await wait_stats(session, base, requests=1, cancelled=1, active=0, errors_injected=1)
    no_errors_logged(caplog)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_fault_reset(simulator, session, protocol, caplog):
    base = await simulator(protocol, fault="reset")
    url, headers, body = request_for(protocol, base)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with session.post(url, json=body, headers=headers) as resp:
            await resp.read()
    await wait_stats(session, base, requests=1, completed=0, active=0, errors_injected=1)
    no_errors_logged(caplog)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("stream", [False, True])
async def test_fault_garbage(simulator, session, protocol, stream):
    base = await simulator(protocol, fault="garbage")
    url, headers, body = request_for(protocol, base, stream=stream)
    async with session.post(url, json=body, headers=headers) as resp:
        assert resp.status == 200
        text = await resp.text(errors="replace")
    if stream:
        assert resp.content_type == "text/event-stream"
        with pytest.raises(ValueError):
            sse(text)
    else:
        with pytest.raises(ValueError):
            json.loads(text)


@pytest.mark.parametrize(
    ("protocol", "fault"),
    # anthropic's midstream_error is an `event: error`, see test_anthropic_midstream_error_event
    [
        *((p, "drop") for p in PROTOCOLS),
        ("openai", "midstream_error"),
        ("gemini", "midstream_error"),
    ],
)
async def test_fault_drop_stream(simulator, session, protocol, fault, caplog):
    base = await simulator(protocol, fault=fault, drop_after=3)
    url, headers, body = request_for(protocol, base, stream=True)
    async with session.post(url, json=body, headers=headers) as resp:
        assert resp.status == 200
        text, broken = await read_until_broken(resp)
    assert broken
    assert len(content_chunks(protocol, sse(text))) == 3
    assert "[DONE]" not in text and "message_stop" not in text and "finishReason" not in text
    await wait_stats(session, base, requests=1, completed=0, active=0, errors_injected=1)
    no_errors_logged(caplog)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_fault_drop_whole(simulator, session, protocol):
    base = await simulator(protocol, fault="drop")
    url, headers, body = request_for(protocol, base)
    with pytest.raises(aiohttp.ClientPayloadError):
        async with session.post(url, json=body, headers=headers) as resp:
            assert resp.status == 200
            await resp.read()


# --- run-time control, accounting, determinism ----------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_sim_config_switch_and_history(simulator, session, protocol):
    base = await simulator(protocol)
    url, headers, body = request_for(protocol, base)

    async def status() -> int:
        async with session.post(url, json=body, headers=headers) as resp:
            await resp.read()
            return resp.status

    assert await status() == 200
    code, opts = await post_json(
        session, f"{base}/_sim/config", {"fault": "status", "fault_status": 503}
    )
    assert code == 200 and opts["fault"] == "status" and opts["fault_status"] == 503
    assert await status() == 503
    code, _ = await post_json(session, f"{base}/_sim/config", {"fault": ""})
    assert code == 200 and await status() == 200
    for bad in ({"fault": "explode"}, {"error_rate": 2}, {"nope": 1}, [1]):
        code, data = await post_json(session, f"{base}/_sim/config", bad)
        assert code == 400 and "error" in data
    assert (await get_json(session, f"{base}/_sim/config"))["fault"] == ""
    history = await get_json(session, f"{base}/_sim/requests")
    assert len(history) == 3
    assert history[0]["method"] == "POST" and history[0]["body"] == body
    assert history[0]["path"] == url.split(base)[1].split("?")[0]
    stats = await get_json(session, f"{base}/_sim/stats")
    assert stats["requests"] == 3 and stats["completed"] == 3 and stats["errors_injected"] == 1
    await post_json(session, f"{base}/_sim/reset", {})
    assert await get_json(session, f"{base}/_sim/requests") == []
    assert (await get_json(session, f"{base}/_sim/stats"))["requests"] == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_cancelled_when_client_disconnects_mid_stream(simulator, session, protocol, caplog):
    base = await simulator(protocol, tokens_per_s=20)
    url, headers, body = request_for(protocol, base, stream=True)
    resp = await session.post(url, json=body, headers=headers)
    assert resp.status == 200
    await resp.content.readline()
    resp.close()  # hang up mid-stream
    await wait_stats(session, base, requests=1, cancelled=1, completed=0, active=0)
    no_errors_logged(caplog)


async def test_cancelled_counted_without_handler_cancellation(session, caplog):
    """Embedded with a plain AppRunner, the failing write (or the paced nap) notices it."""
    app = build_app("openai", SimOptions(tokens_per_s=50))
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        url, headers, body = request_for("openai", base, stream=True)
        resp = await session.post(url, json=body, headers=headers)
        await resp.content.readline()
        resp.close()
        await wait_stats(session, base, cancelled=1, active=0)
        assert app[SIM_KEY].stats.cancelled == 1
    finally:
        await runner.cleanup()
    no_errors_logged(caplog)


async def test_latency_and_pacing(simulator, session):
    base = await simulator("openai", latency_ms=150, tokens_per_s=40)
    url, _, body = request_for("openai", base)
    body["max_tokens"] = 4
    t0 = time.monotonic()
    await post_json(session, url, body)
    assert time.monotonic() - t0 >= 0.15 + 4 / 40 - 0.01
    t0 = time.monotonic()
    async with session.post(url, json={**body, "stream": True}) as resp:
        first = time.monotonic()
        await resp.read()
        last = time.monotonic()
    assert first - t0 >= 0.14
    assert last - first >= 3 / 40 - 0.01  # four tokens, three gaps


async def test_deterministic_with_seed(simulator, session):
    a = await simulator("openai", seed=42, error_rate=0.5)
    b = await simulator("openai", seed=42, error_rate=0.5)

    async def run(base: str) -> list[tuple[int, str]]:
        out = []
        url, _, body = request_for("openai", base)
        for _ in range(12):
            async with session.post(url, json=body) as resp:
                data = await resp.json()
                out.append((resp.status, data.get("id", "")))
        return out

    first, second = await run(a), await run(b)
    assert first == second
    assert {s for s, _ in first} == {200, 500}


async def test_cli_runs_and_prints_address(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    code = (
        "import argparse, sys\n"
        "from edgeproxy.simulate import add_arguments, main_from_args\n"
        "p = argparse.ArgumentParser(); add_arguments(p)\n"
        "sys.exit(main_from_args(p.parse_args(sys.argv[1:])))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        "--protocol",
        "gemini",
        "--port",
        "0",
        "--seed",
        "1",
        "--fault",
        "status",
        "--fault-status",
        "429",
        "--retry-after",
        "3",
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        match = re.fullmatch(
            r"simulate-provider gemini listening on (http://127\.0\.0\.1:\d+)", line
        )
        assert match, line
        async with aiohttp.ClientSession() as s:
            url, _, body = request_for("gemini", match.group(1))
            async with s.post(url, json=body) as resp:
                assert resp.status == 429 and resp.headers["Retry-After"] == "3"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    bad = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        "--protocol",
        "openai",
        "--port",
        "0",
        "--error-rate",
        "3",
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    out, _ = await bad.communicate()
    assert bad.returncode == 2 and b"error_rate" in out
