"""Reasoning end to end (SPEC §1.1, §3; issue 12): OpenRouter's `reasoning` (and OpenAI's
`reasoning_effort`, the legacy `include_reasoning`, the `:thinking` variant) reaches every upstream
protocol in its own form; the answer's reasoning comes back as `reasoning` and typed
`reasoning_details` (whole and streamed), is billed as completion tokens, and is restored upstream
when a client sends it back — driven with the openai and anthropic SDKs through the running
gateway against the simulated providers, whose recorded requests show what each upstream got."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest
from openrouter import OpenRouter

from edgeproxy.config import DEFAULT_PARAMETERS
from edgeproxy.simulate.anthropic import signature as claude_signature
from edgeproxy.simulate.gemini import SKIP_SIGNATURE
from edgeproxy.simulate.gemini import signature as gemini_signature
from tests.conftest import GatewayHandle, SimHandle, Stack, config
from tests.functional.test_translation import WEATHER_TOOL

REASONING_PARAMS = [*DEFAULT_PARAMETERS, "reasoning"]
# The upstream model id picks what a translation depends on (a Gemini family's budget range or
# levels); each is a reasoning model.
MODELS = {"anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash", "openai": "o3",
          "openai-responses": "gpt-5-pro"}
ASK = [{"role": "user", "content": "Think about Oslo"}]
THOUGHT = "Considering: Think about Oslo"  # what every simulator thinks about ASK (4 words)
WEATHER = [{"role": "user", "content": "What is the weather in Oslo?"}]
ANSWER_WORDS = 16  # the simulators' default answer length


_CLIENTS: list[Any] = []  # the SDK clients of the running test, closed after it


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().__exit__(None, None, None)


def client(sdk: Any) -> Any:
    _CLIENTS.append(sdk)
    return sdk


def gateway_for(stack: Stack, protocol: str, model: str | None = None,
                params: list[str] = REASONING_PARAMS,
                **sim_opts: Any) -> tuple[SimHandle, GatewayHandle, openai.OpenAI]:
    sim = stack.sim(protocol, **sim_opts)
    gw = stack.gateway(config(
        [("up", sim, {"prompt": "2", "completion": "10", "model": model or MODELS[protocol]})],
        model_extra={"supported_parameters": params},
    ))
    return sim, gw, client(openai.OpenAI(base_url=gw.base_url, api_key="sk-client",
                                         max_retries=0))


def sent(sim: SimHandle) -> dict[str, Any]:
    """The body the upstream received last."""
    return sim.requests()[-1]["body"]


def message_extra(r: Any) -> dict[str, Any]:
    return r.choices[0].message.model_extra or {}


def cost(usage: Any) -> Decimal:
    return Decimal(str(usage.model_extra["cost"]))


def collect(chunks: list[Any]) -> dict[str, Any]:
    """A stream as an OpenRouter client reassembles it: reasoning text appended, reasoning_details
    pieces of one index joined (text appended, the signature kept), tool calls by index."""
    out: dict[str, Any] = {"reasoning": "", "details": [], "content": "", "calls": {},
                           "usage": None, "finish": None, "id": chunks[0].id}
    for ch in chunks:
        if not ch.choices:
            out["usage"] = ch.usage
            continue
        choice = ch.choices[0]
        delta = choice.delta
        extra = delta.model_extra or {}
        out["reasoning"] += extra.get("reasoning") or ""
        for item in extra.get("reasoning_details") or ():
            last = out["details"][-1] if out["details"] else None
            if (item["type"] == "reasoning.text" and last is not None
                    and last["type"] == "reasoning.text" and last["index"] == item["index"]):
                last["text"] += item.get("text") or ""
                if item.get("signature"):
                    last["signature"] = item["signature"]
            else:
                out["details"].append(dict(item))
        out["content"] += delta.content or ""
        for tc in delta.tool_calls or ():
            call = out["calls"].setdefault(tc.index, {"id": None, "type": "function",
                                                      "function": {"name": "", "arguments": ""}})
            call["id"] = call["id"] or tc.id
            if tc.function and tc.function.name:
                call["function"]["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                call["function"]["arguments"] += tc.function.arguments
        out["finish"] = choice.finish_reason or out["finish"]
    return out


def turn(c: openai.OpenAI, stream: bool, **kwargs: Any) -> dict[str, Any]:
    """One chat request, whole or streamed, as {reasoning, details, content, calls, usage}."""
    if stream:
        return collect(list(c.chat.completions.create(model="test/model", stream=True,
                                                      **kwargs)))
    r = c.chat.completions.create(model="test/model", **kwargs)
    extra = message_extra(r)
    msg = r.choices[0].message
    return {"reasoning": extra.get("reasoning") or "",
            "details": extra.get("reasoning_details") or [],
            "content": msg.content or "",
            "calls": {i: tc.model_dump(include={"id", "type", "function"})
                      for i, tc in enumerate(msg.tool_calls or ())},
            "usage": r.usage, "finish": r.choices[0].finish_reason, "id": r.id}


def text_item(text: str, fmt: str, index: int, sig: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "reasoning.text", "text": text}
    if sig is not None:
        item["signature"] = sig
    return {**item, "id": None, "format": fmt, "index": index}


# =============================================================================== request mapping


@pytest.mark.parametrize(("extra", "max_tokens", "budget"), [
    ({"reasoning": {"effort": "high"}}, 10000, 8000),  # 0.8 of max_tokens
    ({"reasoning": {"effort": "medium"}}, None, 8192),  # of the endpoint's max output (16384)
    ({"reasoning": {"effort": "low"}}, 3000, 1024),  # 600, raised to Anthropic's minimum
    ({"reasoning_effort": "minimal"}, 20000, 2000),  # OpenAI's top-level form
    ({"reasoning": {"max_tokens": 2000}}, 4000, 2000),  # a budget as given
    ({"reasoning": {"max_tokens": 9000}}, 4000, 3999),  # kept below max_tokens
    ({"reasoning": {"enabled": True}}, 10000, 5000),  # on: medium
    ({"include_reasoning": True}, 10000, 5000),  # legacy: the same as reasoning {}
    ({"reasoning": {"effort": "high"}}, 1000, None),  # no room for 1024: off, as OpenRouter
    ({"reasoning": {"effort": "none"}}, 10000, None),
    ({"reasoning": {"enabled": False}}, 10000, None),
    ({"reasoning": {"exclude": True}}, 10000, None),  # says nothing of thinking itself
])
def test_anthropic_thinking_budget(stack: Stack, extra: dict[str, Any], max_tokens: int | None,
                                   budget: int | None) -> None:
    sim, _gw, c = gateway_for(stack, "anthropic")
    limit = {"max_tokens": max_tokens} if max_tokens else {}
    r = c.chat.completions.create(model="test/model", messages=ASK, temperature=0.5,
                                  extra_body={**extra, "top_k": 40}, **limit)
    body = sent(sim)
    if budget is None:
        assert "thinking" not in body and "reasoning_details" not in message_extra(r)
        assert (body["temperature"], body["top_k"]) == (0.5, 40)
        return
    assert body["thinking"] == {"type": "enabled", "budget_tokens": budget}
    # "Feature compatibility": thinking takes no temperature or top_k.
    assert "temperature" not in body and "top_k" not in body
    assert "reasoning" not in body and "reasoning_effort" not in body
    assert message_extra(r)["reasoning"] == THOUGHT


@pytest.mark.parametrize(("model", "reasoning", "max_tokens", "expected"), [
    ("gemini-2.5-flash", {"effort": "high"}, 10000, {"thinkingBudget": 8000}),
    ("gemini-2.5-flash", {"effort": "high"}, 31000, {"thinkingBudget": 24576}),  # Flash's top
    ("gemini-2.5-flash-lite", {"effort": "minimal"}, 1000, {"thinkingBudget": 512}),  # its floor
    ("gemini-2.5-pro", {"max_tokens": 50}, 4000, {"thinkingBudget": 128}),  # Pro's floor
    ("gemini-2.5-flash", {"effort": "none"}, 4000, {"thinkingBudget": 0}),  # off
    ("gemini-2.5-pro", {"effort": "none"}, 4000, {"thinkingBudget": 128}),  # Pro cannot stop
    ("gemini-3-pro-preview", {"effort": "xhigh"}, 4000, {"thinkingLevel": "high"}),
    ("gemini-3-pro-preview", {"effort": "medium"}, 4000, {"thinkingLevel": "high"}),  # low|high
    ("gemini-3-pro-preview", {"effort": "minimal"}, 4000, {"thinkingLevel": "low"}),
    ("gemini-3-flash-preview", {"effort": "minimal"}, 4000, {"thinkingLevel": "minimal"}),
    ("gemini-3-pro-preview", {"max_tokens": 2048}, 4000, {"thinkingBudget": 2048}),
])
def test_gemini_thinking_config(stack: Stack, model: str, reasoning: dict[str, Any],
                                max_tokens: int, expected: dict[str, Any]) -> None:
    sim, _gw, c = gateway_for(stack, "gemini", model=model)
    r = c.chat.completions.create(model="test/model", messages=ASK, max_tokens=max_tokens,
                                  extra_body={"reasoning": reasoning})
    on = reasoning.get("effort") != "none"
    config_sent = sent(sim)["generationConfig"]["thinkingConfig"]
    assert config_sent == ({**expected, "includeThoughts": True} if on else expected)
    # Thoughts are shown when reasoning is on (includeThoughts); Pro thinks anyway, unseen.
    assert message_extra(r).get("reasoning") == (THOUGHT if on else None)
    assert r.usage.completion_tokens_details.reasoning_tokens == (4 if on or "pro" in model
                                                                  else 0)


@pytest.mark.parametrize(("extra", "max_tokens", "effort"), [
    ({"reasoning": {"effort": "high"}}, None, "high"),
    ({"reasoning": {"effort": "max"}}, None, "xhigh"),  # OpenAI's highest
    ({"reasoning": {"max_tokens": 3000}}, 4000, "high"),  # a budget -> the nearest effort
    ({"reasoning": {"max_tokens": 1000}}, 4000, "low"),
    ({"reasoning": {"enabled": True}}, None, "medium"),
    ({"reasoning_effort": "low"}, None, "low"),
    ({"reasoning": {"effort": "none"}}, None, "none"),
    ({"reasoning": {"exclude": True}}, None, None),
    ({}, None, None),
])
def test_openai_reasoning_effort(stack: Stack, extra: dict[str, Any], max_tokens: int | None,
                                 effort: str | None) -> None:
    sim, _gw, c = gateway_for(stack, "openai")
    limit = {"max_tokens": max_tokens} if max_tokens else {}
    r = c.chat.completions.create(model="test/model", messages=ASK, extra_body=extra, **limit)
    body = sent(sim)
    # The simulator, as OpenAI, refuses OpenRouter's members: none of them reached it.
    assert "reasoning" not in body and "include_reasoning" not in body
    assert body.get("reasoning_effort") == effort
    # OpenAI's reasoning is hidden: counted in usage, billed as completion tokens.
    thought = 4 if effort not in (None, "none") else 0
    assert r.usage.completion_tokens_details.reasoning_tokens == thought
    assert r.usage.completion_tokens == ANSWER_WORDS + thought


def test_openai_endpoint_without_reasoning_gets_none_of_it(stack: Stack) -> None:
    # gpt-4o-like: its supported parameters do not list reasoning, and OpenAI would answer 400 to
    # reasoning_effort; earlier turns' reasoning is dropped from the messages too.
    sim, _gw, c = gateway_for(stack, "openai", model="gpt-4o", params=DEFAULT_PARAMETERS)
    history = [*ASK, {"role": "assistant", "content": "Oslo is in Norway.",
                      "reasoning": THOUGHT, "reasoning_details": [
                          text_item(THOUGHT, "anthropic-claude-v1", 0, "sig")]},
               {"role": "user", "content": "And Bergen?"}]
    r = c.chat.completions.create(model="test/model", messages=history, reasoning_effort="high",
                                  extra_body={"reasoning": {"effort": "high"},
                                              "include_reasoning": True})
    assert r.choices[0].message.content
    body = sent(sim)
    assert not {"reasoning", "reasoning_effort", "include_reasoning"} & set(body)
    assert body["messages"][1] == {"role": "assistant", "content": "Oslo is in Norway."}


def test_openai_responses_reasoning(stack: Stack) -> None:
    sim, _gw, c = gateway_for(stack, "openai-responses")
    r = c.chat.completions.create(model="test/model", messages=ASK, max_tokens=4000,
                                  extra_body={"reasoning": {"effort": "high",
                                                            "summary": "auto"}})
    body = sent(sim)
    assert body["reasoning"] == {"effort": "high", "summary": "auto"}
    # store is false: the reasoning comes back encrypted, for the next turn to send back.
    assert body["include"] == ["reasoning.encrypted_content"] and body["store"] is False
    extra = message_extra(r)
    assert extra["reasoning"] == THOUGHT
    assert [d["type"] for d in extra["reasoning_details"]] == [
        "reasoning.summary", "reasoning.encrypted"]
    assert {d["format"] for d in extra["reasoning_details"]} == {"openai-responses-v1"}


def test_conflicting_efforts_are_a_400(stack: Stack) -> None:
    sim, _gw, c = gateway_for(stack, "anthropic")
    with pytest.raises(openai.BadRequestError, match="reasoning_effort"):
        c.chat.completions.create(model="test/model", messages=ASK, reasoning_effort="low",
                                  extra_body={"reasoning": {"effort": "high"}})
    with pytest.raises(openai.BadRequestError, match="reasoning"):
        c.chat.completions.create(model="test/model", messages=ASK,
                                  extra_body={"reasoning": {"effort": "extreme"}})
    assert sim.count() == 0


# =============================================================================== the answer


def expected_details(protocol: str, model: str, answer: str) -> list[dict[str, Any]]:
    """The reasoning_details of ASK's answer, per upstream (with the simulators' signatures)."""
    if protocol == "anthropic":
        return [text_item(THOUGHT, "anthropic-claude-v1", 0, claude_signature(THOUGHT))]
    if protocol == "gemini":
        items = [text_item(THOUGHT, "google-gemini-v1", 0)]
        if "gemini-3" in model:  # Gemini 3 signs the last part of a text answer too
            items.append({"type": "reasoning.encrypted", "data": gemini_signature({"text": answer}),
                          "id": None, "format": "google-gemini-v1", "index": 1})
        return items
    return []  # OpenAI shows none of its reasoning


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("protocol", "model"), [
    ("anthropic", "claude-sonnet-4-5"), ("gemini", "gemini-2.5-flash"),
    ("gemini", "gemini-3-pro-preview"), ("openai", "o3"), ("openai-responses", "gpt-5-pro"),
])
def test_reasoning_in_the_answer_and_its_bill(stack: Stack, protocol: str, model: str,
                                              stream: bool) -> None:
    _sim, gw, c = gateway_for(stack, protocol, model=model)
    got = turn(c, stream, messages=ASK, max_tokens=4000,
               extra_body={"reasoning": {"effort": "high"}})
    assert got["content"].startswith("Echo: Think about Oslo")
    details = got["details"]
    if protocol == "openai-responses":
        # No summary asked for: only OpenAI's encrypted reasoning, by its item id.
        assert [(d["type"], d["format"]) for d in details] == [
            ("reasoning.encrypted", "openai-responses-v1")]
        assert details[0]["id"].startswith("rs_") and details[0]["data"]
        assert got["reasoning"] == ""
    else:
        assert details == expected_details(protocol, model, got["content"])
        assert got["reasoning"] == ("" if protocol == "openai" else THOUGHT)
    # Reasoning tokens are completion tokens: reported apart, billed at the completion price.
    usage = got["usage"]
    thought = usage.completion_tokens_details.reasoning_tokens
    # (Anthropic reports no split: estimated from the thinking text at ~4 characters a token.)
    assert thought == (-(-len(THOUGHT) // 4) if protocol == "anthropic" else 4)
    assert usage.completion_tokens == ANSWER_WORDS + 4
    assert cost(usage) == Decimal(usage.prompt_tokens * 2 + usage.completion_tokens * 10) / 10**6
    g = httpx.get(gw.base_url + "/generation", params={"id": got["id"]}).json()["data"]
    assert (g["tokens_completion"], g["native_tokens_reasoning"]) == (
        usage.completion_tokens, thought)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("protocol", ["anthropic", "gemini"])
@pytest.mark.parametrize("extra", [{"reasoning": {"effort": "high", "exclude": True}},
                                   {"reasoning_effort": "high", "include_reasoning": False}])
def test_excluded_reasoning_is_hidden_but_billed(stack: Stack, protocol: str, stream: bool,
                                                 extra: dict[str, Any]) -> None:
    sim, _gw, c = gateway_for(stack, protocol)
    got = turn(c, stream, messages=ASK, max_tokens=4000, extra_body=extra)
    assert (got["reasoning"], got["details"]) == ("", [])
    assert got["content"].startswith("Echo: Think about Oslo")
    body = sent(sim)
    if protocol == "anthropic":
        assert body["thinking"] == {"type": "enabled", "budget_tokens": 3200}  # still thinks
    else:  # still thinks, its thoughts not even sent
        assert body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 3200}
    usage = got["usage"]
    assert usage.completion_tokens == ANSWER_WORDS + 4 and usage.completion_tokens_details.reasoning_tokens
    assert cost(usage) == Decimal(usage.prompt_tokens * 2 + usage.completion_tokens * 10) / 10**6


# =============================================================================== multi-turn


def tool_turn(c: openai.OpenAI, stream: bool, **extra: Any) -> tuple[dict[str, Any], list[Any]]:
    """A first turn that calls the weather tool with reasoning on; the assistant message a
    client sends back (with its reasoning_details), the tool's result after it."""
    got = turn(c, stream, messages=WEATHER, tools=[WEATHER_TOOL], max_tokens=4000,
               extra_body={"reasoning": {"effort": "high"}, **extra})
    assert got["finish"] == "tool_calls"
    call = got["calls"][0]
    assistant = {"role": "assistant", "content": got["content"] or None, "tool_calls": [call],
                 "reasoning_details": got["details"]}
    return got, [*WEATHER, assistant,
                 {"role": "tool", "tool_call_id": call["id"], "content": "12 degrees and rain"}]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_second_claude_turn_carries_the_first_turns_signature(stack: Stack, stream: bool) -> None:
    sim, _gw, c = gateway_for(stack, "anthropic")
    first, history = tool_turn(c, stream)
    thought = "Considering: What is the weather in Oslo?"
    assert first["details"] == [
        text_item(thought, "anthropic-claude-v1", 0, claude_signature(thought))]
    final = turn(c, stream, messages=history, tools=[WEATHER_TOOL], max_tokens=4000,
                 extra_body={"reasoning": {"effort": "high"}})
    assert "12 degrees and rain" in final["content"]
    body = sent(sim)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 3200}
    # "Preserving thinking blocks": the signed block, unmodified, first in its assistant turn.
    blocks = body["messages"][1]["content"]
    assert blocks[0] == {"type": "thinking", "thinking": thought,
                         "signature": claude_signature(thought)}
    assert [b["type"] for b in blocks[1:]] == ["text", "tool_use"]
    assert body["messages"][2]["content"][0]["type"] == "tool_result"


