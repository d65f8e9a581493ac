"""The translation matrix (issue 10; SPEC §1.1, §3): every client dialect through every upstream
protocol, for text, stream, tools, errors and usage. Each test is one cell: the dialect's official
SDK against the running gateway and a simulated provider of that protocol. `make matrix` runs this
file and writes tests/translation_matrix.md (the `matrix` marker and the hooks in tests/conftest.py,
which also hold the grid and its not-applicable cells).

A driver below speaks one dialect with its SDK and reports what the client saw in the dialect's own
fields and words (finish reasons, usage members); the tests compare that with what the simulator was
told to answer and with what the gateway billed. Simulators count whitespace-separated words as
tokens, so the token counts and the cost are exact."""

from __future__ import annotations

import base64
import json
import math
import struct
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, cast

import anthropic
import openai
import pytest

from tests.conftest import (
    MATRIX_COLUMNS,
    MATRIX_NOT_APPLICABLE,
    GatewayHandle,
    SimHandle,
    Stack,
    config,
)

MODEL = "test/model"
PRICES = {"prompt": "2", "completion": "10"}  # USD per 1M tokens
PROMPT, PROMPT_TOKENS = "Capital of France?", 3
REPLY, REPLY_TOKENS = "Paris is the capital", 4
ASK_WEATHER = "What is the weather in Oslo?"  # "weather" makes the simulators call the tool
TOOL_OUTPUT = "12 degrees and rain"
Http = openai.DefaultHttpxClient
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}

# Cells that fail because of a bug in a codec or an adapter: (ingress, protocol, aspect) -> the bug.
KNOWN_BUGS: dict[tuple[str, str, str], str] = {}


@dataclass(frozen=True, slots=True)
class Answer:
    """What a client read of one answer, in its dialect's terms."""

    id: str
    text: str
    finish: str | None
    input_tokens: int
    output_tokens: int
    cost: Decimal


@dataclass(frozen=True, slots=True)
class Call:
    """A tool call as the dialect returned it, and the conversation that answers it."""

    id: str
    name: str
    arguments: Any  # the parsed JSON arguments
    finish: str | None
    follow_up: list[Any]  # the whole conversation, ending with the tool's result


def usd(value: Any) -> Decimal:
    return Decimal(str(value))


def price(input_tokens: int, output_tokens: int) -> Decimal:
    return Decimal(input_tokens * int(PRICES["prompt"])
                   + output_tokens * int(PRICES["completion"])) / 1_000_000


class Dialect(ABC):
    """One ingress dialect, spoken with its SDK."""

    stop: ClassVar[str]  # the finish reason of a whole answer, in the dialect's word
    length: ClassVar[str]  # ... of an answer cut by the token limit
    bad_request: ClassVar[type[Exception]]
    server_error: ClassVar[type[Exception]]

    @abstractmethod
    def client(self, gw: GatewayHandle, http: Http) -> Any: ...

    @abstractmethod
    def ask(self, c: Any, model: str = MODEL, max_tokens: int | None = None) -> Answer: ...

    @abstractmethod
    def stream(self, c: Any, model: str = MODEL) -> Answer: ...

    @abstractmethod
    def error(self, exc: Any, status: int) -> str:
        """Check the error body is the dialect's shape for `status`; return its message."""


class ToolDialect(Dialect):
    tool_finish: ClassVar[str]  # the finish reason of an answer that calls a tool

    @abstractmethod
    def call_tool(self, c: Any, stream: bool) -> Call: ...

    @abstractmethod
    def send_result(self, c: Any, call: Call) -> Answer: ...


def openai_client(gw: GatewayHandle, http: Http) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0,
                         http_client=http)


def openai_error(exc: openai.APIStatusError, status: int) -> str:
    """The gateway's one error shape (SPEC §1.1); the openai SDK hands over its `error` member."""
    assert exc.status_code == status
    assert isinstance(exc.body, dict) and exc.body["code"] == status
    return str(exc.body["message"])


