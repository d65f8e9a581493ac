"""Legacy completions and embeddings through the running gateway, with the openai SDK as client
(SPEC §1.1, §5.3): `completions.create` over upstreams of every protocol (mapped onto chat),
`embeddings.create` over openai-protocol upstreams, billed per input token and recorded."""

from __future__ import annotations

import base64
import math
import struct
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from edgeproxy import catalog
from edgeproxy.config import loads
from tests.conftest import SimHandle, Stack, config

PROTOCOLS = ["openai", "anthropic", "gemini"]
EMBED_PRICE = Decimal("3")  # USD per 1M input tokens


def usd(v: Any) -> Decimal:
    return Decimal(str(v))


def unpack(b64: Any) -> list[float]:
    raw = base64.b64decode(b64)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def charged(tokens: int, price: Decimal) -> Decimal:
    """tokens × price per 1M, rounded up to the micro-USD the ledger keeps (SPEC §5.1, §5.3)."""
    return Decimal(math.ceil(tokens * price)) / 1_000_000


def completions_gateway(stack: Stack, protocol: str, **sim_opts: Any):
    sim = stack.sim(protocol, **sim_opts)
    gw = stack.gateway(config([("up", sim, {"prompt": "2", "completion": "10"})]))
    return sim, gw, openai.OpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0)


def upstream_max_tokens(sim: SimHandle) -> int:
    body = sim.requests()[-1]["body"]
    if sim.protocol == "gemini":
        return body["generationConfig"]["maxOutputTokens"]
    return body["max_tokens"]


def upstream_prompt(sim: SimHandle) -> str:
    body = sim.requests()[-1]["body"]
    if sim.protocol == "gemini":
        [turn] = body["contents"]
        assert turn["role"] == "user"
        return turn["parts"][0]["text"]
    [message] = body["messages"]
    assert message["role"] == "user"
    content = message["content"]
    return content if isinstance(content, str) else content[0]["text"]


# --------------------------------------------------------------------------- completions


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_completion_text_and_cost(stack: Stack, protocol: str) -> None:
    sim, gw, c = completions_gateway(stack, protocol, reply="Paris is the capital")
    r = c.completions.create(model="test/model", prompt="Capital of France?", max_tokens=50)
    assert r.object == "text_completion" and r.id.startswith("gen-")
    [choice] = r.choices
    assert (choice.text, choice.finish_reason, choice.index) == ("Paris is the capital", "stop", 0)
    assert choice.model_extra["native_finish_reason"] in ("stop", "end_turn", "STOP")
    assert r.model == "test/model" and r.model_extra["provider"] == "up"
    assert r.usage.completion_tokens == 4 and r.usage.prompt_tokens > 0
    assert usd(r.usage.model_extra["cost"]) == (
        Decimal(r.usage.prompt_tokens * 2 + 4 * 10) / 1_000_000)
    # Every upstream protocol gets the prompt as the one user turn of a chat request.
    assert sim.requests()[-1]["path"] != "/v1/completions"
    assert upstream_prompt(sim) == "Capital of France?"
    assert upstream_max_tokens(sim) == 50
    g = httpx.get(gw.base_url + f"/generation?id={r.id}").json()["data"]
    assert (g["model"], g["provider_name"], g["finish_reason"]) == ("test/model", "up", "stop")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_completion_default_max_tokens_ends_with_length(stack: Stack, protocol: str) -> None:
    sim, _gw, c = completions_gateway(stack, protocol, max_reply_tokens=40)
    r = c.completions.create(model="test/model", prompt="Tell me a long story")
    # "max_tokens … Defaults to 16" for legacy completions.
    assert upstream_max_tokens(sim) == 16
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 16
    assert r.choices[0].text.startswith("Echo: Tell me a long story")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_completion_stop_sequence(stack: Stack, protocol: str) -> None:
    _sim, _gw, c = completions_gateway(stack, protocol, reply="one two three four")
    r = c.completions.create(model="test/model", prompt="count", stop=[" three"])
    assert (r.choices[0].text, r.choices[0].finish_reason) == ("one two", "stop")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_completion_streaming(stack: Stack, protocol: str) -> None:
    _sim, gw, c = completions_gateway(stack, protocol, reply="one two three")
    chunks = list(c.completions.create(model="test/model", prompt="count", stream=True))
    assert all(ch.object == "text_completion" and ch.id == chunks[0].id for ch in chunks)
    text = [ch.choices[0].text for ch in chunks if ch.choices]
    assert "".join(text) == "one two three" and len(text) >= 3
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    usage = [ch for ch in chunks if ch.usage is not None]
    assert len(usage) == 1 and usage[0] is chunks[-1] and chunks[-1].choices == []
    assert usage[0].usage.completion_tokens == 3
    assert usd(usage[0].usage.model_extra["cost"]) == (
        Decimal(usage[0].usage.prompt_tokens * 2 + 3 * 10) / 1_000_000)
    g = httpx.get(gw.base_url + f"/generation?id={chunks[0].id}").json()["data"]
    assert g["streamed"] is True and usd(g["total_cost"]) == usd(usage[0].usage.model_extra["cost"])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_completion_streaming_length(stack: Stack, protocol: str) -> None:
    _sim, _gw, c = completions_gateway(stack, protocol, max_reply_tokens=40)
    chunks = list(c.completions.create(model="test/model", prompt="go on", max_tokens=5,
                                       stream=True))
    assert len("".join(ch.choices[0].text for ch in chunks if ch.choices).split()) == 5
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_completion_stream_failing_after_content_raises_in_the_sdk(
    stack: Stack, protocol: str
) -> None:
    _sim, _gw, c = completions_gateway(stack, protocol, fault="midstream_error", drop_after=2)
    got: list[str] = []
    with pytest.raises(openai.APIError):
        for ch in c.completions.create(model="test/model", prompt="count", stream=True):
            got.extend(x.text for x in ch.choices)
    assert "".join(got)  # content had reached the client before the error event


