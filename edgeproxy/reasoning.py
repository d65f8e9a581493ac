"""Reasoning, one model of it for every dialect and upstream (SPEC §3), sans-IO.

Two halves:
  request   OpenRouter's `reasoning` {effort, max_tokens, exclude, enabled}, OpenAI's top-level
            `reasoning_effort`, the legacy `include_reasoning` and the `:thinking` variant,
            resolved once into an `Ask` that each adapter (protocols/) turns into its upstream's
            own setting (Anthropic `thinking`, Gemini `thinkingConfig`, OpenAI `reasoning_effort`,
            Responses `reasoning`);
  items     the `reasoning_details` of an answer: typed items that keep what an upstream needs
            back on the next turn (Anthropic signatures and redacted thinking, Gemini thought
            signatures, OpenAI encrypted reasoning). Adapters build them from the upstream's
            answer and restore them from the assistant messages a client sends back; the dialect
            codecs (ingress/) carry them through Messages thinking blocks and Responses
            reasoning items.

Sources, cited below by name:
  [or-reasoning]  OpenRouter "Reasoning Tokens" (openrouter.ai/docs/guides/best-practices/
                  reasoning-tokens): the request object, effort ratios, the Anthropic budget
                  formula, the reasoning_details item types and formats, "Legacy Parameters"
  [or-variants]   OpenRouter "Model variants › :thinking" (2025: reasoning on, high effort)
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, NamedTuple, get_args

import msgspec
import orjson

from .errors import BadRequest
from .schema import ChatRequest, Effort

__all__ = [
    "ANTHROPIC",
    "EFFORTS",
    "EFFORT_RATIO",
    "GEMINI",
    "MIN_BUDGET",
    "OPENAI_RESPONSES",
    "Ask",
    "ask",
    "asked",
    "details_of",
    "effort_for",
    "encrypted_item",
    "hidden",
    "merge",
    "openai_effort",
    "seal",
    "summary_item",
    "text_item",
    "thinking_budget",
    "unseal",
]

EFFORTS: tuple[str, ...] = get_args(Effort)
# [or-reasoning] "Effort to budget": the share of max_tokens a budget-only model may think for.
EFFORT_RATIO = {"max": 0.95, "xhigh": 0.95, "high": 0.8, "medium": 0.5, "low": 0.2,
                "minimal": 0.1}
# [or-reasoning] the Anthropic formula max(min(max_tokens * ratio, 128000), 1024) (the cap was
# 32000 in 2025); 1024 is also Anthropic's own minimum budget_tokens.
MIN_BUDGET = 1024
MAX_BUDGET = 128_000
DEFAULT_EFFORT = "medium"  # [or-reasoning] `enabled: true` alone reasons at medium effort
VARIANT_EFFORT = "high"  # [or-variants] ":thinking ... defaults to high effort"
# [or-reasoning] ReasoningFormat: which upstream an item's opaque parts belong to.
ANTHROPIC = "anthropic-claude-v1"
GEMINI = "google-gemini-v1"
OPENAI_RESPONSES = "openai-responses-v1"

TEXT = "reasoning.text"
ENCRYPTED = "reasoning.encrypted"
SUMMARY = "reasoning.summary"
# Items of another format travel through a dialect that has no field for them (a Gemini signature
# in a Messages thinking block, an Anthropic one in a Responses reasoning item) sealed: this
# prefix, then the items as base64url JSON. Opaque to the client, as the upstream's own are.
_SEAL = "edgeproxy-reasoning-v1."


class Ask(NamedTuple):
    """What one request asks of reasoning. `on`: True (reason), False (do not), None (the
    request says nothing: the model's default). With `on`, `effort` or `budget` (tokens) is set;
    `exclude`: reason, but leave it out of the answer (still billed)."""

    on: bool | None
    effort: str | None
    budget: int | None
    exclude: bool
    summary: str | None


def ask(req: dict[str, Any], thinking: bool = False) -> Ask:
    """The request's reasoning, from a canonical chat request (`thinking`: the model was named
    with the :thinking variant). BadRequest for values no upstream could take."""
    given = req.get("reasoning")
    raw = {} if given is None else given
    if not isinstance(raw, dict):
        raise BadRequest("reasoning must be an object")
    effort, short = raw.get("effort"), req.get("reasoning_effort")
    if effort is None:
        effort = short
    elif short is not None and short != effort:
        # OpenAPI ChatRequest.reasoning_effort: not combinable with a different reasoning.effort.
        raise BadRequest("reasoning_effort and reasoning.effort disagree: send one of them")
    if effort is not None and effort not in EFFORTS:
        raise BadRequest(f"reasoning.effort must be one of {', '.join(EFFORTS)}")
    budget = raw.get("max_tokens")
    if budget is not None and (type(budget) is not int or budget < 0):
        raise BadRequest("reasoning.max_tokens must be a non-negative integer")
    enabled, include = raw.get("enabled"), req.get("include_reasoning")
    # [or-reasoning] "Legacy Parameters": include_reasoning false = {exclude: true}, true = {}.
    exclude = raw.get("exclude") is True or include is False
    summary = raw.get("summary")
    on: bool | None = None
    if effort == "none" or enabled is False or budget == 0:
        on = False
    elif (effort is not None or budget is not None or enabled is True or thinking
          or include is True or (given is not None and raw.get("exclude") is not True)):
        on = True  # (`reasoning: {}` too; `{exclude: true}` alone keeps the model's default)
    if on and effort is None and budget is None:
        effort = VARIANT_EFFORT if thinking else DEFAULT_EFFORT
    return Ask(on, effort, budget, exclude, summary if isinstance(summary, str) else None)


def asked(req: ChatRequest) -> bool:
    """The typed request asks for reasoning (what `require_parameters` checks); BadRequest for a
    contradiction, before any upstream is tried."""
    r = req.reasoning
    if r is None and req.reasoning_effort is None and req.include_reasoning is None:
        return False  # (most requests: no dict built)
    doc = {"reasoning": None if r is None else msgspec.to_builtins(r),
           "reasoning_effort": req.reasoning_effort, "include_reasoning": req.include_reasoning}
    return ask(doc).on is True


def hidden(req: ChatRequest) -> bool:
    """`exclude: true` (or `include_reasoning: false`): the answer shows no reasoning."""
    r = req.reasoning
    return (r is not None and r.exclude) or req.include_reasoning is False


def thinking_budget(a: Ask, max_tokens: int, floor: int = MIN_BUDGET,
                    cap: int = MAX_BUDGET) -> int:
    """[or-reasoning] the thinking budget of a budget-only model: reasoning.max_tokens as given
    (never under `floor`), else the effort's share of max_tokens between `floor` and `cap`
    (Anthropic's: 1024 and 128000; a Gemini family has its own range)."""
    if a.budget is not None:
        return max(a.budget, floor)
    ratio = EFFORT_RATIO.get(a.effort or DEFAULT_EFFORT, EFFORT_RATIO[DEFAULT_EFFORT])
    return max(min(int(max_tokens * ratio), cap), floor)


def effort_for(a: Ask, max_tokens: int) -> str | None:
    """The effort of an effort-only model: as asked, or [or-reasoning] "derived from
    reasoning.max_tokens": the level whose share of max_tokens is nearest (midpoints of the
    ratios; low is the floor every effort model takes)."""
    if a.effort is not None or a.budget is None:
        return a.effort
    share = a.budget / max(max_tokens, 1)
    return "high" if share >= 0.65 else "medium" if share >= 0.35 else "low"


def openai_effort(a: Ask, max_tokens: int) -> str | None:
    """OpenAI's effort (chat `reasoning_effort`, Responses `reasoning.effort`), None for none
    to send. OpenAI's ReasoningEffort stops at xhigh: OpenRouter's `max` is the nearest."""
    if a.on is None:
        return None
    effort = effort_for(a, max_tokens) if a.on else a.effort
    return "xhigh" if effort == "max" else effort


# --------------------------------------------------------------------------- items


def text_item(text: str, fmt: str, index: int, signature: str | None = None,
              id: str | None = None) -> dict[str, Any]:
    """A `reasoning.text` item (a piece of one while streaming: same index, text to append)."""
    item: dict[str, Any] = {"type": TEXT, "text": text}
    if signature is not None:
        item["signature"] = signature
    item.update(id=id, format=fmt, index=index)
    return item


def encrypted_item(data: str, fmt: str, index: int, id: str | None = None) -> dict[str, Any]:
    """A `reasoning.encrypted` item: redacted thinking, a thought signature, encrypted reasoning."""
    return {"type": ENCRYPTED, "data": data, "id": id, "format": fmt, "index": index}


def summary_item(summary: str, fmt: str, index: int, id: str | None = None) -> dict[str, Any]:
    return {"type": SUMMARY, "summary": summary, "id": id, "format": fmt, "index": index}


def details_of(msg: dict[str, Any]) -> list[dict[str, Any]]:
    """The reasoning_details a client sent back on an assistant message ([] when none)."""
    items = msg.get("reasoning_details")
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise BadRequest("reasoning_details must be an array of objects")
    return items


def merge(pieces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Streamed items -> whole ones: consecutive `reasoning.text` pieces of one index join (text
    appended, the signature kept), as OpenRouter clients accumulate them."""
    out: list[dict[str, Any]] = []
    for piece in pieces:
        last = out[-1] if out else None
        if (piece.get("type") == TEXT and last is not None and last.get("type") == TEXT
                and last.get("index") == piece.get("index")):
            last["text"] = (last.get("text") or "") + (piece.get("text") or "")
            if piece.get("signature"):
                last["signature"] = piece["signature"]
        else:
            out.append(dict(piece))
    return out


def seal(items: list[dict[str, Any]]) -> str:
    """Items as one opaque string for a dialect field that takes only a string."""
    return _SEAL + base64.urlsafe_b64encode(orjson.dumps(items)).decode()


def unseal(value: Any) -> list[dict[str, Any]] | None:
    """What `seal` made, or None when `value` is not that (an upstream's own opaque data)."""
    if not isinstance(value, str) or not value.startswith(_SEAL):
        return None
    try:
        items = orjson.loads(base64.urlsafe_b64decode(value[len(_SEAL):]))
    except (binascii.Error, ValueError):
        raise BadRequest("reasoning data sealed by edgeproxy was altered") from None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise BadRequest("reasoning data sealed by edgeproxy was altered")
    return items