def limit(max_tokens: int | None) -> Any:
    return openai.omit if max_tokens is None else max_tokens


def cost_of(usage: Any) -> Decimal:
    return usd((usage.model_extra or {})["cost"])


class OpenAIDialect(Dialect):
    """What the three openai SDK dialects share: the client and the gateway's error shape."""

    bad_request, server_error = openai.BadRequestError, openai.InternalServerError

    def client(self, gw: GatewayHandle, http: Http) -> openai.OpenAI:
        return openai_client(gw, http)

    def error(self, exc: openai.APIStatusError, status: int) -> str:
        return openai_error(exc, status)


class Chat(ToolDialect, OpenAIDialect):
    stop, length, tool_finish = "stop", "length", "tool_calls"
    tool: ClassVar[Any] = {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather of a city", "parameters": CITY}}

    def _answer(self, r: Any) -> Answer:
        choice = r.choices[0]
        return Answer(r.id, choice.message.content, choice.finish_reason, r.usage.prompt_tokens,
                      r.usage.completion_tokens, cost_of(r.usage))

    def ask(self, c: openai.OpenAI, model: str = MODEL, max_tokens: int | None = None) -> Answer:
        return self._answer(c.chat.completions.create(
            model=model, messages=[{"role": "user", "content": PROMPT}],
            max_tokens=limit(max_tokens)))

    def stream(self, c: openai.OpenAI, model: str = MODEL) -> Answer:
        with c.chat.completions.stream(
            model=model, messages=[{"role": "user", "content": PROMPT}]
        ) as s:
            deltas = [e.delta for e in s if e.type == "content.delta"]
            final = s.get_final_completion()
        assert "".join(deltas) == final.choices[0].message.content
        return self._answer(final)

    def call_tool(self, c: openai.OpenAI, stream: bool) -> Call:
        ask: list[Any] = [{"role": "user", "content": ASK_WEATHER}]
        if stream:
            with c.chat.completions.stream(model=MODEL, messages=ask, tools=[self.tool]) as s:
                r: Any = s.get_final_completion()
        else:
            r = c.chat.completions.create(model=MODEL, messages=ask, tools=[self.tool])
        choice = r.choices[0]
        [tc] = choice.message.tool_calls
        turn = {"role": "assistant", "content": None, "tool_calls": [
            {"id": tc.id, "type": "function",
             "function": {"name": tc.function.name, "arguments": tc.function.arguments}}]}
        result = {"role": "tool", "tool_call_id": tc.id, "content": TOOL_OUTPUT}
        return Call(tc.id, tc.function.name, json.loads(tc.function.arguments),
                    choice.finish_reason, [*ask, turn, result])

    def send_result(self, c: openai.OpenAI, call: Call) -> Answer:
        return self._answer(c.chat.completions.create(
            model=MODEL, messages=call.follow_up, tools=[self.tool]))


class Completions(OpenAIDialect):
    stop, length = "stop", "length"

    def ask(self, c: openai.OpenAI, model: str = MODEL, max_tokens: int | None = None) -> Answer:
        r = c.completions.create(model=model, prompt=PROMPT, max_tokens=limit(max_tokens))
        assert r.usage is not None
        return Answer(r.id, r.choices[0].text, r.choices[0].finish_reason, r.usage.prompt_tokens,
                      r.usage.completion_tokens, cost_of(r.usage))

    def stream(self, c: openai.OpenAI, model: str = MODEL) -> Answer:
        chunks = list(c.completions.create(model=model, prompt=PROMPT, stream=True))
        usage = chunks[-1].usage  # the last chunk carries usage, with no choices
        assert usage is not None and chunks[-1].choices == []
        finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1]
        return Answer(chunks[0].id, "".join(ch.choices[0].text for ch in chunks if ch.choices),
                      finish, usage.prompt_tokens, usage.completion_tokens, cost_of(usage))


