"""Whatever a client sends, the gateway answers a JSON error below 500 or a real answer."""

from __future__ import annotations

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Stack, config

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                  max_size=4),
    max_leaves=12,
)
FIELDS = ["model", "models", "messages", "stream", "max_tokens", "temperature", "provider",
          "tools", "tool_choice", "response_format", "stop", "n", "route", "usage", "top_p"]
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "bogus"]) | json_values},
    optional={"content": st.text(max_size=40) | json_values, "name": json_values,
              "tool_calls": json_values, "tool_call_id": json_values},
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["test/model", "test/model:nitro", "test/model:free",
                                  "test/model:x", "other", ""]) | json_values,
        "messages": st.lists(message, max_size=3) | json_values,
        "stream": st.booleans() | json_values,
        "max_tokens": st.integers(-5, 10**7) | json_values,
        "provider": st.dictionaries(st.sampled_from(
            ["order", "only", "ignore", "sort", "max_price", "quantizations", "zdr",
             "allow_fallbacks", "data_collection", "require_parameters"]), json_values,
            max_size=3) | json_values,
        **{f: json_values for f in FIELDS if f not in ("model", "messages", "stream",
                                                      "max_tokens", "provider")},
    },
)
huge_numbers = st.integers(2**64, 2**90).map(
    lambda n: b'{"model": "test/model", "max_tokens": %d, "messages": [{"role": "user",'
              b' "content": "x"}]}' % n)
# One client for every example: a new httpx client per request costs more than the request.
CLIENT = httpx.Client(timeout=10)

bodies = (requests.map(orjson.dumps) | st.binary(max_size=200) | huge_numbers
          | json_values.map(lambda v: orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS)))


# The other dialects (SPEC §1.1): their own fields, so the fuzz gets past the first type check and
# into the codecs and, through each upstream protocol, the adapters.
text_or_any = st.text(max_size=30) | json_values
block = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking",
                              "document", "bogus"]) | json_values},
    optional={"text": text_or_any, "source": json_values, "id": json_values,
              "name": json_values, "input": json_values, "tool_use_id": json_values,
              "content": json_values, "thinking": json_values, "cache_control": json_values},
)
item = st.fixed_dictionaries(
    {"type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning",
                              "bogus"]) | json_values},
    optional={"role": st.sampled_from(["user", "assistant", "system", "developer"]) | json_values,
              "content": text_or_any | st.lists(st.fixed_dictionaries(
                  {"type": st.sampled_from(["input_text", "input_image", "output_text"])},
                  optional={"text": text_or_any, "image_url": json_values}), max_size=2),
              "call_id": json_values, "name": json_values, "arguments": json_values,
              "output": json_values},
)
MODEL = st.sampled_from(["test/model", "test/model:floor", "other"]) | json_values
DIALECTS = {
    "completions": st.fixed_dictionaries({}, optional={
        "model": MODEL, "prompt": text_or_any, "max_tokens": st.integers(-5, 10**7) | json_values,
        "stream": st.booleans() | json_values, "stop": json_values, "suffix": json_values,
        "echo": json_values, "n": json_values, "logprobs": json_values}),
    "responses": st.fixed_dictionaries({}, optional={
        "model": MODEL, "input": text_or_any | st.lists(item, max_size=3),
        "instructions": text_or_any, "tools": json_values, "tool_choice": json_values,
        "text": json_values, "reasoning": json_values, "stream": st.booleans() | json_values,
        "max_output_tokens": st.integers(-5, 10**7) | json_values,
        "previous_response_id": json_values, "metadata": json_values}),
    "messages": st.fixed_dictionaries({}, optional={
        "model": MODEL, "max_tokens": st.integers(-5, 10**7) | json_values,
        "messages": st.lists(st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "assistant"]) | json_values},
            optional={"content": text_or_any | st.lists(block, max_size=3)}), max_size=3)
        | json_values,
        "system": text_or_any | st.lists(block, max_size=2), "tools": json_values,
        "tool_choice": json_values, "thinking": json_values, "stop_sequences": json_values,
        "stream": st.booleans() | json_values, "metadata": json_values}),
    "messages/count_tokens": st.fixed_dictionaries({}, optional={
        "model": MODEL, "messages": json_values, "system": json_values, "tools": json_values}),
    "embeddings": st.fixed_dictionaries({}, optional={
        "model": MODEL, "input": text_or_any | st.lists(st.integers(-3, 10**6), max_size=3),
        "dimensions": json_values, "encoding_format": json_values}),
}


def _error_of(path: str, doc: dict) -> tuple[int | None, str]:
    if path.startswith("messages"):
        assert doc["type"] == "error"  # Anthropic's shape
        return None, doc["error"]["message"]
    return doc["error"]["code"], doc["error"]["message"]


@pytest.fixture(params=["openai", "anthropic", "gemini"])
def gateway_url(stack: Stack, request: pytest.FixtureRequest) -> str:
    sim = stack.sim(request.param, max_reply_tokens=2)
    return stack.gateway(config([("acme", sim, {"prompt": "1"})])).base_url