@pytest.mark.parametrize(("extra", "fragment"), [
    ({"prompt": ["one", "two"]}, "several prompts"),
    ({"prompt": [1, 2, 3]}, "token-array prompts"),
    ({"prompt": "x", "echo": True}, "`echo`"),
    ({"prompt": "x", "suffix": "end"}, "`suffix`"),
    ({"prompt": "x", "best_of": 2}, "`best_of`"),
    ({"prompt": "x", "logprobs": 3}, "`logprobs`"),
])
def test_completion_bad_requests_are_400s(stack: Stack, extra: dict[str, Any],
                                          fragment: str) -> None:
    sim, _gw, c = completions_gateway(stack, "openai")
    with pytest.raises(openai.BadRequestError) as exc:
        c.completions.create(model="test/model", **extra)
    assert exc.value.status_code == 400 and fragment in exc.value.message
    assert exc.value.body["code"] == 400
    assert sim.count() == 0


# --------------------------------------------------------------------------- embeddings


def embeddings_gateway(stack: Stack, **sim_opts: Any):
    sim = stack.sim("openai", **sim_opts)
    gw = stack.gateway(config([("up", sim, {"prompt": str(EMBED_PRICE), "completion": "0"})],
                              model="test/embed"))
    return sim, gw, openai.OpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0)


def test_embeddings_of_a_string_are_billed_per_input_token(stack: Stack) -> None:
    sim, gw, c = embeddings_gateway(stack)
    # The SDK asks for base64 by default and decodes it.
    r = c.embeddings.create(model="test/embed", input="the quick brown fox")
    [e] = r.data
    assert (e.index, e.object, len(e.embedding)) == (0, "embedding", 1536)
    assert all(isinstance(v, float) for v in e.embedding)
    assert r.model == "test/embed"
    assert r.usage.prompt_tokens == r.usage.total_tokens == 4
    assert usd(r.usage.model_extra["cost"]) == charged(4, EMBED_PRICE)
    assert r.usage.model_extra["is_byok"] is False
    assert r.model_extra["provider"] == "up" and r.model_extra["id"].startswith("gen-")
    sent = sim.requests()[-1]
    assert sent["path"] == "/v1/embeddings"
    assert sent["body"] == {"model": "up-upstream-model", "input": "the quick brown fox",
                            "encoding_format": "base64"}
    g = httpx.get(gw.base_url + f"/generation?id={r.model_extra['id']}").json()["data"]
    assert (g["model"], g["provider_name"], g["tokens_prompt"], g["tokens_completion"]) == (
        "test/embed", "up", 4, 0)
    assert usd(g["total_cost"]) == usd(r.usage.model_extra["cost"])
    assert g["streamed"] is False and g["cancelled"] is False


def test_embeddings_of_a_list_with_dimensions_and_both_encodings(stack: Stack) -> None:
    sim, _gw, c = embeddings_gateway(stack)
    texts = ["a b", "c", "d e f"]
    floats = c.embeddings.create(model="test/embed", input=texts, encoding_format="float",
                                 dimensions=64, extra_body={"provider": {"order": ["up"]}})
    assert [(e.index, len(e.embedding)) for e in floats.data] == [(0, 64), (1, 64), (2, 64)]
    assert floats.usage.prompt_tokens == 6
    assert usd(floats.usage.model_extra["cost"]) == charged(6, EMBED_PRICE)
    sent = sim.requests()[-1]["body"]
    assert sent == {"model": "up-upstream-model", "input": texts, "encoding_format": "float",
                    "dimensions": 64}  # gateway-only members (`provider`) stay behind
    b64 = c.embeddings.create(model="test/embed", input=texts, encoding_format="base64",
                              dimensions=64)
    assert sim.requests()[-1]["body"]["encoding_format"] == "base64"
    # Asked for explicitly, base64 reaches the caller as it is: little-endian float32.
    assert [unpack(e.embedding) for e in b64.data] == [e.embedding for e in floats.data]
    tokens = c.embeddings.create(model="test/embed", input=[[1, 2, 3], [4, 5]])
    assert len(tokens.data) == 2 and tokens.usage.prompt_tokens == 5


