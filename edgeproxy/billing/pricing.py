"""The charge of one generation (SPEC §5.3), in exact integers.

Endpoint prices are micro-USD per 1M tokens, so tokens × price is in units of 1e-12 USD
("pico-USD"): exact for every price the configuration can state to six decimals. Nothing here is a
float; JSON gets the amount as an exact decimal number.
"""

from __future__ import annotations

from decimal import Decimal

import orjson

__all__ = ["PICO_PER_USD", "charge_pico", "cost_json", "micro_ceil", "usd", "usd_str"]

PICO_PER_USD = 10**12
_PICO_PER_MICRO = 10**6


def charge_pico(
    prompt_tokens: int,
    completion_tokens: int,
    prompt_price: int,
    completion_price: int,
    request_price: int = 0,
) -> int:
    """prompt × prompt price + completion × completion price + the per-request price.

    Reasoning tokens are completion tokens (SPEC §5.3): callers count them in completion_tokens.
    """
    return (
        prompt_tokens * prompt_price
        + completion_tokens * completion_price
        + request_price * _PICO_PER_MICRO
    )


def micro_ceil(pico: int) -> int:
    """What is charged: the exact amount rounded up to the micro-USD the ledger keeps."""
    return -(-pico // _PICO_PER_MICRO)


def usd(pico: int) -> Decimal:
    return Decimal(pico) / PICO_PER_USD


def usd_str(pico: int) -> str:
    """A pico-USD amount as an exact decimal string in USD (no float, no exponent)."""
    whole, frac = divmod(pico, PICO_PER_USD)
    if not frac:
        return str(whole)
    return f"{whole}.{f'{frac:012d}'.rstrip('0')}"


def cost_json(pico: int) -> orjson.Fragment:
    """The same amount as a JSON number."""
    return orjson.Fragment(usd_str(pico).encode())