class Responses(ToolDialect, OpenAIDialect):
    stop, length, tool_finish = "completed", "max_output_tokens", "completed"
    tool: ClassVar[Any] = {"type": "function", "name": "get_weather",
                           "description": "Current weather of a city", "parameters": CITY,
                           "strict": False}

    def _answer(self, r: Any) -> Answer:
        # [object] status "incomplete" says why in incomplete_details.reason.
        finish = r.incomplete_details.reason if r.status == "incomplete" else r.status
        return Answer(r.id, r.output_text, finish, r.usage.input_tokens, r.usage.output_tokens,
                      cost_of(r.usage))

    def ask(self, c: openai.OpenAI, model: str = MODEL, max_tokens: int | None = None) -> Answer:
        return self._answer(c.responses.create(model=model, input=PROMPT,
                                               max_output_tokens=limit(max_tokens)))

    def stream(self, c: openai.OpenAI, model: str = MODEL) -> Answer:
        with c.responses.stream(model=model, input=PROMPT) as s:
            deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
            final = s.get_final_response()
        assert "".join(deltas) == final.output_text
        return self._answer(final)

    def call_tool(self, c: openai.OpenAI, stream: bool) -> Call:
        ask: list[Any] = [{"role": "user", "content": ASK_WEATHER}]
        if stream:
            with c.responses.stream(model=MODEL, input=ask, tools=[self.tool]) as s:
                r: Any = s.get_final_response()
        else:
            r = c.responses.create(model=MODEL, input=ask, tools=[self.tool])
        [fc] = [item for item in r.output if item.type == "function_call"]
        result = {"type": "function_call_output", "call_id": fc.call_id, "output": TOOL_OUTPUT}
        return Call(fc.call_id, fc.name, json.loads(fc.arguments), r.status,
                    [*ask, *r.output, result])

    def send_result(self, c: openai.OpenAI, call: Call) -> Answer:
        return self._answer(c.responses.create(model=MODEL, input=call.follow_up,
                                               tools=[self.tool]))


class Messages(ToolDialect):
    stop, length, tool_finish = "end_turn", "max_tokens", "tool_use"
    bad_request, server_error = anthropic.BadRequestError, anthropic.InternalServerError
    tool: ClassVar[Any] = {"name": "get_weather", "description": "Current weather of a city",
                           "input_schema": CITY}

    def client(self, gw: GatewayHandle, http: Http) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=gw.url, api_key="sk-client", max_retries=0,
                                   http_client=http)

    def error(self, exc: anthropic.APIStatusError, status: int) -> str:
        # [errors] {"type": "error", "error": {"type": ..., "message": ...}}
        assert exc.status_code == status
        assert isinstance(exc.body, dict) and exc.body["type"] == "error"
        kind = {400: "invalid_request_error", 502: "api_error"}[status]
        assert exc.body["error"]["type"] == kind
        return str(exc.body["error"]["message"])

    def _answer(self, m: Any, cost: Decimal) -> Answer:
        text = "".join(b.text for b in m.content if b.type == "text")
        return Answer(m.id, text, m.stop_reason, m.usage.input_tokens, m.usage.output_tokens, cost)

    def ask(self, c: anthropic.Anthropic, model: str = MODEL,
            max_tokens: int | None = None) -> Answer:
        m = c.messages.create(model=model, max_tokens=max_tokens or 100,
                              messages=[{"role": "user", "content": PROMPT}])
        return self._answer(m, cost_of(m.usage))

    def stream(self, c: anthropic.Anthropic, model: str = MODEL) -> Answer:
        with c.messages.stream(model=model, max_tokens=100,
                               messages=[{"role": "user", "content": PROMPT}]) as s:
            events = list(s)
            final: Any = s.get_final_message()
        assert "".join(e.text for e in events if e.type == "text") == final.content[0].text
        # The SDK's snapshot keeps the standard usage members; the gateway's cost rides on
        # message_delta's usage.
        [delta] = [e for e in events if e.type == "message_delta"]
        return self._answer(final, cost_of(delta.usage))

    def call_tool(self, c: anthropic.Anthropic, stream: bool) -> Call:
        ask: list[Any] = [{"role": "user", "content": ASK_WEATHER}]
        if stream:
            with c.messages.stream(model=MODEL, max_tokens=200, messages=ask,
                                   tools=[self.tool]) as s:
                m: Any = s.get_final_message()
        else:
            m = c.messages.create(model=MODEL, max_tokens=200, messages=ask,
                                  tools=[self.tool])
        [use] = [b for b in m.content if b.type == "tool_use"]
        result = {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use.id, "content": TOOL_OUTPUT}]}
        return Call(use.id, use.name, use.input, m.stop_reason,
                    [*ask, {"role": "assistant", "content": m.content}, result])

    def send_result(self, c: anthropic.Anthropic, call: Call) -> Answer:
        m = c.messages.create(model=MODEL, max_tokens=200, messages=call.follow_up,
                              tools=[self.tool])
        return self._answer(m, cost_of(m.usage))