def test_claude_turn_with_redacted_thinking_restores_it(stack: Stack) -> None:
    sim, _gw, c = gateway_for(stack, "anthropic")
    ask = [{"role": "user", "content": "What is the weather in Oslo? Redact your thoughts."}]
    got = turn(c, False, messages=ask, tools=[WEATHER_TOOL], max_tokens=4000,
               extra_body={"reasoning": {"effort": "high"}})
    kinds = [(d["type"], d["index"]) for d in got["details"]]
    assert kinds == [("reasoning.text", 0), ("reasoning.encrypted", 1)]
    call = got["calls"][0]
    turn(c, False, tools=[WEATHER_TOOL], max_tokens=4000,
         extra_body={"reasoning": {"effort": "high"}}, messages=[
             *ask, {"role": "assistant", "content": got["content"], "tool_calls": [call],
                    "reasoning_details": got["details"]},
             {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}])
    blocks = sent(sim)["messages"][1]["content"]
    assert [b["type"] for b in blocks] == ["thinking", "redacted_thinking", "text", "tool_use"]
    assert blocks[1]["data"] == got["details"][1]["data"]


def test_claude_continuation_without_its_thinking(stack: Stack) -> None:
    sim, _gw, c = gateway_for(stack, "anthropic")
    _first, history = tool_turn(c, False)
    # A client that dropped reasoning_details: thinking is off for this request (as the API does
    # when a turn toggles it), so the continuation still works.
    del history[1]["reasoning_details"]
    final = turn(c, False, messages=history, tools=[WEATHER_TOOL], max_tokens=4000,
                 extra_body={"reasoning": {"effort": "high"}})
    assert "12 degrees and rain" in final["content"]
    assert "thinking" not in sent(sim)
    # An altered signature is the upstream's to refuse, and the client hears of it.
    _first, history = tool_turn(c, False)
    history[1]["reasoning_details"][0]["signature"] = claude_signature("something else")
    with pytest.raises(openai.BadRequestError, match="Invalid `signature`"):
        turn(c, False, messages=history, tools=[WEATHER_TOOL], max_tokens=4000,
             extra_body={"reasoning": {"effort": "high"}})


