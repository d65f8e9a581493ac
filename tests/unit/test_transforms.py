"""middle-out (OpenRouter's `transforms: ["middle-out"]`) and the token estimate."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy.transforms import MARKER, MESSAGE_OVERHEAD, estimate_tokens, middle_out

Msg = dict[str, Any]


def sys_(text: str) -> Msg:
    return {"role": "system", "content": text}


def user(text: str) -> Msg:
    return {"role": "user", "content": text}


def asst(text: str) -> Msg:
    return {"role": "assistant", "content": text}


def tool_turn(call_id: str, result: str, n: int = 1) -> list[Msg]:
    calls = [{"id": f"{call_id}-{k}", "type": "function",
              "function": {"name": "lookup", "arguments": '{"q": "x"}'}} for k in range(n)]
    out: list[Msg] = [{"role": "assistant", "content": None, "tool_calls": calls}]
    out += [{"role": "tool", "tool_call_id": f"{call_id}-{k}", "content": result} for k in range(n)]
    return out


def conversation(turns: int = 30, size: int = 400) -> list[Msg]:
    msgs = [sys_("You are a careful assistant. " * 4), user("Here is my task: " + "t" * size)]
    for i in range(turns):
        msgs.append(asst(f"answer {i} " + "a" * size))
        if i % 3 == 0:
            msgs += tool_turn(f"call{i}", "r" * size, n=2)
        msgs.append(user(f"question {i} " + "q" * size))
    return msgs


def test_estimate() -> None:
    assert estimate_tokens([]) == 0
    assert estimate_tokens([user("")]) == MESSAGE_OVERHEAD
    assert estimate_tokens([user("abcd")]) == MESSAGE_OVERHEAD + 1
    assert estimate_tokens([user("abcde")]) == MESSAGE_OVERHEAD + 2
    parts = {"role": "user", "content": [{"type": "text", "text": "a" * 40},
                                         {"type": "image_url", "image_url": {"url": "x"}}]}
    assert estimate_tokens([parts]) == MESSAGE_OVERHEAD + 10 + 85
    calls = tool_turn("c", "r" * 8)
    assert estimate_tokens(calls) > 2 * MESSAGE_OVERHEAD + 2
    # Additive.
    msgs = conversation(5)
    assert estimate_tokens(msgs) == sum(estimate_tokens([m]) for m in msgs)


def test_no_op_when_it_fits() -> None:
    msgs = conversation(3)
    assert middle_out(msgs, estimate_tokens(msgs)) is msgs
    assert middle_out(msgs, 10**9, max_messages=len(msgs)) is msgs


def test_keeps_system_first_user_and_last_messages_and_fits() -> None:
    msgs = conversation(30)
    before = copy.deepcopy(msgs)
    budget = estimate_tokens(msgs) // 4
    out = middle_out(msgs, budget)
    assert msgs == before, "the input is not modified"
    assert estimate_tokens(out) <= budget
    assert out[0] is msgs[0] and out[1] is msgs[1]
    assert out[-1] is msgs[-1] and out[-2] is msgs[-2]
    assert len(out) < len(msgs)
    # What was removed came from the middle: the kept messages are a prefix and a suffix (at most
    # one of them truncated, at the seam).
    ids = [next(i for i, m in enumerate(msgs) if m is o or _truncation_of(m, o)) for o in out]
    assert ids == sorted(ids)
    gaps = [b - a for a, b in itertools.pairwise(ids) if b - a > 1]
    assert len(gaps) == 1


def test_tool_calls_and_results_stay_together() -> None:
    msgs = conversation(30)
    for budget in range(200, estimate_tokens(msgs), 250):
        _check_tool_pairs(middle_out(msgs, budget))


def test_middle_message_truncated_rather_than_dropped() -> None:
    big = "B" * 40_000
    msgs = [sys_("s"), user("first"), asst("short"), user(big), asst("short too"), user("last")]
    budget = estimate_tokens(msgs) - 1000
    out = middle_out(msgs, budget)
    assert len(out) == len(msgs)
    assert estimate_tokens(out) <= budget
    cut = out[3]["content"]
    assert MARKER in cut and cut.startswith("BBB") and cut.endswith("BBB")
    assert len(cut) < len(big)


def test_when_first_and_last_do_not_fit_the_longest_text_is_cut() -> None:
    msgs = [sys_("Be brief."), user("x" * 20_000), asst("y" * 100), user("z" * 2_000)]
    out = middle_out(msgs, 1_000)
    assert estimate_tokens(out) <= 1_000
    assert [m["role"] for m in out] == ["system", "user", "user"]
    assert out[0] is msgs[0]
    assert MARKER in out[1]["content"]
    assert out[1]["content"].startswith("xxx") and out[1]["content"].endswith("xxx")


def test_content_parts_are_cut_in_their_longest_text_part() -> None:
    msg: Msg = {"role": "user", "content": [
        {"type": "text", "text": "intro"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "text", "text": "p" * 10_000},
    ]}
    out = middle_out([msg], 500)
    assert estimate_tokens(out) <= 500
    parts = out[0]["content"]
    assert parts[0] == {"type": "text", "text": "intro"} and parts[1] is msg["content"][1]
    assert MARKER in parts[2]["text"]
    assert msg["content"][2]["text"] == "p" * 10_000


def test_max_messages_keeps_half_from_each_end() -> None:
    msgs = [user(f"m{i}") for i in range(100)]
    out = middle_out(msgs, 10**9, max_messages=10)
    assert len(out) == 10
    assert [m["content"] for m in out] == [f"m{i}" for i in (0, 1, 2, 3, 4, 95, 96, 97, 98, 99)]


def test_custom_counter() -> None:
    def words(ms: list[Msg]) -> int:
        return sum(len(str(m.get("content") or "").split()) + 1 for m in ms)

    msgs = [user("w " * 50)] + [asst("v " * 50), user("u " * 50)] * 10
    out = middle_out(msgs, 200, count_tokens=words)
    assert words(out) <= 200
    assert out[0] is msgs[0] and out[-1] is msgs[-1]


def test_impossible_budget_returns_the_floor() -> None:
    msgs = [sys_("s" * 1000), user("u" * 1000), user("v" * 1000)]
    out = middle_out(msgs, 1)
    assert [m["role"] for m in out] == ["system", "user", "user"]
    assert all(m["content"] == MARKER for m in out)


# -- properties ------------------------------------------------------------------------------------


def _truncation_of(orig: Msg, out: Msg) -> bool:
    """`out` is `orig` with the middle of some of its texts cut out and marked."""
    if orig is out:
        return True
    if {k: v for k, v in orig.items() if k != "content"} != {
            k: v for k, v in out.items() if k != "content"}:
        return False
    a, b = orig.get("content"), out.get("content")
    if isinstance(a, str) and isinstance(b, str):
        return _text_cut(a, b)
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for pa, pb in zip(a, b, strict=True):
            if pa is pb or pa == pb:
                continue
            ta, tb = pa.get("text"), pb.get("text")
            if not (isinstance(ta, str) and isinstance(tb, str) and _text_cut(ta, tb)):
                return False
            if {k: v for k, v in pa.items() if k != "text"} != {
                    k: v for k, v in pb.items() if k != "text"}:
                return False
        return True
    return False


def _text_cut(orig: str, out: str) -> bool:
    if orig == out:
        return True
    pieces = out.split(MARKER)
    if len(pieces) != 2:
        return False
    head, tail = pieces
    return (orig.startswith(head) and orig.endswith(tail)
            and len(head) + len(tail) < len(orig))


def _check_tool_pairs(out: list[Msg]) -> None:
    i = 0
    while i < len(out):
        m = out[i]
        if m["role"] == "assistant" and m.get("tool_calls"):
            ids = {c["id"] for c in m["tool_calls"]}
            j = i + 1
            answered = set()
            while j < len(out) and out[j]["role"] == "tool":
                answered.add(out[j]["tool_call_id"])
                j += 1
            assert answered == ids, "a tool call lost its results"
            i = j
        else:
            assert m["role"] != "tool", "a tool result lost its call"
            i += 1


def _floor(msgs: list[Msg], pinned: list[int]) -> int:
    """The smallest estimate middle-out can reach: pinned messages, every text cut to the marker."""
    def shrink(m: Msg) -> Msg:
        c = m.get("content")
        if isinstance(c, str):
            return {**m, "content": c if len(c) <= len(MARKER) else MARKER}
        if isinstance(c, list):
            parts = [{**p, "text": p["text"] if len(p["text"]) <= len(MARKER) else MARKER}
                     if isinstance(p.get("text"), str) else p for p in c]
            return {**m, "content": parts}
        return m
    return estimate_tokens([shrink(msgs[i]) for i in pinned])


text = st.text(alphabet="abc xyz\n.", max_size=600)
part_list = st.lists(
    st.one_of(
        st.builds(lambda t: {"type": "text", "text": t}, text),
        st.just({"type": "image_url", "image_url": {"url": "https://example.com/i.png"}}),
    ),
    min_size=1, max_size=3,
)
content = st.one_of(text, part_list)


@st.composite
def conversations(draw: st.DrawFn) -> list[Msg]:
    msgs: list[Msg] = []
    if draw(st.booleans()):
        msgs.append(sys_(draw(text)))
    n = draw(st.integers(1, 14))
    call = 0
    for _ in range(n):
        kind = draw(st.sampled_from(["user", "assistant", "tools", "developer"]))
        if kind == "user":
            msgs.append({"role": "user", "content": draw(content)})
        elif kind == "assistant":
            msgs.append(asst(draw(text)))
        elif kind == "developer":
            msgs.append({"role": "developer", "content": draw(text)})
        else:
            call += 1
            msgs += tool_turn(f"c{call}", draw(text), n=draw(st.integers(1, 3)))
    for i, m in enumerate(msgs):
        m["x_index"] = i  # an extra key, carried through untouched: maps output to input
    return msgs


@settings(max_examples=300, deadline=None)
@given(conversations(), st.floats(0, 1.1), st.one_of(st.none(), st.integers(1, 12)))
def test_property_fits_when_possible_and_is_a_truncated_subsequence(
    msgs: list[Msg], frac: float, max_messages: int | None
) -> None:
    before = copy.deepcopy(msgs)
    total = estimate_tokens(msgs)
    budget = int(total * frac)
    out = middle_out(msgs, budget, max_messages=max_messages)
    assert msgs == before

    if total <= budget and (max_messages is None or len(msgs) <= max_messages):
        assert out is msgs
        return

    # A subsequence of the input, each message whole or truncated in the middle.
    idx = [m["x_index"] for m in out]
    assert idx == sorted(set(idx))
    for o in out:
        assert _truncation_of(msgs[o["x_index"]], o)

    # Pinned: system/developer messages, the first user message, the last message.
    kept = set(idx)
    first_user = next((i for i, m in enumerate(msgs) if m["role"] == "user"), None)
    pinned = {i for i, m in enumerate(msgs) if m["role"] in ("system", "developer")}
    pinned.add(len(msgs) - 1)
    if first_user is not None:
        pinned.add(first_user)
    # The last message's whole tool group is pinned with it.
    last = len(msgs) - 1
    while msgs[last]["role"] == "tool":
        last -= 1
        pinned.add(last)
    assert pinned <= kept

    _check_tool_pairs(out)

    # It fits the budget whenever the pinned messages can be cut small enough.
    if estimate_tokens(out) > budget:
        assert budget < _floor(msgs, sorted(kept))
        assert kept == pinned | {i for i in kept if _group_pinned(msgs, i, pinned)}
    if max_messages is not None and len(out) > max_messages:
        assert all(_group_pinned(msgs, i, pinned) for i in kept)


def _group_pinned(msgs: list[Msg], i: int, pinned: set[int]) -> bool:
    """Message i is pinned, or in the tool group of a pinned message."""
    if i in pinned:
        return True
    j = i
    while j > 0 and msgs[j]["role"] == "tool":
        j -= 1
    return j in pinned


def test_legacy_function_call_stays_with_its_result() -> None:
    call = {"role": "assistant", "content": None,
            "function_call": {"name": "lookup", "arguments": "{}"}}
    result = {"role": "function", "name": "lookup", "content": "r" * 4000}
    msgs = [user("first"), asst("a" * 400), call, result, asst("b" * 400), user("last")]
    for budget in range(10, estimate_tokens(msgs), 50):
        out = middle_out(msgs, budget)
        assert (call in out) == (any(m is result or m.get("role") == "function" for m in out))
