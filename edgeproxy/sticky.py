"""Sticky routing (SPEC §2.6): a conversation stays on the endpoint that served it, so the
provider's prompt cache stays warm.

A pin maps (account, model, session key) to an endpoint key for `sticky_s` after its last use.
The session key is the request's `session_id` (body, else the `x-session-id` header), else a hash
of its first system message and first non-system message: OpenRouter's rule
(openrouter.ai/docs/guides/best-practices/prompt-caching#provider-sticky-routing). A session id
pins after any success; a hash only after an answer that read or wrote the prompt cache.

Routing reads a local dict only. With shared state on, pins are also written to Redis off the
request path, and a local miss reads Redis (one GET) only for a request that can have a pin made
elsewhere: one with a session id, or a conversation past its first answer.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .schema import ChatRequest, Message
    from .state.redis import RedisState

__all__ = ["Pins", "cache_used", "pin_key"]

#: Pins one process keeps; past this the least recently used go first.
MAX_PINS = 100_000
_EDGE = 1024  # characters of a long message's head and of its tail that its hash reads (_feed)


def pin_key(account: str, model: str, req: ChatRequest, header: str | None) -> str:
    """What a conversation is pinned by: "s:{account}|{model}|{session_id}", or without one
    "h:{account}|{model}|{hash of the first system and first non-system message}"."""
    sid = req.session_id or header
    if sid:
        return f"s:{account}|{model}|{sid}"
    system: Message | None = None
    first: Message | None = None
    for msg in req.messages:
        if msg.role in ("system", "developer"):
            if system is None:
                system = msg
        elif first is None:
            first = msg
        if system is not None and first is not None:
            break
    h = hashlib.sha256()  # (with the CPU's SHA instructions the fastest of hashlib's)
    for m in (system, first):
        c = m.content if m is not None else None
        if isinstance(c, str):
            _feed(h, c)
        elif c:
            for part in c:  # content parts: their strings, and those of their objects (image_url)
                for v in part.values():
                    if isinstance(v, str):
                        _feed(h, v)
                    elif isinstance(v, dict):
                        for w in v.values():
                            if isinstance(w, str):
                                _feed(h, w)
        h.update(b"\x00")
    return f"h:{account}|{model}|{h.hexdigest()[:32]}"


def _feed(h: Any, text: str) -> None:
    """Hash a text's length, head and tail, not all of it: an agent's system prompt of tens of
    kilobytes (or an inline image) costs the same as a short one. Two conversations alike in all
    three share a pin, which costs nothing but a routing preference."""
    if len(text) > 2 * _EDGE:
        text = f"{text[:_EDGE]}\x00{len(text)}\x00{text[-_EDGE:]}"
    h.update(text.encode("utf-8", "surrogatepass"))


class Pins:
    """The pins of this process, and their Redis copy when shared state is on."""

    def __init__(self, ttl_s: int, shared: RedisState | None) -> None:
        self.ttl_ms = ttl_s * 1000
        self.shared = shared
        # key -> (endpoint key, expiry ms, when last written to Redis ms); insertion order is
        # the order of last use
        self._pins: dict[str, tuple[str, int, int]] = {}

    def get(self, key: str, now: int) -> str | None:
        pin = self._pins.get(key)
        if pin is None:
            return None
        if pin[1] <= now:
            del self._pins[key]
            return None
        return pin[0]

    def may_hold(self, req: ChatRequest, header: str | None) -> bool:
        """Whether a pin may exist for this request, so that its key is worth making now: a
        session id, any pin in this process, or one another node may have made (remote_worth)."""
        return bool(req.session_id or header or self._pins) or (
            self.shared is not None and self.shared.up
            and any(m.role == "assistant" for m in req.messages))

    def remote_worth(self, key: str, req: ChatRequest) -> bool:
        """Whether a local miss may be a pin another worker or node made (one GET to Redis)."""
        return (self.shared is not None and self.shared.up
                and (key.startswith("s:") or any(m.role == "assistant" for m in req.messages)))

    async def fetch(self, key: str, now: int) -> str | None:
        """The pin Redis holds for `key`, then kept locally for its remaining time."""
        assert self.shared is not None
        got = await self.shared.get_pin(key)
        if got is None:
            return None
        self._put(key, (got[0], now + got[1], now))
        return got[0]

    def pin(self, key: str, endpoint: str, now: int) -> None:
        """`endpoint` served `key` at `now`: pinned for ttl from now. Redis gets the new pin at
        once, and a refresh at most every fifth of the ttl (the expiry it holds is close enough)."""
        old = self._pins.get(key)
        written = old[2] if old is not None and old[0] == endpoint else 0
        shared = self.shared
        if shared is not None and shared.up and now - written >= self.ttl_ms // 5:
            written = now
            shared.background(shared.set_pin(key, endpoint, self.ttl_ms))
        self._put(key, (endpoint, now + self.ttl_ms, written))

    def _put(self, key: str, pin: tuple[str, int, int]) -> None:
        pins = self._pins
        pins.pop(key, None)
        pins[key] = pin
        if len(pins) > MAX_PINS:
            del pins[next(iter(pins))]


def cache_used(usage: dict[str, Any]) -> bool:
    """Whether an answer read or wrote the provider's prompt cache (gateway.finish_usage has put
    both counts under prompt_tokens_details)."""
    d = usage.get("prompt_tokens_details")
    return isinstance(d, dict) and bool(d.get("cached_tokens") or d.get("cache_write_tokens"))