_TOOL_LOOP = [
    {"role": "user", "content": "weather?"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "w",
                                       "input": {}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                  "content": "sunny"}]},
]
_CLAUDE = {"model": "claude-sonnet-4-5", "max_tokens": 2000,
           "thinking": {"type": "enabled", "budget_tokens": 1024}}
_GEMINI_CALL = [{"role": "user", "parts": [{"text": "weather?"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "w", "args": {}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "w",
                                                                 "response": {"r": 1}}}]}]


@pytest.mark.parametrize(("protocol", "path", "body", "error"), [
    ("anthropic", "/messages", {**_CLAUDE, "messages": _TOOL_LOOP},
     "Expected `thinking` or `redacted_thinking`"),
    ("anthropic", "/messages", {**_CLAUDE, "messages": ASK, "thinking": {
        "type": "enabled", "budget_tokens": 1000}}, "greater than or equal to 1024"),
    ("anthropic", "/messages", {**_CLAUDE, "messages": ASK, "max_tokens": 1024},
     "`max_tokens` must be greater"),
    ("anthropic", "/messages", {**_CLAUDE, "messages": ASK, "temperature": 0.5},
     "`temperature` may only be set to 1"),
    ("anthropic", "/messages", {**_CLAUDE, "messages": ASK, "tool_choice": {"type": "any"},
                                "tools": [{"name": "w", "input_schema": {"type": "object"}}]},
     "forces tool use"),
    ("gemini", "/models/gemini-3-pro-preview:generateContent", {"contents": _GEMINI_CALL},
     "missing a thought_signature"),
    ("gemini", "/models/gemini-2.5-flash:generateContent", {"contents": [
        {"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {
        "thinkingConfig": {"thinkingBudget": 30000}}}, "between 1 and 24576"),
    ("gemini", "/models/gemini-2.5-pro:generateContent", {"contents": [
        {"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {
        "thinkingConfig": {"thinkingBudget": 0}}}, "only works in thinking mode"),
    ("openai", "/chat/completions", {"model": "o3", "messages": ASK, "reasoning": {}},
     "Unrecognized request argument supplied: reasoning"),
    ("openai-responses", "/responses", {"model": "gpt-5-pro", "store": False, "input": [
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"role": "user", "content": "hi"}]}, "Items are not persisted"),
])
def test_simulators_refuse_what_their_vendor_refuses(stack: Stack, protocol: str, path: str,
                                                     body: dict[str, Any], error: str) -> None:
    """So that what the gateway sends them (the restored thinking above) is tested for real."""
    sim = stack.sim(protocol)
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01", "x-goog-api-key": "k",
               "Authorization": "Bearer k"}
    with httpx.Client() as http:
        r = http.post(sim.base_url + path, headers=headers, json=body)
    assert r.status_code == 400 and error in r.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_second_gemini_3_turn_carries_the_thought_signature(stack: Stack, stream: bool) -> None:
    sim, _gw, c = gateway_for(stack, "gemini", model="gemini-3-pro-preview")
    first, history = tool_turn(c, stream)
    call = first["calls"][0]
    signed = [d for d in first["details"] if d["type"] == "reasoning.encrypted"]
    # OpenRouter's form: the thought signature as an encrypted item, by the call's id.
    assert [(d["id"], d["format"]) for d in signed] == [(call["id"], "google-gemini-v1")]
    final = turn(c, stream, messages=history, tools=[WEATHER_TOOL], max_tokens=4000,
                 extra_body={"reasoning": {"effort": "high"}})
    assert "12 degrees and rain" in final["content"]
    part = sent(sim)["contents"][1]["parts"][-1]
    assert "functionCall" in part and part["thoughtSignature"] == signed[0]["data"]
    assert part["thoughtSignature"] != SKIP_SIGNATURE


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_second_responses_turn_carries_the_encrypted_reasoning(stack: Stack,
                                                               stream: bool) -> None:
    sim, _gw, c = gateway_for(stack, "openai-responses")
    first, history = tool_turn(c, stream)
    encrypted = [d for d in first["details"] if d["type"] == "reasoning.encrypted"]
    assert len(encrypted) == 1
    final = turn(c, stream, messages=history, tools=[WEATHER_TOOL], max_tokens=4000,
                 extra_body={"reasoning": {"effort": "high"}})
    assert "12 degrees and rain" in final["content"]
    items = sent(sim)["input"]
    assert [i["type"] for i in items] == [
        "message", "reasoning", "function_call", "function_call_output"]
    assert items[1] == {"type": "reasoning", "id": encrypted[0]["id"], "summary": [],
                        "encrypted_content": encrypted[0]["data"]}


