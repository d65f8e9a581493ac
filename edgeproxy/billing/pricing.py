"""The charge of one generation (SPEC §5.3), in exact integers.

Endpoint prices are micro-USD per 1M tokens, so tokens × price is in units of 1e-12 USD
("pico-USD"): exact for every price the configuration can state to six decimals. Nothing here is a
float; JSON gets the amount as an exact decimal number.
"""

from __future__ import annotations

from decimal import Decimal
from typing import NamedTuple

import orjson

__all__ = [
    "PICO_PER_USD",
    "Charge",
    "Prices",
    "charge",
    "cost_json",
    "max_charge",
    "micro_ceil",
    "usd",
    "usd_str",
]

PICO_PER_USD = 10**12
_PICO_PER_MICRO = 10**6


class Prices(NamedTuple):
    """An endpoint's prices in micro-USD per 1M tokens (`request`: per request). The cache prices
    are already resolved: an endpoint that states none bills cached tokens at `prompt`."""

    prompt: int
    completion: int
    request: int
    cache_read: int
    cache_write: int


class Charge(NamedTuple):
    """One generation's charge in pico-USD, split as `usage.cost_details` shows it."""

    prompt: int  # uncached prompt tokens, cache reads and cache writes, each at its own price
    completion: int
    request: int
    # What the cache saved against the same prompt at the prompt price: negative when writes
    # (Anthropic: 1.25x) cost more than reads saved (OpenRouter's `cache_discount` sign).
    cache_discount: int

    @property
    def total(self) -> int:
        return self.prompt + self.completion + self.request


def charge(prices: Prices, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
           cache_write_tokens: int = 0) -> Charge:
    """SPEC §5.3: uncached prompt × prompt + cache reads × cache_read + cache writes × cache_write
    + completion × completion + the per-request price.

    The cache counts are parts of `prompt_tokens` (OpenAI's and OpenRouter's semantics); counts an
    upstream reports beyond the prompt are clamped, so no token is billed twice. Reasoning tokens
    are completion tokens: callers count them in `completion_tokens`.
    """
    read = min(cached_tokens, prompt_tokens)
    written = min(cache_write_tokens, prompt_tokens - read)
    uncached = prompt_tokens - read - written
    prompt = uncached * prices.prompt + read * prices.cache_read + written * prices.cache_write
    return Charge(
        prompt,
        completion_tokens * prices.completion,
        prices.request * _PICO_PER_MICRO,
        prompt_tokens * prices.prompt - prompt,
    )


def max_charge(prices: Prices, prompt_tokens: int, completion_tokens: int) -> int:
    """The most `prompt_tokens` and `completion_tokens` can cost (pico-USD): every prompt token at
    its dearest price, since a reservation must cover a prompt that is all cache writes
    (Anthropic bills those at 1.25x the prompt price)."""
    return (prompt_tokens * max(prices.prompt, prices.cache_read, prices.cache_write)
            + completion_tokens * prices.completion + prices.request * _PICO_PER_MICRO)


def micro_ceil(pico: int) -> int:
    """What is charged: the exact amount rounded up to the micro-USD the ledger keeps."""
    return -(-pico // _PICO_PER_MICRO)


def usd(pico: int) -> Decimal:
    return Decimal(pico) / PICO_PER_USD


def usd_str(pico: int) -> str:
    """A pico-USD amount as an exact decimal string in USD (no float, no exponent); a negative
    one (a cache discount) keeps its sign in front."""
    if pico < 0:
        return "-" + usd_str(-pico)
    whole, frac = divmod(pico, PICO_PER_USD)
    if not frac:
        return str(whole)
    return f"{whole}.{f'{frac:012d}'.rstrip('0')}"


def cost_json(pico: int) -> orjson.Fragment:
    """The same amount as a JSON number."""
    return orjson.Fragment(usd_str(pico).encode())
