"""The product's economics as pure functions on integer micro-USD (SPEC §5.2, §5.4).

Percentages are kept as basis points (1 bp = 0.01 %) so every rule stays in integers; divisions
round half up to the micro-dollar, the only rounding the rules need.
"""

from __future__ import annotations

from dataclasses import dataclass

from .pricing import Prices, charge

__all__ = [
    "BYOK_FEE_BP",
    "CARD_FEE_BP",
    "CARD_MIN_FEE",
    "CRYPTO_FEE_BP",
    "EXPIRY_DAYS",
    "MICRO",
    "CostRow",
    "byok_fee",
    "compare_costs",
    "parse_usd",
    "topup_fee",
]

MICRO = 1_000_000
CARD_FEE_BP = 550  # 5.5 %
CARD_MIN_FEE = 800_000  # $0.80
CRYPTO_FEE_BP = 500  # 5 %
BYOK_FEE_BP = 500  # 5 % of what the generation would have cost
EXPIRY_DAYS = 365


def _bp(amount: int, bp: int) -> int:
    return (amount * bp + 5_000) // 10_000


def topup_fee(credits: int, method: str) -> int:
    """Fee on top of `credits` (micro-USD): card max(5.5 %, $0.80), crypto 5 %."""
    if credits <= 0:
        raise ValueError("the amount must be positive")
    if method == "card":
        return max(_bp(credits, CARD_FEE_BP), CARD_MIN_FEE)
    if method == "crypto":
        return _bp(credits, CRYPTO_FEE_BP)
    raise ValueError(f"unknown payment method {method!r} (expected card or crypto)")


def byok_fee(would_cost: int, month_requests_before: int, free_requests: int) -> int:
    """The fee of one BYOK generation: none within the month's free allowance, else 5 %."""
    if month_requests_before < free_requests:
        return 0
    return _bp(would_cost, BYOK_FEE_BP)


def parse_usd(text: str) -> int:
    """'12.5', '$12.50', '100M' style inputs are not money: this takes dollars only -> micro-USD."""
    from decimal import Decimal, InvalidOperation

    t = text.strip().lstrip("$").replace(",", "")
    try:
        d = Decimal(t)
    except InvalidOperation:
        raise ValueError(f"not an amount in USD: {text!r}") from None
    if not d.is_finite():
        raise ValueError(f"not an amount in USD: {text!r}")
    micro = d * MICRO
    if micro != micro.to_integral_value():
        raise ValueError(f"{text!r} has more than six decimals")
    return int(micro)


@dataclass(frozen=True)
class CostRow:
    payment: str
    tokens: int  # micro-USD paid for the tokens themselves
    fees: int  # micro-USD of fees
    note: str

    @property
    def total(self) -> int:
        return self.tokens + self.fees


def compare_costs(
    prices: Prices,
    input_tokens: int,
    output_tokens: int,
    requests: int = 0,
    byok_free_requests: int = 1_000_000,
    byok_discount_bp: int = 0,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
) -> list[CostRow]:
    """SPEC §5.4's table: direct, credits (with the card top-up fee), BYOK (5 % usage fee).

    Prices are micro-USD per 1M tokens. `cached_tokens` and `cache_write_tokens` are the parts of
    `input_tokens` read from and written to the prompt cache, at their own prices (SPEC §5.3).
    With a BYOK discount (a price negotiated with the provider), the tokens cost the discounted
    price while the 5 % fee stays on what the same generation would have cost at list price:
    $600 list, 20 % off -> $480 + $30 = $510 (85 %).
    """
    tokens = charge(prices, input_tokens, output_tokens, cached_tokens, cache_write_tokens)
    list_cost = (tokens.prompt + tokens.completion + 500_000) // MICRO
    rows = [CostRow("direct to the provider", list_cost, 0, "")]
    rows.append(CostRow("credits", list_cost, topup_fee(list_cost, "card") if list_cost else 0,
                        "5.5% top-up fee"))
    byok_tokens = _bp(list_cost, 10_000 - byok_discount_bp)
    # Requests within the monthly allowance carry no fee; past it each pays 5 % of its own cost,
    # so with N requests of equal size the billable share is (N - allowance) / N.
    if requests and requests <= byok_free_requests:
        fee = 0
    elif requests:
        fee = _bp(list_cost * (requests - byok_free_requests) // requests, BYOK_FEE_BP)
    else:
        fee = _bp(list_cost, BYOK_FEE_BP)
    note = "5% usage fee" + (f", {byok_discount_bp / 100:g}% provider discount"
                             if byok_discount_bp else "")
    rows.append(CostRow("BYOK", byok_tokens, fee, note))
    return rows