# =============================================================================== routing


@pytest.mark.parametrize(("protocol", "field", "expected"), [
    ("anthropic", "thinking", {"type": "enabled", "budget_tokens": 3200}),  # high: 0.8 × 4000
    ("openai", "reasoning_effort", "high"),
    ("gemini", "generationConfig", {"maxOutputTokens": 4000, "thinkingConfig": {
        "thinkingBudget": 3200, "includeThoughts": True}}),
])
def test_thinking_variant_turns_reasoning_on(stack: Stack, protocol: str, field: str,
                                             expected: Any) -> None:
    sim, _gw, c = gateway_for(stack, protocol)
    r = c.chat.completions.create(model="test/model:thinking", messages=ASK, max_tokens=4000)
    assert r.model == "test/model" and sent(sim)[field] == expected
    c.chat.completions.create(model="test/model", messages=ASK, max_tokens=4000)
    assert field not in sent(sim) or sent(sim)[field] == {"maxOutputTokens": 4000}


def test_require_parameters_knows_reasoning(stack: Stack) -> None:
    plain, thinker = stack.sim("openai"), stack.sim("openai")
    eps = [("plain", plain, {"prompt": "1", "completion": "1", "model": "gpt-4o",
                             "supported_parameters": DEFAULT_PARAMETERS}),
           ("thinker", thinker, {"prompt": "2", "completion": "2", "model": "o3",
                                 "supported_parameters": REASONING_PARAMS})]
    gw = stack.gateway(config(eps))
    c = client(openai.OpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0))
    order = {"order": ["plain", "thinker"]}
    asks: list[dict[str, Any]] = [
        {"reasoning": {"effort": "low"}}, {"reasoning_effort": "low"},
        {"include_reasoning": True}, {"reasoning": {"enabled": True}}]
    for extra in asks:
        r = c.chat.completions.create(model="test/model", messages=ASK, extra_body={
            **extra, "provider": {**order, "require_parameters": True}})
        assert r.model_extra["provider"] == "thinker", extra
    r = c.chat.completions.create(model="test/model:thinking", messages=ASK, extra_body={
        "provider": {**order, "require_parameters": True}})
    assert r.model_extra["provider"] == "thinker"
    # Without require_parameters the first endpoint serves, and simply gets no reasoning.
    r = c.chat.completions.create(model="test/model", messages=ASK, extra_body={
        "reasoning": {"effort": "low"}, "provider": order})
    assert r.model_extra["provider"] == "plain" and "reasoning_effort" not in sent(plain)
    # Turning reasoning off asks nothing of an endpoint.
    r = c.chat.completions.create(model="test/model", messages=ASK, extra_body={
        "reasoning": {"effort": "none"}, "provider": {**order, "require_parameters": True}})
    assert r.model_extra["provider"] == "plain"
    # A model none of whose endpoints reasons: 404 naming the requirement.
    gw2 = stack.gateway(config([eps[0]]))
    c2 = client(openai.OpenAI(base_url=gw2.base_url, api_key="sk-client", max_retries=0))
    with pytest.raises(openai.NotFoundError, match="reasoning"):
        c2.chat.completions.create(model="test/model", messages=ASK, extra_body={
            "reasoning": {"effort": "low"}, "provider": {"require_parameters": True}})