DIALECTS: dict[str, Dialect] = {
    "chat": Chat(), "completions": Completions(), "responses": Responses(), "messages": Messages(),
}


def cells(aspect: str, ingresses: tuple[str, ...] = tuple(DIALECTS)) -> list[Any]:
    """(ingress, protocol) parameters of one aspect, each marked as its cell of the matrix."""
    out = []
    for ingress in ingresses:
        assert (ingress, "*", aspect) not in MATRIX_NOT_APPLICABLE
        for protocol in MATRIX_COLUMNS:
            cell = (ingress, protocol, aspect)
            marks = [pytest.mark.matrix(*cell)]
            if cell in KNOWN_BUGS:
                marks.append(pytest.mark.xfail(reason=KNOWN_BUGS[cell], strict=True))
            out.append(pytest.param(ingress, protocol, marks=marks, id=f"{ingress}-{protocol}"))
    return out


@pytest.fixture(scope="module")
def http() -> Iterator[Http]:
    """One HTTP client under every SDK client of this module (both SDKs take the same class):
    building one, with its TLS context, costs more than a whole cell's requests on loopback."""
    with openai.DefaultHttpxClient() as client:
        yield client


def serve(stack: Stack, http: Http, ingress: str, protocol: str,
          **sim_opts: Any) -> tuple[SimHandle, GatewayHandle, Dialect, Any]:
    sim = stack.sim(protocol, **sim_opts)
    gw = stack.gateway(config([("up", sim, PRICES)]))
    dialect = DIALECTS[ingress]
    return sim, gw, dialect, dialect.client(gw, http)


def generation(http: Http, gw: GatewayHandle, gen_id: str) -> dict[str, Any]:
    r = http.get(gw.base_url + "/generation", params={"id": gen_id})
    assert r.status_code == 200, r.text
    return r.json()["data"]


# --------------------------------------------------------------------------- the four chat dialects


@pytest.mark.parametrize(("ingress", "protocol"), cells("text"))
def test_text(stack: Stack, http: Http, ingress: str, protocol: str) -> None:
    sim, _gw, d, c = serve(stack, http, ingress, protocol, reply=REPLY)
    whole = d.ask(c)
    assert (whole.text, whole.finish) == (REPLY, d.stop)
    assert whole.id.startswith("gen-")
    # Cut by the token limit (16: OpenAI's Responses API refuses less, so its adapter raises it).
    words = [f"w{i}" for i in range(20)]
    sim.configure(reply=" ".join(words))
    cut = d.ask(c, max_tokens=16)
    assert (cut.text, cut.finish) == (" ".join(words[:16]), d.length)


@pytest.mark.parametrize(("ingress", "protocol"), cells("stream"))
def test_stream(stack: Stack, http: Http, ingress: str, protocol: str) -> None:
    _sim, gw, d, c = serve(stack, http, ingress, protocol, reply=REPLY)
    got = d.stream(c)
    assert (got.text, got.finish) == (REPLY, d.stop)
    assert generation(http, gw, got.id)["streamed"] is True