@pytest.mark.parametrize("path", sorted(DIALECTS))
@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_input_in_any_dialect_gives_a_5xx(gateway_url: str, path: str, data) -> None:
    body = data.draw(DIALECTS[path].map(orjson.dumps) | st.binary(max_size=100))
    r = CLIENT.post(f"{gateway_url}/{path}", content=body,
                    headers={"Content-Type": "application/json"})
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        code, message = _error_of(path, r.json())
        assert code in (None, r.status_code) and isinstance(message, str)


@pytest.fixture
def target(stack: Stack) -> str:
    sim = stack.sim(max_reply_tokens=2)
    gw = stack.gateway(config([("acme", sim, {"prompt": "1"})]))
    return gw.base_url + "/chat/completions"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_no_input_gives_a_5xx(target: str, body: bytes) -> None:
    r = CLIENT.post(target, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        err = r.json()["error"]
        assert err["code"] == r.status_code and isinstance(err["message"], str)


# -- raw bytes in the request head -----------------------------------------------------------------
# Headers the gateway reads (the caller's key, the app name it records) and a few it passes on,
# each holding any bytes at all, sent over a plain socket (HTTP clients refuse such values). The
# gateway must answer a JSON error below 500 or a real answer, never a 500 or silence; and the
# ledger writer must go on writing (an app name is stored and shown back by /generation).

HEADERS = ["Authorization", "x-api-key", "Content-Type", "HTTP-Referer", "X-Title",
           "X-OpenRouter-Title", "Content-Encoding", "Transfer-Encoding", "Accept"]
ADMIN = "fuzz-admin-key"
BODY = b'{"model": "test/model", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}'


def _raw(port: int, head: bytes, body: bytes) -> tuple[int, bytes]:
    """One request over a socket of its own: (status, body) of the first answer."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1."), data[:200]
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), payload


@pytest.fixture
def keyed_gateway(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    monkeypatch.setenv("EDGEPROXY_ADMIN_KEY", ADMIN)
    sim = stack.sim(max_reply_tokens=2)
    gw = stack.gateway(config([("acme", sim, {"prompt": "1"})], server={"auth": "keys"}))
    r = CLIENT.post(gw.base_url + "/keys", json={"name": "fuzz", "credits": "5"},
                    headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 201, r.text
    return gw.port, r.json()["key"]


header_values = st.binary(max_size=40) | st.sampled_from(
    [b"Bearer \xff\xfe", b"\xff\xfe", b"Bearer ", b"Bearer \x00", b"gzip", b"chunked",
     b"application/json; charset=\xff", b"\xed\xa0\x80", b"Bearer sk-ep-v1-\x80"])
PATHS = [b"/v1/chat/completions", b"/v1/messages", b"/v1/models", b"/v1/generation?id=gen-\xff",
         b"/v1/generation?id=gen-%ed%a0%80", b"/v1/models/%ff/%fe", b"/v1/models/\xff",
         b"/v1/models?supported_parameters=%ff,%00", b"/v1/keys?account=%ff%00",
         b"/v1/keys/key_%ff%fe", b"/v1/key", b"/v1/credits", b"/v1/byok",
         b"/api/v1/chat/completions?\xff=\xfe"]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS),
       method=st.sampled_from([b"POST", b"GET", b"PATCH", b"DELETE", b"P\xffST"]),
       headers=st.lists(st.tuples(st.sampled_from(HEADERS), header_values), max_size=4),
       auth=st.sampled_from(["", "key", "admin"]),
       body=st.sampled_from([BODY, b"", b"\xff\xfe{", b'{"name": "\xff", "account": "\xed\xa0\x80"}']))
def test_no_header_or_path_bytes_give_a_5xx(
    keyed_gateway: tuple[int, str], path: bytes, method: bytes,
    headers: list[tuple[str, bytes]], auth: str, body: bytes,
) -> None:
    port, key = keyed_gateway
    head = b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n" % (method, path)
    if auth:
        head += b"Authorization: Bearer %s\r\n" % (key if auth == "key" else ADMIN).encode()
    for name, value in headers:
        head += name.encode() + b": " + value + b"\r\n"
    status, payload = _raw(port, head, body)
    assert status < 500, (status, payload[:300])
    if status >= 400:
        doc = orjson.loads(payload)
        message = doc["error"]["message"]  # both shapes (Anthropic's too) have error.message
        assert isinstance(message, str) and message


def test_an_app_name_of_any_bytes_is_recorded_and_shown(keyed_gateway: tuple[int, str]) -> None:
    port, key = keyed_gateway
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer %s\r\nX-Title: caf\xc3\xa9 \xff\xfe\t app\r\n" % key.encode())
    status, payload = _raw(port, head, BODY)
    assert status == 200, payload
    gen_id = orjson.loads(payload)["id"]
    r = CLIENT.get(f"http://127.0.0.1:{port}/v1/generation", params={"id": gen_id},
                   headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["app"] == "café  app"  # undecodable bytes and controls dropped