# =============================================================================== other dialects


def messages_client(gw: GatewayHandle) -> anthropic.Anthropic:
    return client(anthropic.Anthropic(base_url=gw.url, api_key="sk-client", max_retries=0))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_messages_thinking_through_gemini_3_and_back(stack: Stack, stream: bool) -> None:
    """A Messages client (a Claude-style agent) on a Gemini 3 upstream: `thinking` becomes
    thinkingConfig; the thought summary comes back as a thinking block and the thought signature
    as a redacted_thinking block, which the client sends back with its tool_use as it would to
    Anthropic, and which reaches Gemini as the functionCall's thoughtSignature."""
    sim, gw, _ = gateway_for(stack, "gemini", model="gemini-3-pro-preview")
    c = messages_client(gw)
    tool = {"name": "get_weather", "input_schema": WEATHER_TOOL["function"]["parameters"]}
    ask: dict[str, Any] = {"model": "test/model", "max_tokens": 4000, "tools": [tool],
                           "thinking": {"type": "enabled", "budget_tokens": 2048}}
    if stream:
        with c.messages.stream(messages=WEATHER, **ask) as s:
            msg = s.get_final_message()
    else:
        msg = c.messages.create(messages=WEATHER, **ask)
    assert sent(sim)["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 2048,
                                                               "includeThoughts": True}
    assert [b.type for b in msg.content] == ["thinking", "redacted_thinking", "tool_use"]
    assert msg.content[0].thinking == "Considering: What is the weather in Oslo?"
    call = msg.content[2]
    final = c.messages.create(messages=[
        *WEATHER, {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                      "content": "12 degrees and rain"}]}], **ask)
    assert "12 degrees and rain" in final.content[-1].text
    part = sent(sim)["contents"][1]["parts"][-1]
    assert part["functionCall"]["name"] == "get_weather"
    assert part["thoughtSignature"] == gemini_signature(part)  # the real one, not the skip value