def upstream_got_the_result(sim: SimHandle, call: Call) -> None:
    """The tool's call and result reached the upstream in its protocol's own form."""
    body = sim.requests()[-1]["body"]
    if sim.protocol == "openai":
        assistant, tool = body["messages"][-2:]
        assert assistant["tool_calls"][0]["function"]["name"] == "get_weather"
        assert tool == {"role": "tool", "tool_call_id": call.id, "content": TOOL_OUTPUT}
    elif sim.protocol == "anthropic":
        assistant, user = body["messages"][-2:]
        assert [b["name"] for b in assistant["content"] if b["type"] == "tool_use"] == \
            ["get_weather"]
        [result] = user["content"]
        assert result["type"] == "tool_result" and result["tool_use_id"] == call.id
        assert TOOL_OUTPUT in json.dumps(result["content"])
    elif sim.protocol == "gemini":
        model_turn, user_turn = body["contents"][-2:]
        assert model_turn["parts"][-1]["functionCall"]["name"] == "get_weather"
        response = user_turn["parts"][0]["functionResponse"]
        assert response["name"] == "get_weather" and TOOL_OUTPUT in json.dumps(response)
    else:  # openai-responses: input items
        call_item, output = body["input"][-2:]
        assert call_item["type"] == "function_call" and call_item["name"] == "get_weather"
        assert output == {"type": "function_call_output", "call_id": call_item["call_id"],
                          "output": TOOL_OUTPUT}


TOOL_DIALECTS = {name: d for name, d in DIALECTS.items() if isinstance(d, ToolDialect)}


@pytest.mark.parametrize(("ingress", "protocol"), cells("tools", tuple(TOOL_DIALECTS)))
def test_tools(stack: Stack, http: Http, ingress: str, protocol: str) -> None:
    sim, _gw, _, c = serve(stack, http, ingress, protocol)
    d = TOOL_DIALECTS[ingress]
    plain, streamed = d.call_tool(c, stream=False), d.call_tool(c, stream=True)
    for call in (plain, streamed):
        assert call.finish == d.tool_finish and call.id
        assert call.name == "get_weather" and call.arguments == {"city": "test"}
    final = d.send_result(c, plain)
    assert final.finish == d.stop and TOOL_OUTPUT in final.text
    upstream_got_the_result(sim, plain)


@pytest.mark.parametrize(("ingress", "protocol"), cells("errors"))
def test_errors(stack: Stack, http: Http, ingress: str, protocol: str) -> None:
    sim, _gw, d, c = serve(stack, http, ingress, protocol, fault="status", fault_status=400)
    # The provider refuses the request: the client's fault, relayed as a 400, streamed or not.
    with pytest.raises(d.bad_request) as plain:
        d.ask(c)
    assert "up answered HTTP 400" in d.error(plain.value, 400)
    with pytest.raises(d.bad_request) as streamed:
        d.stream(c)
    assert "up answered HTTP 400" in d.error(streamed.value, 400)
    # A model the gateway does not know is a 400 that never reaches a provider.
    with pytest.raises(d.bad_request) as unknown:
        d.ask(c, model="nobody/serves-this")
    assert "nobody/serves-this" in d.error(unknown.value, 400)
    assert sim.count() == 2
    # The provider fails: a 502 that names it.
    sim.configure(fault_status=500)
    with pytest.raises(d.server_error) as failed:
        d.ask(c)
    assert "up answered HTTP 500" in d.error(failed.value, 502)


@pytest.mark.parametrize(("ingress", "protocol"), cells("usage"))
def test_usage(stack: Stack, http: Http, ingress: str, protocol: str) -> None:
    _sim, gw, d, c = serve(stack, http, ingress, protocol, reply=REPLY)
    expected = price(PROMPT_TOKENS, REPLY_TOKENS)
    for got in (d.ask(c), d.stream(c)):
        assert (got.input_tokens, got.output_tokens) == (PROMPT_TOKENS, REPLY_TOKENS)
        assert got.cost == expected
        g = generation(http, gw, got.id)
        assert (g["tokens_prompt"], g["tokens_completion"]) == (PROMPT_TOKENS, REPLY_TOKENS)
        assert usd(g["total_cost"]) == expected


