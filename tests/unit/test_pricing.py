"""The charge of a generation with prompt caching (SPEC §5.3), in exact integers."""

from __future__ import annotations

from decimal import Decimal

import pytest

from edgeproxy.billing.fees import compare_costs
from edgeproxy.billing.pricing import Charge, Prices, charge, max_charge, micro_ceil, usd_str
from edgeproxy.config import EndpointConfig, parse
from edgeproxy.errors import ConfigError
from edgeproxy.gateway import _cache_counts
from edgeproxy.routing import prices_of

# micro-USD per 1M tokens: $3 prompt, $15 completion, $0.30 read, $3.75 write (Claude 3.5 Sonnet)
SONNET = Prices(3_000_000, 15_000_000, 0, 300_000, 3_750_000)


def test_uncached_is_prompt_times_price() -> None:
    c = charge(SONNET, 2000, 5)
    assert c == Charge(6_000_000_000, 75_000_000, 0, 0)
    assert micro_ceil(c.total) == 6075


def test_reads_and_writes_at_their_own_prices() -> None:
    # 400 uncached x 3 + 1000 read x 0.3 + 600 written x 3.75 = 1200 + 300 + 2250 micro-USD
    c = charge(SONNET, 2000, 5, cached_tokens=1000, cache_write_tokens=600)
    assert (c.prompt, c.completion) == (3_750_000_000, 75_000_000)
    # saved: 1000 x (3 - 0.3) - 600 x (3.75 - 3) = 2700 - 450 micro-USD
    assert c.cache_discount == 2_250_000_000
    assert micro_ceil(c.total) == 3825


def test_writes_alone_are_a_negative_discount() -> None:
    c = charge(SONNET, 2000, 0, cache_write_tokens=1600)
    assert c.prompt == 7_200_000_000 and c.cache_discount == -1_200_000_000


def test_fractions_of_a_micro_dollar_round_up_once() -> None:
    # 501 x 3 + 1499 x 0.3 = 1952.7 micro-USD exactly; charged 2028 with the 75 of completion
    c = charge(SONNET, 2000, 5, cached_tokens=1499)
    assert c.prompt == 1_952_700_000 and micro_ceil(c.total) == 2028


def test_cache_counts_beyond_the_prompt_are_clamped() -> None:
    """An upstream that reports more cached tokens than prompt tokens never bills any twice."""
    assert charge(SONNET, 100, 0, cached_tokens=500).prompt == 100 * 300_000
    c = charge(SONNET, 100, 0, cached_tokens=80, cache_write_tokens=80)
    assert c.prompt == 80 * 300_000 + 20 * 3_750_000


def test_request_price_and_no_cache_prices() -> None:
    plain = Prices(3_000_000, 15_000_000, 1_000, 3_000_000, 3_000_000)  # unset cache prices
    c = charge(plain, 2000, 5, cached_tokens=1500, cache_write_tokens=500)
    assert c.prompt == 2000 * 3_000_000 and c.cache_discount == 0
    assert c.request == 1_000_000_000 and micro_ceil(c.total) == 6075 + 1000


def test_max_charge_prices_the_prompt_as_all_writes() -> None:
    """The reservation must be the most a request can cost: a prompt of cache writes."""
    assert max_charge(SONNET, 2000, 100) == 2000 * 3_750_000 + 100 * 15_000_000
    cheap_writes = Prices(3_000_000, 15_000_000, 0, 300_000, 3_000_000)
    assert max_charge(cheap_writes, 2000, 0) == 2000 * 3_000_000
    for read, written in ((0, 0), (2000, 0), (0, 2000), (700, 1300)):
        assert charge(SONNET, 2000, 100, read, written).total <= max_charge(SONNET, 2000, 100)


def test_usd_str_of_a_negative_discount() -> None:
    assert usd_str(-1_200_000_000) == "-0.0012"
    assert usd_str(-2_000_000_000_000) == "-2"
    assert Decimal(usd_str(-1_952_700_000)) == Decimal("-0.0019527")


def test_unset_cache_prices_are_the_prompt_price() -> None:
    ep = EndpointConfig(provider="p", model="m", prompt=Decimal("1.25"),
                        completion=Decimal(10), cache_read=Decimal("0.125"))
    assert prices_of(ep) == Prices(1_250_000, 10_000_000, 0, 125_000, 1_250_000)
    bare = EndpointConfig(provider="p", model="m", prompt=Decimal(2))
    assert prices_of(bare).cache_read == prices_of(bare).cache_write == 2_000_000


def test_a_negative_cache_price_is_refused() -> None:
    doc = {"providers": {"p": {"base_url": "https://p.example"}},
           "models": {"m/x": {"context_length": 100, "endpoints": [
               {"provider": "p", "model": "x", "prompt": 1, "cache_write": -1}]}}}
    with pytest.raises(ConfigError) as ei:
        parse(doc)
    assert str(ei.value).startswith("models.m/x.endpoints[0].cache_write")


def test_usage_cache_counts_use_openrouter_names() -> None:
    usage = {"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": 60}}
    assert _cache_counts(usage, 100) == (60, 0)
    assert usage["prompt_tokens_details"] == {"cached_tokens": 60, "cache_write_tokens": 0}
    # DeepSeek reports its reads beside prompt_tokens (api-docs.deepseek.com, context caching)
    deepseek = {"prompt_tokens": 100, "prompt_cache_hit_tokens": 64,
                "prompt_cache_miss_tokens": 36}
    assert _cache_counts(deepseek, 100) == (64, 0)
    assert deepseek["prompt_tokens_details"] == {"cached_tokens": 64, "cache_write_tokens": 0}
    embedding = {"prompt_tokens": 5, "total_tokens": 5}
    assert _cache_counts(embedding, 5) == (0, 0) and "prompt_tokens_details" not in embedding
    odd = {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 8,
                                                          "cache_write_tokens": 8}}
    assert _cache_counts(odd, 10) == (8, 2)


def test_compare_costs_with_cached_input() -> None:
    rows = compare_costs(SONNET, 100_000_000, 20_000_000, cached_tokens=80_000_000)
    assert [(r.payment, r.total) for r in rows] == [
        ("direct to the provider", 384_000_000), ("credits", 405_120_000),
        ("BYOK", 403_200_000)]
