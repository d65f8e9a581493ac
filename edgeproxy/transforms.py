"""Prompt transforms: OpenRouter's `middle-out`, on the request's `messages` as plain dicts.

OpenRouter, "Message Transforms" (openrouter.ai/docs/transforms): middle-out "works by removing or
truncating messages from the middle of the prompt, until the prompt fits within the model's context
window", because "LLMs pay less attention to the middle of sequences"; when a provider caps the
number of messages, it "will keep half of the messages from the start and half from the end".

What is kept here, and why:
* every system / developer message, and the first user message: the instructions and the task;
* the last message group: the turn being answered;
* an assistant message that calls tools and the tool messages answering it move together, so no
  provider ever sees a tool result without its call, or a call without its result.
Groups are dropped from the middle outwards. A single plain message in the middle that is larger
than what is missing is truncated (its middle cut out, marked) rather than dropped. If the kept
groups alone are still too large, the middle of the longest remaining text is cut, repeatedly.

Pure functions (STYLE habit 4): no I/O, the input is never modified; messages that are kept whole
are the same dict objects, truncated ones are shallow copies.

When to call it is the caller's decision. OpenRouter applies middle-out when the request asks for
it (`"transforms": ["middle-out"]`) and by default on endpoints of 8K (8,192) tokens of context or
less, unless the request says `"transforms": []`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

__all__ = [
    "CHARS_PER_TOKEN",
    "MARKER",
    "MEDIA_PART_TOKEN_BOUND",
    "MESSAGE_OVERHEAD",
    "TOOLS_PROMPT_TOKENS",
    "estimate_tokens",
    "media_chars",
    "media_parts",
    "middle_out",
]

#: The rough rule of thumb the gateway uses everywhere before an upstream reports real counts.
CHARS_PER_TOKEN = 4
#: Role, separators and framing of one chat message, in tokens (OpenAI's chat format spends 3-4).
MESSAGE_OVERHEAD = 4
#: What a non-text content part (image, audio, file) is counted as: OpenAI bills a low-detail
#: image at 85 tokens; the exact figure depends on the provider and the part's size.
NON_TEXT_PART_TOKENS = 85
#: What a media part is reserved at before the upstream counts it: Anthropic's largest image
#: (about 1,600 tokens after it scales an image to 1.15 megapixels: "Vision" docs, image costs)
#: and OpenAI's high-detail images at that size fit under it. A long PDF can count more.
MEDIA_PART_TOKEN_BOUND = 1_600
#: The system prompt a provider adds to describe tools, not in the request (Anthropic's "Tool
#: use" docs list 159-530 tokens by model and tool_choice).
TOOLS_PROMPT_TOKENS = 600
#: Put where text was cut out.
MARKER = "\n[… middle of this message removed to fit the context window …]\n"

# A middle message is truncated instead of dropped only when this much of it would remain.
_MIN_KEEP_CHARS = 256
_PINNED_ROLES = frozenset({"system", "developer"})
_TOOL_ROLES = frozenset({"tool", "function"})

TokenCounter = Callable[[list[dict[str, Any]]], int]


def _message_chars(m: Any) -> tuple[int, int]:
    """(characters of text, number of non-text parts) of one message: a dict, or the typed
    `schema.Message` the request path already holds (no second decode to count a prompt)."""
    get = m.get if isinstance(m, dict) else partial(getattr, m)
    chars = 0
    extra = 0
    content = get("content")
    if isinstance(content, str):
        chars += len(content)
    elif isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            text = part.get("text")
            if isinstance(text, str):
                chars += len(text)
            elif part.get("type") not in (None, "text"):
                extra += 1
    for call in get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            for key in ("name", "arguments"):
                value = fn.get(key)
                if isinstance(value, str):
                    chars += len(value)
    for key in ("name", "tool_call_id"):
        value = get(key)
        if isinstance(value, str):
            chars += len(value)
    return chars, extra


def media_chars(messages: Sequence[Any]) -> int:
    """Characters of inline media (base64 data URLs of images, files, audio) in the messages: the
    part of a body that is not text to a tokenizer."""
    total = 0
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else m.content
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, dict) and part.get("type") not in (None, "text"):
                for value in part.values():
                    if isinstance(value, dict):
                        for inner in value.values():
                            if isinstance(inner, str) and len(inner) > 256:
                                total += len(inner)
    return total


def media_parts(messages: Sequence[Any]) -> int:
    """How many non-text parts (images, files, audio) the messages carry."""
    return sum(_message_chars(m)[1] for m in messages)


def estimate_tokens(messages: Sequence[Any]) -> int:
    """≈ 4 characters a token over the text of each message, plus a small per-message overhead.

    Additive: the estimate of a list is the sum of the estimates of its messages.
    """
    total = 0
    for m in messages:
        chars, extra = _message_chars(m)
        total += MESSAGE_OVERHEAD + -(-chars // CHARS_PER_TOKEN) + extra * NON_TEXT_PART_TOKENS
    return total


def _groups(messages: Sequence[dict[str, Any]]) -> list[list[int]]:
    """Indices grouped so that a tool-calling assistant message and its results form one group."""
    groups: list[list[int]] = []
    i, n = 0, len(messages)
    while i < n:
        group = [i]
        m = messages[i]
        if m.get("role") == "assistant" and (m.get("tool_calls") or m.get("function_call")):
            j = i + 1
            while j < n and messages[j].get("role") in _TOOL_ROLES:
                group.append(j)
                j += 1
            i = j
        else:
            i += 1
        groups.append(group)
    return groups


def _cut(text: str, remove: int) -> str:
    """`text` with about `remove` characters (plus the marker's length) cut from its middle."""
    keep = len(text) - remove - len(MARKER)
    if keep <= 0:
        return MARKER
    head = (keep + 1) // 2
    tail = keep - head
    return text[:head] + MARKER + (text[len(text) - tail :] if tail else "")


def _longest_text(m: dict[str, Any]) -> tuple[int, int]:
    """(length, part index or -1 for a string content) of the longest text of a message."""
    content = m.get("content")
    if isinstance(content, str):
        return len(content), -1
    best, where = 0, -1
    if isinstance(content, list):
        for k, part in enumerate(content):
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                if len(part["text"]) > best:
                    best, where = len(part["text"]), k
    return best, where


def _truncated(m: dict[str, Any], remove: int) -> dict[str, Any]:
    """A copy of `m` with `remove` characters cut from the middle of its longest text."""
    _, where = _longest_text(m)
    content = m.get("content")
    out = dict(m)
    if isinstance(content, str):
        out["content"] = _cut(content, remove)
    elif isinstance(content, list) and where >= 0:
        parts = list(content)
        part = dict(parts[where])
        part["text"] = _cut(part["text"], remove)
        parts[where] = part
        out["content"] = parts
    return out


def middle_out(
    messages: list[dict[str, Any]],
    max_prompt_tokens: int,
    count_tokens: TokenCounter = estimate_tokens,
    *,
    max_messages: int | None = None,
) -> list[dict[str, Any]]:
    """The messages made to fit `max_prompt_tokens` (and `max_messages`) by middle-out.

    Returns `messages` itself when it already fits. `count_tokens` must be additive over messages
    (the count of a list is the sum of its messages' counts), as `estimate_tokens` is. When even
    the kept messages cannot be cut small enough (every text down to the marker), the smallest
    result reached is returned; the caller's context check then refuses it.
    """
    costs = [count_tokens([m]) for m in messages]
    total = sum(costs)
    if total <= max_prompt_tokens and (max_messages is None or len(messages) <= max_messages):
        return messages

    groups = _groups(messages)
    first_user = next((i for i, m in enumerate(messages) if m.get("role") == "user"), -1)
    pinned: list[bool] = []
    for gi, g in enumerate(groups):
        head = messages[g[0]]
        pinned.append(
            gi == len(groups) - 1
            or first_user in g
            or (len(g) == 1 and head.get("role") in _PINNED_ROLES)
        )
    droppable = [gi for gi, p in enumerate(pinned) if not p]
    # Middle first, then outwards; of two equally central groups the older goes first.
    centre = (len(droppable) - 1) / 2
    order = sorted(range(len(droppable)), key=lambda k: (abs(k - centre), k))

    out: list[dict[str, Any] | None] = list(messages)
    count = len(messages)
    for k in order:
        over_tokens = total - max_prompt_tokens
        over_count = 0 if max_messages is None else count - max_messages
        if over_tokens <= 0 and over_count <= 0:
            break
        g = groups[droppable[k]]
        m = out[g[0]]
        assert m is not None
        if over_count <= 0 and len(g) == 1 and m.get("role") not in _TOOL_ROLES:
            length, _ = _longest_text(m)
            remove = over_tokens * CHARS_PER_TOKEN + CHARS_PER_TOKEN
            if length - remove - len(MARKER) >= _MIN_KEEP_CHARS:
                cut = _truncated(m, remove)
                new_cost = count_tokens([cut])
                if costs[g[0]] - new_cost >= over_tokens:
                    out[g[0]] = cut
                    total += new_cost - costs[g[0]]
                    costs[g[0]] = new_cost
                    break
        for i in g:
            out[i] = None
            total -= costs[i]
        count -= len(g)

    # Only pinned groups left and still too large: cut the longest texts, middle first.
    while total > max_prompt_tokens:
        best, best_len = -1, len(MARKER)
        for i, m in enumerate(out):
            if m is not None:
                length, _ = _longest_text(m)
                if length > best_len:
                    best, best_len = i, length
        if best < 0:
            break
        m = out[best]
        assert m is not None
        remove = (total - max_prompt_tokens) * CHARS_PER_TOKEN + CHARS_PER_TOKEN
        # Each pass shortens one text by at least a character, so the loop ends: at the latest
        # when every text is down to the marker.
        cut = _truncated(m, min(remove, best_len))
        new_cost = count_tokens([cut])
        out[best] = cut
        total += new_cost - costs[best]
        costs[best] = new_cost
    return [m for m in out if m is not None]