def test_messages_thinking_maps_onto_openai_and_the_thinking_variant_onto_anthropic(
        stack: Stack) -> None:
    sim, gw, _ = gateway_for(stack, "openai")
    c = messages_client(gw)
    c.messages.create(model="test/model", max_tokens=4000, messages=ASK,
                      thinking={"type": "enabled", "budget_tokens": 2048})
    assert sent(sim)["reasoning_effort"] == "medium"  # about half of max_tokens
    # Messages to an Anthropic upstream passes the client's body through; the variant adds
    # `thinking` to it, and the signed block comes back as Anthropic made it.
    sim, gw, _ = gateway_for(stack, "anthropic")
    msg = messages_client(gw).messages.create(model="test/model:thinking", max_tokens=4000,
                                              messages=ASK, extra_body={"temperature": 0.3})
    body = sent(sim)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 3200}
    assert "temperature" not in body
    assert msg.content[0].type == "thinking"
    assert msg.content[0].signature == claude_signature(THOUGHT)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_responses_reasoning_items_round_trip_to_claude(stack: Stack, stream: bool) -> None:
    """A Responses client (Codex-style, stateless) on a Claude upstream: the reasoning item keeps
    the signed thinking in its encrypted_content; sent back with the function call's output, it
    reaches Anthropic as the thinking block first in its turn."""
    sim, _gw, c = gateway_for(stack, "anthropic")
    tool = {"type": "function", "name": "get_weather",
            "parameters": WEATHER_TOOL["function"]["parameters"]}
    ask: dict[str, Any] = {"model": "test/model", "tools": [tool], "max_output_tokens": 4000,
                           "reasoning": {"effort": "high"}, "store": False,
                           "include": ["reasoning.encrypted_content"]}
    if stream:
        with c.responses.stream(input="What is the weather in Oslo?", **ask) as s:
            r = s.get_final_response()
    else:
        r = c.responses.create(input="What is the weather in Oslo?", **ask)
    assert sent(sim)["thinking"] == {"type": "enabled", "budget_tokens": 3200}
    kinds = [o.type for o in r.output]
    assert kinds == ["reasoning", "message", "function_call"]
    reasoning = r.output[0]
    thought = "Considering: What is the weather in Oslo?"
    assert reasoning.content[0].text == thought and reasoning.encrypted_content
    call = r.output[2]
    final = c.responses.create(input=[
        {"role": "user", "content": "What is the weather in Oslo?"},
        *[o.model_dump(exclude_none=True) for o in r.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "12 degrees"},
    ], **ask)
    assert "12 degrees" in final.output_text
    blocks = sent(sim)["messages"][1]["content"]
    assert blocks[0] == {"type": "thinking", "thinking": thought,
                         "signature": claude_signature(thought)}
    assert blocks[-1]["type"] == "tool_use"


