"""edgeproxy.reasoning: the request's reasoning resolved once (OpenRouter's rules), the effort to
budget and budget to effort conversions, and the reasoning_details items' helpers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.errors import BadRequest
from edgeproxy.reasoning import (
    EFFORT_RATIO,
    EFFORTS,
    MIN_BUDGET,
    Ask,
    ask,
    effort_for,
    merge,
    openai_effort,
    seal,
    text_item,
    thinking_budget,
    unseal,
)
from edgeproxy.schema import decode_chat


@pytest.mark.parametrize(("effort", "max_tokens", "budget"), [
    # OpenRouter's table: max/xhigh 0.95, high 0.8, medium 0.5, low 0.2, minimal 0.1 of max_tokens
    ("max", 100_000, 95_000),
    ("xhigh", 100_000, 95_000),
    ("high", 100_000, 80_000),
    ("medium", 100_000, 50_000),
    ("low", 100_000, 20_000),
    ("minimal", 100_000, 10_000),
    ("high", 10_001, 8_000),  # rounded down
    ("high", 1_000_000, 128_000),  # capped at 128000
    ("low", 3_000, 1_024),  # never under Anthropic's minimum
    ("minimal", 0, 1_024),
])
def test_effort_to_budget(effort: str, max_tokens: int, budget: int) -> None:
    assert thinking_budget(Ask(True, effort, None, False, None), max_tokens) == budget


def test_budget_as_given_and_other_ranges() -> None:
    given_budget = Ask(True, None, 50_000, False, None)
    assert thinking_budget(given_budget, 4_000) == 50_000  # as given (the caller clamps)
    assert thinking_budget(Ask(True, None, 10, False, None), 4_000) == MIN_BUDGET
    # A Gemini family's own range: floor 512, top 24576.
    assert thinking_budget(Ask(True, "minimal", None, False, None), 1_000, 512, 24_576) == 512
    assert thinking_budget(Ask(True, "high", None, False, None), 40_000, 512, 24_576) == 24_576


@given(st.sampled_from(list(EFFORT_RATIO)), st.integers(0, 10**7))
def test_budget_bounds(effort: str, max_tokens: int) -> None:
    budget = thinking_budget(Ask(True, effort, None, False, None), max_tokens)
    assert MIN_BUDGET <= budget <= max(MIN_BUDGET, min(max_tokens, 128_000))


@pytest.mark.parametrize(("budget", "max_tokens", "effort"), [
    (3_000, 4_000, "high"), (2_000, 4_000, "medium"), (1_000, 4_000, "low"),
    (100, 4_000, "low"), (9_000, 4_000, "high"),
])
def test_budget_to_effort(budget: int, max_tokens: int, effort: str) -> None:
    assert effort_for(Ask(True, None, budget, False, None), max_tokens) == effort


@pytest.mark.parametrize(("req", "thinking", "expected"), [
    ({}, False, Ask(None, None, None, False, None)),
    ({}, True, Ask(True, "high", None, False, None)),  # :thinking: on, high effort
    ({"reasoning": {}}, False, Ask(True, "medium", None, False, None)),
    ({"reasoning": {"enabled": True}}, False, Ask(True, "medium", None, False, None)),
    ({"reasoning": {"enabled": False}}, True, Ask(False, None, None, False, None)),
    ({"reasoning": {"effort": "none"}}, False, Ask(False, "none", None, False, None)),
    ({"reasoning": {"max_tokens": 0}}, False, Ask(False, None, 0, False, None)),
    ({"reasoning": {"max_tokens": 2000}}, False, Ask(True, None, 2000, False, None)),
    ({"reasoning": {"exclude": True}}, False, Ask(None, None, None, True, None)),
    ({"reasoning": {"effort": "low", "exclude": True}}, False, Ask(True, "low", None, True, None)),
    ({"reasoning_effort": "xhigh"}, False, Ask(True, "xhigh", None, False, None)),
    ({"reasoning_effort": "low", "reasoning": {"effort": "low"}}, False,
     Ask(True, "low", None, False, None)),
    ({"include_reasoning": True}, False, Ask(True, "medium", None, False, None)),
    ({"include_reasoning": False}, False, Ask(None, None, None, True, None)),
    ({"reasoning": {"summary": "auto"}}, False, Ask(True, "medium", None, False, "auto")),
])
def test_ask(req: dict[str, Any], thinking: bool, expected: Ask) -> None:
    assert ask(req, thinking) == expected


@pytest.mark.parametrize("req", [
    {"reasoning": "high"},
    {"reasoning": {"effort": "extreme"}},
    {"reasoning": {"max_tokens": -1}},
    {"reasoning": {"max_tokens": "many"}},
    {"reasoning_effort": "low", "reasoning": {"effort": "high"}},
])
def test_ask_refuses(req: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        ask(req)


@pytest.mark.parametrize(("req", "expected"), [
    ({"reasoning": {"effort": "max"}}, "xhigh"),
    ({"reasoning": {"effort": "none"}}, "none"),
    ({"reasoning": {"enabled": False}}, None),
    ({"reasoning": {"exclude": True}}, None),
    ({"reasoning": {"max_tokens": 600}}, "medium"),
])
def test_openai_effort(req: dict[str, Any], expected: str | None) -> None:
    assert openai_effort(ask(req), 1000) == expected


def test_every_effort_is_validated_by_the_schema_too() -> None:
    for effort in EFFORTS:
        body = b'{"messages": [{"role": "user"}], "reasoning": {"effort": "%s"}}' % effort.encode()
        assert decode_chat(body).reasoning is not None
    with pytest.raises(BadRequest):
        decode_chat(b'{"messages": [{"role": "user"}], "reasoning": {"effort": "extreme"}}')


def test_merge_joins_streamed_pieces_of_one_index() -> None:
    pieces = [text_item("Let ", "anthropic-claude-v1", 0), text_item("me.", "anthropic-claude-v1", 0),
              text_item("", "anthropic-claude-v1", 0, signature="sig"),
              {"type": "reasoning.encrypted", "data": "x", "index": 1},
              text_item("More", "anthropic-claude-v1", 2)]
    assert merge(pieces) == [text_item("Let me.", "anthropic-claude-v1", 0, signature="sig"),
                             {"type": "reasoning.encrypted", "data": "x", "index": 1},
                             text_item("More", "anthropic-claude-v1", 2)]
    assert pieces[0]["text"] == "Let "  # the pieces themselves are left alone


def test_seal_round_trip() -> None:
    items = [{"type": "reasoning.encrypted", "data": "c2ln", "id": "call_0",
              "format": "google-gemini-v1", "index": 0}]
    assert unseal(seal(items)) == items
    assert unseal("EqQB-an-upstream-signature") is None and unseal(None) is None
    with pytest.raises(BadRequest):
        unseal(seal(items)[:-3] + "!!!")
