"""The legacy completions and the embeddings codecs as pure functions, and the openai adapter's
embeddings calls: requests -> the canonical request; canonical results, chunks and errors -> what
the openai SDK's own types accept (`Completion`, `CreateEmbeddingResponse`)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai.types import Completion, CreateEmbeddingResponse

from edgeproxy.billing.ledger import KeyRow
from edgeproxy.billing.service import AccountState, Caller
from edgeproxy.errors import BadRequest, UpstreamProtocolError, UpstreamStatusError
from edgeproxy.gateway import Generation
from edgeproxy.ingress import completions, embeddings
from edgeproxy.protocols.base import Target
from edgeproxy.protocols.openai import OpenAIAdapter
from edgeproxy.transforms import estimate_tokens

TARGET = Target("http://upstream.test/v1", "sk-up", "upstream-model", 4096)
USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "cost": 0.000025,
         "is_byok": False}


def gen() -> Generation:
    key = KeyRow("k1", "acct", "h", "sk-ep", "test", None, 0, False, False, 0)
    g = Generation("test/model", True, None, Caller(key, AccountState("acct")))
    g.provider = "acme"
    return g


def frames(data: bytes) -> list[Any]:
    """The `data:` payloads of SSE bytes, JSON-decoded except [DONE]."""
    out: list[Any] = []
    for block in data.decode().split("\n\n"):
        if block:
            assert block.startswith("data: "), block
            raw = block[6:]
            out.append(raw if raw == "[DONE]" else orjson.loads(raw))
    return out


# --------------------------------------------------------------------------- completions decode


def decode_completion(doc: dict[str, Any]) -> dict[str, Any]:
    return completions.CODEC.decode(orjson.dumps(doc), {}).as_dict()


def test_prompt_becomes_one_user_message_with_the_legacy_default_max_tokens() -> None:
    d = completions.CODEC.decode(orjson.dumps({"model": "m", "prompt": "Once upon"}), {})
    assert d.as_dict() == {"model": "m", "max_tokens": 16,
                           "messages": [{"role": "user", "content": "Once upon"}]}
    assert d.kind == "chat" and d.native == "" and not d.stream
    assert d.route.max_tokens == 16


def test_parameters_and_openrouter_extras_are_carried_over() -> None:
    extras = {
        "temperature": 0.5, "top_p": 0.9, "n": 2, "stop": ["\n"], "seed": 7,
        "presence_penalty": 0.1, "frequency_penalty": 0.2, "logit_bias": {"50256": -100},
        "user": "u1", "stream": True, "stream_options": {"include_usage": True},
        "models": ["a/b"], "provider": {"order": ["acme"]}, "route": "fallback",
        "transforms": ["middle-out"], "usage": {"include": True}, "session_id": "s1",
        "reasoning": {"effort": "low"},
    }
    doc = decode_completion({"model": "m", "prompt": ["only one"], "max_tokens": 40, **extras})
    assert doc == {"model": "m", "max_tokens": 40,
                   "messages": [{"role": "user", "content": "only one"}], **extras}
    assert decode_completion({"model": "m", "prompt": "x", "max_tokens": None})["max_tokens"] == 16
    # Values that ask for nothing are accepted.
    plain = {"model": "m", "prompt": "x", "suffix": "", "echo": False, "best_of": 1,
             "logprobs": None}
    assert decode_completion(plain)["messages"] == [{"role": "user", "content": "x"}]


def test_an_openai_upstream_gets_the_chat_request() -> None:
    d = completions.CODEC.decode(orjson.dumps({"model": "m", "prompt": "Hi", "models": ["x"]}), {})
    call = OpenAIAdapter().build_request(None, d.openai_body(), TARGET, False)
    assert call.url == "http://upstream.test/v1/chat/completions"
    assert orjson.loads(call.body) == {"model": "upstream-model", "max_tokens": 16,
                                       "messages": [{"role": "user", "content": "Hi"}]}


@pytest.mark.parametrize(("doc", "fragment"), [
    ({"prompt": ["one", "two"]}, "several prompts"),
    ({"prompt": [1, 2, 3]}, "token-array prompts are not supported"),
    ({"prompt": [[1, 2], [3]]}, "token-array prompts are not supported"),
    ({"prompt": ""}, "`prompt` is empty"),
    ({"prompt": []}, "`prompt` must be a string"),
    ({}, "`prompt` is required"),
    ({"prompt": 5}, "`prompt` must be a string"),
    ({"prompt": "x", "suffix": "end"}, "`suffix`"),
    ({"prompt": "x", "echo": True}, "`echo`"),
    ({"prompt": "x", "best_of": 3}, "`best_of`"),
    ({"prompt": "x", "logprobs": 2}, "`logprobs`"),
    ({"prompt": "x", "temperature": 5}, "temperature"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "n": "2"}, "n"),
])
def test_bad_completion_requests_are_400s_that_say_why(doc: dict[str, Any], fragment: str) -> None:
    with pytest.raises(BadRequest, match=fragment):
        completions.CODEC.decode(orjson.dumps({"model": "m", **doc}), {})


@pytest.mark.parametrize("body", [b"{nope", b"[1]", b'"text"'])
def test_malformed_bodies_are_400s(body: bytes) -> None:
    for codec in (completions.CODEC, embeddings.CODEC):
        with pytest.raises(BadRequest):
            codec.decode(body, {})


# --------------------------------------------------------------------------- completions encode


def chat_result(*choices: dict[str, Any]) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion", "created": 1, "model": "test/model",
            "provider": "acme", "choices": list(choices), "usage": dict(USAGE),
            "system_fingerprint": "fp_1"}


def test_encode_is_a_text_completion() -> None:
    g = gen()
    body = completions.CODEC.encode(chat_result(
        {"index": 0, "message": {"role": "assistant", "content": "Paris."},
         "finish_reason": "stop", "native_finish_reason": "end_turn"},
        {"index": 1, "message": {"role": "assistant", "content": None},
         "finish_reason": "length", "native_finish_reason": "MAX_TOKENS"},
    ), g)
    c = Completion.model_validate_json(body)
    assert (c.id, c.object, c.created, c.model) == (g.id, "text_completion", g.created,
                                                    "test/model")
    assert [(x.index, x.text, x.finish_reason, x.logprobs) for x in c.choices] == [
        (0, "Paris.", "stop", None), (1, "", "length", None)]
    assert c.system_fingerprint == "fp_1"
    assert c.usage is not None and c.usage.total_tokens == 8
    doc = orjson.loads(body)
    assert doc["provider"] == "acme" and doc["usage"]["cost"] == 0.000025
    assert [x["native_finish_reason"] for x in doc["choices"]] == ["end_turn", "MAX_TOKENS"]


def test_stream_frames_text_then_usage_then_done() -> None:
    g = gen()
    enc = completions.CODEC.stream_encoder(g)
    opening = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    out = enc.chunks(opening)
    out += enc.chunks(opening)  # a fallback repeats the opening: nothing shows either time
    out += enc.chunks([{"choices": [{"index": 0, "delta": {"reasoning": "hmm"}}]}])
    out += enc.chunks([
        {"choices": [{"index": 0, "delta": {"content": "Hello"}}]},
        {"choices": [{"index": 0, "delta": {"content": " world"}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop",
                      "native_finish_reason": "end_turn"}]},
    ])
    out += enc.finish(dict(USAGE))
    got = frames(out)
    assert len(got) == 5 and got[-1] == "[DONE]"
    # OpenAI streams `finish_reason: null` until the last choice, which the SDK's (strict)
    # Completion type does not allow: the SDK reads stream chunks without validating them.
    assert [f["choices"] for f in got[:2]] == [
        [{"index": 0, "text": "Hello", "finish_reason": None, "logprobs": None}],
        [{"index": 0, "text": " world", "finish_reason": None, "logprobs": None}]]
    last, tail = Completion.model_validate(got[2]), Completion.model_validate(got[3])
    assert (last.choices[0].text, last.choices[0].finish_reason) == ("", "stop")
    assert got[2]["choices"][0]["native_finish_reason"] == "end_turn"
    assert tail.choices == [] and got[3]["usage"] == USAGE
    for f in got[:-1]:
        assert (f["id"], f["object"], f["created"], f["model"], f["provider"]) == (
            g.id, "text_completion", g.created, "test/model", "acme")


def test_stream_error_is_an_error_chunk_then_done() -> None:
    enc = completions.CODEC.stream_encoder(gen())
    err = UpstreamStatusError("acme answered HTTP 500: boom", "acme", {"message": "boom"},
                              upstream_status=500)
    got = frames(enc.error(err))
    assert got[-1] == "[DONE]" and len(got) == 2
    assert got[0]["error"] == {"code": 502, "message": "acme answered HTTP 500: boom",
                               "metadata": {"provider_name": "acme", "raw": {"message": "boom"},
                                            "error_type": "provider_unavailable"}}
    assert got[0]["choices"] == [{"index": 0, "text": "", "finish_reason": "error",
                                  "logprobs": None, "native_finish_reason": None}]


def test_error_body_is_the_gateway_shape() -> None:
    for codec in (completions.CODEC, embeddings.CODEC):
        body = orjson.loads(codec.error_body(BadRequest("no", {"k": 1})))
        assert body == {"error": {"code": 400, "message": "no", "metadata": {"k": 1}}}


# --------------------------------------------------------------------------- embeddings codec


@pytest.mark.parametrize(("value", "content"), [
    ("hello world", "hello world"),
    (["a b", "c"], "a b\nc"),
    ([1, 2, 3], " " * 12),
    ([[1, 2], [3, 4, 5]], " " * 20),
])
def test_embeddings_route_on_a_chat_shaped_description(value: Any, content: str) -> None:
    body = orjson.dumps({"model": "e/m", "input": value, "dimensions": 8,
                         "encoding_format": "base64", "user": "u", "models": ["e/n"],
                         "provider": {"order": ["acme"]}})
    d = embeddings.CODEC.decode(body, {})
    assert (d.kind, d.native, d.body, d.stream) == ("embeddings", "openai", body, False)
    assert d.as_dict() == {"model": "e/m", "models": ["e/n"], "provider": {"order": ["acme"]},
                           "messages": [{"role": "user", "content": content}]}
    # Token arrays count as tokens in the prompt estimate (4 characters a token).
    if isinstance(value, list) and not isinstance(value[0], str):
        tokens = sum(len(v) for v in value) if isinstance(value[0], list) else len(value)
        assert estimate_tokens(d.as_dict()["messages"]) >= tokens


@pytest.mark.parametrize(("doc", "fragment"), [
    ({"input": ""}, "`input` is empty"),
    ({"input": []}, "`input` is empty"),
    ({"input": ["a", ""]}, "empty string"),
    ({"input": [[]]}, "`input` must be"),
    ({"input": ["a", 1]}, "`input` must be"),
    ({"input": [-1]}, "`input` must be"),
    ({"input": {"text": "a"}}, "`input` must be"),
    ({}, "`input` is required"),
    ({"input": "a", "dimensions": 0}, "`dimensions`"),
    ({"input": "a", "dimensions": "8"}, "`dimensions`"),
    ({"input": "a", "dimensions": True}, "`dimensions`"),
    ({"input": "a", "encoding_format": "hex"}, "`encoding_format`"),
    ({"input": "a", "user": 5}, "`user`"),
    ({"input": "a", "stream": True}, "not streamed"),
    ({"input": "a", "model": 5}, "model"),
])
def test_bad_embeddings_requests_are_400s(doc: dict[str, Any], fragment: str) -> None:
    with pytest.raises(BadRequest, match=fragment):
        embeddings.CODEC.decode(orjson.dumps({"model": "e/m", **doc}), {})


def test_embeddings_encode_and_no_stream() -> None:
    g = gen()
    result = {"object": "list", "model": "upstream-model",
              "data": [{"object": "embedding", "index": 0, "embedding": [0.6, 0.8]},
                       {"object": "embedding", "index": 1, "embedding": [1.0, 0.0]}],
              "usage": {"prompt_tokens": 7, "completion_tokens": 0, "total_tokens": 7,
                        "cost": 0.00000014, "is_byok": False, "estimated": True}}
    body = embeddings.CODEC.encode(result, g)
    r = CreateEmbeddingResponse.model_validate_json(body)
    assert r.model == "test/model" and r.usage.prompt_tokens == r.usage.total_tokens == 7
    doc = orjson.loads(body)
    assert doc["data"] == result["data"]
    assert doc["usage"] == {"prompt_tokens": 7, "total_tokens": 7, "cost": 0.00000014,
                            "is_byok": False}
    assert (doc["id"], doc["provider"]) == (g.id, "acme")
    # base64 vectors (what the openai SDK asks for by default) pass through as they came.
    b64 = [{"object": "embedding", "index": 0, "embedding": "AACAPwAAAAA="}]
    assert orjson.loads(embeddings.CODEC.encode({**result, "data": b64}, g))["data"] == b64
    with pytest.raises(BadRequest, match="not streamed"):
        embeddings.CODEC.stream_encoder(g)


# --------------------------------------------------------------------------- openai adapter


def test_build_embeddings_passes_the_body_through() -> None:
    body = (b'{"model":"e/m","input":["a","b"],"dimensions":8,"encoding_format":"base64",'
            b'"models":["e/n"],"provider":{"order":["acme"]},"user":"u"}')
    call = OpenAIAdapter().build_embeddings(body, TARGET)
    assert call.url == "http://upstream.test/v1/embeddings"
    assert call.headers == {"Content-Type": "application/json", "Authorization": "Bearer sk-up"}
    assert call.body == (b'{"model":"upstream-model","input":["a","b"],"dimensions":8,'
                         b'"encoding_format":"base64","user":"u"}')


def test_parse_embeddings() -> None:
    a = OpenAIAdapter()
    data = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [1.0]}],
            "model": "m", "usage": {"prompt_tokens": 3, "total_tokens": 3}}
    out = a.parse_embeddings(200, orjson.dumps(data))
    assert orjson.loads(orjson.dumps(out["data"])) == data["data"]  # the upstream's JSON as sent
    assert out["usage"] == {"prompt_tokens": 3, "total_tokens": 3, "completion_tokens": 0}
    assert "usage" not in a.parse_embeddings(200, b'{"data": []}')
    for bad in (b"<html>", b"[]", b'{"object": "list"}', b'{"data": {}}'):
        with pytest.raises(UpstreamProtocolError):
            a.parse_embeddings(200, bad)