def test_responses_reasoning_items_round_trip_to_openai_responses(stack: Stack) -> None:
    sim, _gw, c = gateway_for(stack, "openai-responses")
    tool = {"type": "function", "name": "get_weather",
            "parameters": WEATHER_TOOL["function"]["parameters"]}
    ask: dict[str, Any] = {"model": "test/model", "tools": [tool], "max_output_tokens": 4000,
                           "reasoning": {"effort": "high", "summary": "auto"}}
    r = c.responses.create(input="What is the weather in Oslo?", **ask)
    upstream = sim.requests()[-1]
    assert upstream["body"]["reasoning"] == {"effort": "high", "summary": "auto"}
    assert [o.type for o in r.output] == ["reasoning", "function_call"]
    call = r.output[1]
    c.responses.create(input=[
        {"role": "user", "content": "What is the weather in Oslo?"},
        *[o.model_dump(exclude_none=True) for o in r.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "12 degrees"},
    ], **ask)
    item = sent(sim)["input"][1]
    # OpenAI's own item again: its id, summary and encrypted_content as the upstream made them.
    assert item["type"] == "reasoning" and item["id"].startswith("rs_")
    assert item["id"] != r.output[0].id  # the upstream's item id, not the gateway's
    assert item["summary"] == [{"type": "summary_text",
                                "text": "Considering: What is the weather in Oslo?"}]
    assert item["encrypted_content"]


@pytest.mark.parametrize("protocol", ["anthropic", "gemini"])
def test_openrouter_sdk_reads_the_reasoning(stack: Stack, protocol: str) -> None:
    """The official OpenRouter SDK validates every body: its typed reasoning_details, whole and
    streamed, hold what the upstream needs back."""
    _sim, gw, _ = gateway_for(stack, protocol, model=MODELS[protocol])
    sdk = client(OpenRouter(api_key="sk-client", server_url=gw.base_url, retry_config=None))
    r = sdk.chat.send(model="test/model", messages=ASK, max_tokens=4000,
                      reasoning={"effort": "high"})
    message = r.choices[0].message
    assert message.reasoning == THOUGHT
    [item] = message.reasoning_details
    assert (item.type, item.text, item.index) == ("reasoning.text", THOUGHT, 0)
    if protocol == "anthropic":
        assert item.signature == claude_signature(THOUGHT)
    pieces = [d for ch in sdk.chat.send(model="test/model", messages=ASK, max_tokens=4000,
                                        reasoning={"effort": "high"}, stream=True)
              if ch.choices for d in ch.choices[0].delta.reasoning_details or ()]
    assert "".join(d.text for d in pieces) == THOUGHT and {d.index for d in pieces} == {0}