# --------------------------------------------------------------------------- embeddings

EMBED_PRICE = Decimal("3")  # USD per 1M input tokens


def embeddings_gateway(stack: Stack, http: Http, protocol: str,
                       **sim_opts: Any) -> tuple[SimHandle, GatewayHandle, openai.OpenAI]:
    sim = stack.sim(protocol, **sim_opts)
    gw = stack.gateway(config([("up", sim, {"prompt": str(EMBED_PRICE), "completion": "0"})]))
    return sim, gw, openai_client(gw, http)


@pytest.mark.matrix("embeddings", "openai", "text")
def test_embeddings_vectors(stack: Stack, http: Http) -> None:
    _sim, _gw, c = embeddings_gateway(stack, http, "openai")
    floats = c.embeddings.create(model=MODEL, input=["a b", "c"], encoding_format="float")
    assert [(e.index, e.object, len(e.embedding)) for e in floats.data] == [
        (0, "embedding", 1536), (1, "embedding", 1536)]
    assert floats.data[0].embedding != floats.data[1].embedding
    # base64 (the SDK's default, decoded by the SDK) carries the same little-endian float32s.
    raw = c.embeddings.create(model=MODEL, input=["a b", "c"], encoding_format="base64")
    for f, b in zip(floats.data, raw.data, strict=True):
        packed = base64.b64decode(cast(str, b.embedding))  # typed as floats, a str here
        assert list(struct.unpack(f"<{len(packed) // 4}f", packed)) == f.embedding
    assert c.embeddings.create(model=MODEL, input="a b").data[0].embedding == \
        floats.data[0].embedding


@pytest.mark.matrix("embeddings", "openai", "usage")
def test_embeddings_usage(stack: Stack, http: Http) -> None:
    _sim, gw, c = embeddings_gateway(stack, http, "openai")
    r = c.embeddings.create(model=MODEL, input=["a b", "c d e"])
    assert r.usage.prompt_tokens == r.usage.total_tokens == 5
    # Per input token, rounded up to the micro-dollar the ledger keeps (SPEC §5.3).
    expected = Decimal(math.ceil(5 * EMBED_PRICE)) / 1_000_000
    assert cost_of(r.usage) == expected
    g = generation(http, gw, (r.model_extra or {})["id"])
    assert (g["tokens_prompt"], g["tokens_completion"]) == (5, 0)
    assert usd(g["total_cost"]) == expected


@pytest.mark.matrix("embeddings", "openai", "errors")
def test_embeddings_errors(stack: Stack, http: Http) -> None:
    sim, _gw, c = embeddings_gateway(stack, http, "openai", fault="status", fault_status=400)
    with pytest.raises(openai.BadRequestError) as refused:
        c.embeddings.create(model=MODEL, input="hello")
    assert "up answered HTTP 400" in openai_error(refused.value, 400)
    with pytest.raises(openai.BadRequestError) as unknown:
        c.embeddings.create(model="nobody/serves-this", input="hello")
    assert "nobody/serves-this" in openai_error(unknown.value, 400)
    sim.configure(fault_status=500)
    with pytest.raises(openai.InternalServerError) as failed:
        c.embeddings.create(model=MODEL, input="hello")
    assert "up answered HTTP 500" in openai_error(failed.value, 502)
    assert sim.count() == 2


@pytest.mark.parametrize("protocol", [
    pytest.param(p, marks=pytest.mark.matrix("embeddings", p, "errors"), id=p)
    for p in MATRIX_COLUMNS if p != "openai"])
def test_embeddings_need_an_openai_upstream(stack: Stack, http: Http,
                                            protocol: str) -> None:
    sim, _gw, c = embeddings_gateway(stack, http, protocol)
    with pytest.raises(openai.NotFoundError) as exc:
        c.embeddings.create(model=MODEL, input="hello")
    message = openai_error(exc.value, 404)
    assert "embeddings" in message and "openai" in message
    assert sim.count() == 0