def test_embeddings_need_an_openai_protocol_endpoint(stack: Stack) -> None:
    ant = stack.sim("anthropic")
    gw = stack.gateway(config([("claude", ant, {"prompt": "1", "completion": "5"})]))
    c = openai.OpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0)
    with pytest.raises(openai.NotFoundError) as exc:
        c.embeddings.create(model="test/model", input="hello")
    assert "embeddings" in exc.value.message and "openai" in exc.value.message
    assert ant.count() == 0


def test_embeddings_skip_endpoints_of_other_protocols(stack: Stack) -> None:
    ant, oai = stack.sim("anthropic"), stack.sim("openai")
    gw = stack.gateway(config([("claude", ant, {"prompt": "0.01", "completion": "0"}),
                               ("oai", oai, {"prompt": "1", "completion": "0"})]))
    c = openai.OpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0)
    r = c.embeddings.create(model="test/model", input="one two")
    assert r.model_extra["provider"] == "oai" and ant.count() == 0 and oai.count() == 1


@pytest.mark.parametrize(("body", "fragment"), [
    ({"input": ""}, "`input` is empty"),
    ({"input": []}, "`input` is empty"),
    ({"input": ["a", ""]}, "empty string"),
    ({"input": [{"text": "a"}]}, "`input` must be"),
    ({}, "`input` is required"),
    ({"input": "a", "dimensions": 0}, "`dimensions`"),
    ({"input": "a", "encoding_format": "hex"}, "`encoding_format`"),
    ({"input": "a", "stream": True}, "not streamed"),
])
def test_embeddings_bad_input_is_a_400(stack: Stack, body: dict[str, Any], fragment: str) -> None:
    sim, gw, _c = embeddings_gateway(stack)
    r = httpx.post(gw.base_url + "/embeddings", json={"model": "test/embed", **body})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == 400 and fragment in err["message"]
    assert sim.count() == 0


def test_embeddings_upstream_client_error_is_relayed(stack: Stack) -> None:
    sim, _gw, c = embeddings_gateway(stack)
    with pytest.raises(openai.BadRequestError) as exc:
        c.embeddings.create(model="test/embed", input="w " * 9000)
    assert "maximum context length" in exc.value.message and sim.count() == 1


# --------------------------------------------------------------------------- the catalog


def test_catalog_embedding_models_are_listed_and_served(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    sims = {p: stack.sim(p) for p in PROTOCOLS}
    doc = catalog.builtin_document()
    lines = ["[server]", 'listen = "127.0.0.1:0"', 'auth = "none"',
             "[storage]", f'ledger = "sqlite:///{tmp_path}/l.db"']
    for name, prov in doc["providers"].items():
        sim = sims.get(prov.get("protocol", "openai"), sims["openai"])
        lines += [f"[providers.{name}]", f'base_url = "{sim.base_url}"']
        monkeypatch.setenv(prov["api_key_env"], "sk-test-" + name)
    gw = stack.gateway_from(loads("\n".join(lines) + "\n"))
    listed = httpx.get(gw.base_url + "/models?output_modalities=embeddings").json()["data"]
    by_id = {m["id"]: m for m in listed}
    assert set(by_id) == {"openai/text-embedding-3-small", "openai/text-embedding-3-large",
                          "mistralai/mistral-embed"}
    assert by_id["openai/text-embedding-3-small"]["pricing"]["prompt"] == "0.00000002"
    assert by_id["openai/text-embedding-3-large"]["pricing"]["prompt"] == "0.00000013"
    assert all(m["architecture"]["output_modalities"] == ["embeddings"] for m in listed)
    # As on OpenRouter, the default listing is text models; `all` includes the embedding ones.
    default = {m["id"] for m in httpx.get(gw.base_url + "/models").json()["data"]}
    everything = httpx.get(gw.base_url + "/models?output_modalities=all").json()["data"]
    assert not default & set(by_id) and set(by_id) <= {m["id"] for m in everything}
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    model = c.models.retrieve("openai/text-embedding-3-small")
    assert model.id == "openai/text-embedding-3-small"
    assert model.model_extra["top_provider"]["context_length"] == 8191
    r = c.embeddings.create(model="openai/text-embedding-3-large", input="one two three")
    assert len(r.data[0].embedding) == 3072  # the upstream model's own size
    assert sims["openai"].requests()[-1]["body"]["model"] == "text-embedding-3-large"
    assert usd(r.usage.model_extra["cost"]) == charged(3, Decimal("0.13"))
    r = c.embeddings.create(model="mistralai/mistral-embed", input="bonjour")
    assert r.model_extra["provider"] == "mistral"
