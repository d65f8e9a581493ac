"""The routing hot path (SPEC §2) on both implementations, and the compiled one held to its twin.

Every behaviour test runs twice through the ``fr`` fixture: on the compiled ``edgeproxy._fastroute``
and on the pure-Python ``edgeproxy._fastroute_py``. The compiled run is skipped when the extension
is not built, unless EDGEPROXY_REQUIRE_EXTENSIONS=1, which turns the skip into a failure. The
property tests at the end drive both with the same random tables, preferences and health events
and require identical answers, floats included.
"""

from __future__ import annotations

import importlib
import math
import os
from collections import Counter
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy import _fastroute_py


def _import_compiled() -> ModuleType | None:
    try:
        return importlib.import_module("edgeproxy._fastroute")
    except ImportError:
        return None


_fastroute = _import_compiled()

REQUIRE_EXTENSIONS = os.environ.get("EDGEPROXY_REQUIRE_EXTENSIONS") == "1"

M = 1_000_000  # $1 per 1M tokens, in micro-USD
ALL64 = (1 << 64) - 1


def _compiled() -> ModuleType:
    if _fastroute is None:
        if REQUIRE_EXTENSIONS:
            pytest.fail("edgeproxy._fastroute is not built and EDGEPROXY_REQUIRE_EXTENSIONS=1")
        pytest.skip("edgeproxy._fastroute is not built (python setup.py build_ext --inplace)")
    return _fastroute


@pytest.fixture(params=["compiled", "python"])
def fr(request: pytest.FixtureRequest) -> ModuleType:
    return _compiled() if request.param == "compiled" else _fastroute_py


def make(
    fr: ModuleType,
    prices: list[int],
    *,
    completion: list[int] | None = None,
    context: list[int] | None = None,
    quant: list[int] | None = None,
    params: list[int] | None = None,
    flags: list[int] | None = None,
    tps: list[float] | None = None,
    ttft: list[float] | None = None,
    offset: int = 0,
    **kw: Any,
) -> Any:
    """A router whose endpoints offset..offset+len(prices)-1 form one model."""
    n = len(prices)
    r = fr.Router(offset + n, **kw)
    for p in range(n):
        r.set_endpoint(
            offset + p,
            prices[p],
            completion[p] if completion else 0,
            0,
            context[p] if context else 128_000,
            quant[p] if quant else 0,
            params[p] if params else 0,
            flags[p] if flags else 0,
            tps[p] if tps else 0.0,
            ttft[p] if ttft else 0.0,
        )
    return r


def sel(
    r: Any,
    start: int,
    end: int,
    *,
    now: int = 0,
    allow: int | None = None,
    deny: bool = False,
    zdr: bool = False,
    quant: int = 0,
    max_prompt: int = -1,
    max_completion: int = -1,
    need: int = 0,
    params: int = 0,
    sort: int = 0,
    order: tuple[int, ...] = (),
    fallbacks: bool = True,
    max_ttft: float = 0.0,
    min_tps: float = 0.0,
) -> list[int]:
    if allow is None:
        allow = (1 << (end - start)) - 1
    return r.select(
        start,
        end,
        now,
        allow,
        deny,
        zdr,
        quant,
        max_prompt,
        max_completion,
        need,
        params,
        sort,
        order,
        fallbacks,
        max_ttft,
        min_tps,
    )


def fail(r: Any, i: int, times: int, now: int = 0) -> None:
    for _ in range(times):
        r.record_failure(i, now)


# --------------------------------------------------------------------------------- the API


def test_both_modules_expose_the_same_api() -> None:
    compiled = _compiled()
    names = [n for n in dir(_fastroute_py) if n.isupper() and not n.startswith("_")]
    assert len(names) == 15
    for name in names:
        assert getattr(compiled, name) == getattr(_fastroute_py, name), name
    methods = {n for n in dir(_fastroute_py.Router) if not n.startswith("_")}
    assert methods <= set(dir(compiled.Router))


def test_constants(fr: ModuleType) -> None:
    assert fr.MAX_ENDPOINTS == 64
    assert [
        fr.REASON_NONE,
        fr.REASON_PROVIDER,
        fr.REASON_DATA_COLLECTION,
        fr.REASON_ZDR,
        fr.REASON_QUANTIZATION,
        fr.REASON_MAX_PRICE,
        fr.REASON_CONTEXT,
        fr.REASON_PARAMETERS,
    ] == list(range(8))
    assert [fr.SORT_DEFAULT, fr.SORT_PRICE, fr.SORT_THROUGHPUT, fr.SORT_LATENCY] == [0, 1, 2, 3]
    assert (fr.FLAG_COLLECTS_DATA, fr.FLAG_ZDR) == (1, 2)


def test_indices_are_validated(fr: ModuleType) -> None:
    r = make(fr, [M, 2 * M])
    for bad in (-1, 2):
        with pytest.raises(IndexError):
            r.record_success(bad, 0)
        with pytest.raises(IndexError):
            r.record_failure(bad, 0)
        with pytest.raises(IndexError):
            r.cool_down(bad, 0)
        with pytest.raises(IndexError):
            r.observe(bad, 1.0, 1.0)
        with pytest.raises(IndexError):
            r.window(bad, 0)
        with pytest.raises(IndexError):
            r.is_degraded(bad, 0)
        with pytest.raises(IndexError):
            r.throughput(bad)
        with pytest.raises(IndexError):
            r.latency(bad)
        with pytest.raises(IndexError):
            r.set_endpoint(bad, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0)
    with pytest.raises(IndexError):
        sel(r, 1, 3)
    with pytest.raises(IndexError):
        sel(r, 2, 1, allow=0)


def test_arguments_are_validated(fr: ModuleType) -> None:
    for kw in (
        {"window_buckets": 0},
        {"bucket_ms": 0},
        {"min_failures": 0},
        {"failure_pct": 101},
        {"ewma_alpha": 0.0},
        {"ewma_alpha": 1.5},
        {"consecutive_failures": 0},
    ):
        with pytest.raises(ValueError):
            fr.Router(1, **kw)
    with pytest.raises(ValueError):
        fr.Router(-1)
    r = make(fr, [M])
    good = [0, 0, 0, 0, 0, 0, 0, 0.0, 0.0]
    for pos, bad in (
        (0, -1),
        (0, 1 << 49),
        (3, -1),
        (4, 64),
        (5, 1 << 64),
        (7, -1.0),
        (8, math.inf),
        (8, math.nan),
    ):
        args = list(good)
        args[pos] = bad
        with pytest.raises(ValueError):
            r.set_endpoint(0, *args)
    with pytest.raises(ValueError):
        sel(r, 0, 1, sort=4)
    with pytest.raises(ValueError):
        sel(r, 0, 1, now=-1)
    with pytest.raises(ValueError):
        r.record_failure(0, -1)
    with pytest.raises(OverflowError):
        sel(r, 0, 1, allow=-1)


def test_at_most_64_endpoints_per_model(fr: ModuleType) -> None:
    r = make(fr, [M] * 65)
    with pytest.raises(ValueError):
        r.select(0, 65, 0, ALL64, False, False, 0, -1, -1, 0, 0, 0, (), True)
    picked = r.select(1, 65, 0, ALL64, False, False, 0, -1, -1, 0, 0, 0, (), True)
    assert sorted(picked) == list(range(1, 65))


def test_results_are_global_indices(fr: ModuleType) -> None:
    r = make(fr, [3 * M, 1 * M, 2 * M], offset=10)
    assert sel(r, 10, 13, sort=fr.SORT_PRICE) == [11, 12, 10]
    assert sel(r, 10, 13, sort=fr.SORT_PRICE, allow=0b101) == [12, 10]


def test_an_empty_model_range_is_emptied_by_the_first_filter(fr: ModuleType) -> None:
    r = make(fr, [M])
    assert sel(r, 1, 1) == []
    assert r.empty_reason == fr.REASON_PROVIDER


# --------------------------------------------------------------------------------- filters


@pytest.fixture
def table(fr: ModuleType) -> Any:
    """Four endpoints, each failing a different filter: see the comments."""
    return make(
        fr,
        [1 * M, 2 * M, 3 * M, 4 * M],
        completion=[1 * M, 2 * M, 3 * M, 4 * M],
        context=[8_000, 32_000, 128_000, 1_000_000],
        quant=[1, 2, 3, 3],
        params=[0b001, 0b011, 0b111, 0b111],
        flags=[
            fr.FLAG_COLLECTS_DATA,
            0,
            fr.FLAG_ZDR,
            fr.FLAG_ZDR | fr.FLAG_COLLECTS_DATA,
        ],
    )


@pytest.mark.parametrize(
    ("prefs", "kept"),
    [
        ({}, [0, 1, 2, 3]),
        ({"allow": 0b0110}, [1, 2]),
        ({"deny": True}, [1, 2]),
        ({"zdr": True}, [2, 3]),
        ({"quant": 1 << 3}, [2, 3]),
        ({"quant": (1 << 1) | (1 << 2)}, [0, 1]),
        ({"max_prompt": 2 * M}, [0, 1]),
        ({"max_completion": 3 * M}, [0, 1, 2]),
        ({"need": 32_000}, [1, 2, 3]),
        ({"params": 0b011}, [1, 2, 3]),
        ({"params": 0b100}, [2, 3]),
        ({"deny": True, "zdr": True, "need": 100_000}, [2]),
    ],
)
def test_filters_keep_the_right_endpoints(
    fr: ModuleType, table: Any, prefs: dict[str, Any], kept: list[int]
) -> None:
    assert sel(table, 0, 4, sort=fr.SORT_PRICE, **prefs) == kept
    assert table.empty_reason == fr.REASON_NONE


@pytest.mark.parametrize(
    ("prefs", "reason"),
    [
        ({"allow": 0}, "REASON_PROVIDER"),
        ({"allow": 1 << 4}, "REASON_PROVIDER"),  # a bit beyond the model's range
        ({"allow": 0b1001, "deny": True}, "REASON_DATA_COLLECTION"),
        ({"allow": 0b0011, "zdr": True}, "REASON_ZDR"),
        ({"quant": 1 << 5}, "REASON_QUANTIZATION"),
        ({"max_prompt": M // 2}, "REASON_MAX_PRICE"),
        ({"max_completion": 0}, "REASON_MAX_PRICE"),
        ({"need": 2_000_000}, "REASON_CONTEXT"),
        ({"params": 0b1000}, "REASON_PARAMETERS"),
        # The first filter that empties the list is the one reported.
        ({"allow": 0, "zdr": True, "need": 2_000_000}, "REASON_PROVIDER"),
        ({"zdr": True, "deny": True, "allow": 0b1001}, "REASON_DATA_COLLECTION"),
        ({"zdr": True, "max_prompt": 2 * M}, "REASON_MAX_PRICE"),
        # Price leaves 0 and 1, whose context is too short: context emptied the list.
        ({"need": 100_000, "max_prompt": 2 * M}, "REASON_CONTEXT"),
        ({"need": 100_000, "params": 0b1000}, "REASON_PARAMETERS"),
    ],
)
def test_the_first_emptying_filter_is_reported(
    fr: ModuleType, table: Any, prefs: dict[str, Any], reason: str
) -> None:
    assert sel(table, 0, 4, **prefs) == []
    assert table.empty_reason == getattr(fr, reason)
    assert sel(table, 0, 4) != []
    assert table.empty_reason == fr.REASON_NONE


# --------------------------------------------------------------------------------- health


def test_degraded_endpoints_go_last_and_never_first(fr: ModuleType) -> None:
    r = make(fr, [1 * M, 2 * M, 3 * M])
    fail(r, 0, 3)
    assert r.is_degraded(0, 0)
    for sort in (fr.SORT_DEFAULT, fr.SORT_PRICE, fr.SORT_THROUGHPUT, fr.SORT_LATENCY):
        for _ in range(50):
            picked = sel(r, 0, 3, sort=sort)
            assert picked[-1] == 0 and sorted(picked) == [0, 1, 2]
    assert sel(r, 0, 3, fallbacks=False) != [0]
    assert sel(r, 0, 3, order=(0,))[-1] == 0  # naming it in provider.order does not lift it


def test_degraded_ones_in_default_mode_go_by_price(fr: ModuleType) -> None:
    r = make(fr, [3 * M, 1 * M, 2 * M, 1 * M, 5 * M])
    for i in (0, 1, 2, 3):
        fail(r, i, 3)
    for _ in range(20):
        assert sel(r, 0, 5) == [4, 1, 3, 2, 0]
    # All degraded: still returned, cheapest first, never an empty list.
    fail(r, 4, 3)
    assert sel(r, 0, 5) == [1, 3, 2, 0, 4]
    assert r.empty_reason == fr.REASON_NONE
    assert sel(r, 0, 5, fallbacks=False) == [1]


def test_degraded_thresholds(fr: ModuleType) -> None:
    r = make(fr, [M, M, M, M], min_failures=3, failure_pct=25)
    fail(r, 0, 2)  # too few failures, even at 100 %
    fail(r, 1, 3)
    for _ in range(10):
        r.record_success(1, 0)  # 3 / 13 = 23 % < 25 %
    fail(r, 2, 3)
    for _ in range(9):
        r.record_success(2, 0)  # 3 / 12 = 25 %
    assert r.window(1, 0) == (10, 3)
    assert [r.is_degraded(i, 0) for i in range(4)] == [False, False, True, False]


def test_a_run_of_failures_degrades_whatever_came_before(fr: ModuleType) -> None:
    # A provider that went down (or hangs) after a busy window: 4 failures among 100 successes
    # are 4 %, far from failure_pct, but 4 in a row with no success between them degrade it.
    r = make(fr, [1 * M, 2 * M], consecutive_failures=4, bucket_ms=1000, window_buckets=30)
    for _ in range(100):
        r.record_success(0, 1_000)
    fail(r, 0, 3, now=2_000)
    assert not r.is_degraded(0, 2_000)
    r.record_success(0, 2_000)  # a success ends the run
    fail(r, 0, 3, now=2_000)
    assert not r.is_degraded(0, 2_000)
    fail(r, 0, 1, now=3_000)
    assert r.window(0, 3_000) == (101, 7)
    assert r.is_degraded(0, 3_000)
    assert sel(r, 0, 2, now=3_000, sort=fr.SORT_PRICE) == [1, 0]
    # Recovery as the window slides past the run's last failure (bucket 3 leaves at 33 s) ...
    assert r.is_degraded(0, 32_999)
    assert not r.is_degraded(0, 33_000)
    # ... and a provider still down is demoted again by its first failure, not its fourth.
    fail(r, 0, 1, now=33_000)
    assert r.is_degraded(0, 33_000)
    r.record_success(0, 33_100)
    assert not r.is_degraded(0, 33_100)


def test_recovery_as_the_window_slides(fr: ModuleType) -> None:
    r = make(fr, [1 * M, 2 * M], window_buckets=30, bucket_ms=1000)
    fail(r, 0, 5, now=1_500)  # bucket 1
    assert r.window(0, 1_500) == (0, 5)
    assert r.is_degraded(0, 30_999)  # bucket 30: buckets 1..30 are live
    assert sel(r, 0, 2, now=30_999, sort=fr.SORT_PRICE) == [1, 0]
    assert r.window(0, 31_000) == (0, 0)  # bucket 31: bucket 1 slid out
    assert not r.is_degraded(0, 31_000)
    assert sel(r, 0, 2, now=31_000, sort=fr.SORT_PRICE) == [0, 1]


def test_a_reused_bucket_starts_from_zero(fr: ModuleType) -> None:
    r = make(fr, [M], window_buckets=3, bucket_ms=100)
    fail(r, 0, 4, now=0)
    r.record_success(0, 300)  # the same slot as bucket 0, three buckets later
    assert r.window(0, 300) == (1, 0)
    assert r.window(0, 0) == (0, 0)  # the old events are gone, not merely out of the window
    fail(r, 0, 3, now=350)
    assert r.window(0, 399) == (1, 3)
    assert r.is_degraded(0, 399)
    assert r.is_degraded(0, 599)
    assert not r.is_degraded(0, 600)


def test_events_are_counted_in_their_buckets(fr: ModuleType) -> None:
    r = make(fr, [M], window_buckets=4, bucket_ms=10)
    for t in range(0, 60, 5):  # two events in each of the buckets 0..5
        r.record_success(0, t)
    assert r.window(0, 59) == (8, 0)  # buckets 2..5
    # At 25 (bucket 2) only bucket 2 counts: 0 and 1 were reused by 4 and 5, which are newer.
    assert r.window(0, 25) == (2, 0)
    assert r.window(0, 100) == (0, 0)


def test_cool_down(fr: ModuleType) -> None:
    r = make(fr, [1 * M, 2 * M])
    r.cool_down(0, 5_000)
    assert r.is_degraded(0, 4_999)
    assert r.window(0, 4_999) == (0, 0)
    assert sel(r, 0, 2, now=4_999, sort=fr.SORT_PRICE) == [1, 0]
    assert not r.is_degraded(0, 5_000)
    assert sel(r, 0, 2, now=5_000, sort=fr.SORT_PRICE) == [0, 1]
    r.cool_down(0, 10_000)
    r.cool_down(0, 6_000)  # a shorter Retry-After does not cut the running one
    assert r.is_degraded(0, 9_999)
    assert not r.is_degraded(0, 10_000)


# --------------------------------------------------------------------------------- order


def test_sort_by_price(fr: ModuleType) -> None:
    r = make(fr, [3 * M, 1 * M, 2 * M, 1 * M], completion=[0, 2 * M, 0, M])
    # blended: 3, 3, 2, 2 $/M → ties by index
    assert sel(r, 0, 4, sort=fr.SORT_PRICE) == [2, 3, 0, 1]


def test_sort_by_throughput(fr: ModuleType) -> None:
    r = make(fr, [1 * M, 2 * M, 3 * M, 1 * M, 5 * M], tps=[50.0, 0.0, 200.0, 50.0, 50.0])
    # 200 first; the three at 50 by price, then index; unknown (0) last
    assert sel(r, 0, 5, sort=fr.SORT_THROUGHPUT) == [2, 0, 3, 4, 1]
    r.observe(1, 0.0, 1_000.0)
    assert sel(r, 0, 5, sort=fr.SORT_THROUGHPUT) == [1, 2, 0, 3, 4]


def test_sort_by_latency(fr: ModuleType) -> None:
    r = make(fr, [2 * M, 1 * M, 3 * M, 1 * M], ttft=[300.0, 0.0, 100.0, 300.0])
    # 100 first; the two at 300 by price (1 < 2 $/M); unknown (0) last
    assert sel(r, 0, 4, sort=fr.SORT_LATENCY) == [2, 3, 0, 1]
    r.observe(2, 900.0, 0.0)
    assert sel(r, 0, 4, sort=fr.SORT_LATENCY) == [3, 0, 2, 1]


def test_sort_applies_to_degraded_ones_too(fr: ModuleType) -> None:
    r = make(fr, [1 * M, 2 * M, 3 * M, 4 * M], tps=[10.0, 40.0, 30.0, 20.0])
    fail(r, 1, 3)
    fail(r, 2, 3)
    assert sel(r, 0, 4, sort=fr.SORT_THROUGHPUT) == [3, 0, 1, 2]


def test_order_comes_first(fr: ModuleType) -> None:
    r = make(fr, [1 * M, 2 * M, 3 * M, 4 * M, 5 * M], offset=2)
    s, e = 2, 7
    assert sel(r, s, e, sort=fr.SORT_PRICE, order=(3, 1)) == [5, 3, 2, 4, 6]
    # Filtered-out, repeated and out-of-range positions are skipped.
    got = sel(r, s, e, sort=fr.SORT_PRICE, order=(4, -1, 9, 3, 4, 0), allow=0b01111)
    assert got == [5, 2, 3, 4]
    # Named degraded ones come after every stable one, still in the given order.
    fail(r, 6, 3)
    fail(r, 3, 3)
    assert sel(r, s, e, sort=fr.SORT_PRICE, order=(4, 1, 3)) == [5, 2, 4, 6, 3]
    # Without fallbacks only the named ones, stable before degraded (SPEC §2.5).
    assert sel(r, s, e, order=(4, 1, 3), fallbacks=False) == [5, 6, 3]


def test_order_in_default_mode_leaves_the_rest_random(fr: ModuleType) -> None:
    r = make(fr, [1 * M, 1 * M, 1 * M, 1 * M], seed=3)
    seen = Counter(tuple(sel(r, 0, 4, order=(2,))) for _ in range(400))
    assert all(p[0] == 2 for p in seen)
    assert len(seen) == 6  # the three others in every order


def test_allow_fallbacks_false_returns_only_the_first(fr: ModuleType) -> None:
    r = make(fr, [2 * M, 1 * M, 3 * M])
    assert sel(r, 0, 3, sort=fr.SORT_PRICE, fallbacks=False) == [1]
    assert sel(r, 0, 3, order=(2,), fallbacks=False) == [2]
    assert len(sel(r, 0, 3, fallbacks=False)) == 1


def test_allow_fallbacks_false_never_leaves_the_named_ones(fr: ModuleType) -> None:
    r = make(fr, [1 * M, 2 * M, 3 * M])
    fail(r, 2, 3)  # the named one is degraded: it is still the only one tried
    assert sel(r, 0, 3, sort=fr.SORT_PRICE, order=(2,), fallbacks=False) == [2]
    assert sel(r, 0, 3, order=(2, 0), fallbacks=False) == [0, 2]
    # Named but filtered out: nothing, and the filter that emptied it is reported.
    assert sel(r, 0, 3, order=(2,), fallbacks=False, allow=0b011) == []
    assert r.empty_reason == fr.REASON_PROVIDER
    assert sel(r, 0, 3, order=(2,), fallbacks=False, max_prompt=2 * M) == []
    assert r.empty_reason == fr.REASON_MAX_PRICE


def test_performance_preferences_deprioritise_never_exclude(fr: ModuleType) -> None:
    # ttft: 100 ms, 900 ms, unknown, 300 ms; tps: 50, 200, unknown, 20.
    r = make(fr, [1 * M, 2 * M, 3 * M, 4 * M], ttft=[100.0, 900.0, 0.0, 300.0],
             tps=[50.0, 200.0, 0.0, 20.0])
    assert sel(r, 0, 4, sort=fr.SORT_PRICE, max_ttft=500.0) == [0, 3, 1, 2]
    assert sel(r, 0, 4, sort=fr.SORT_PRICE, min_tps=40.0) == [0, 1, 2, 3]
    assert sel(r, 0, 4, sort=fr.SORT_PRICE, max_ttft=500.0, min_tps=40.0) == [0, 1, 2, 3]
    assert sel(r, 0, 4, sort=fr.SORT_PRICE, max_ttft=200.0, min_tps=40.0) == [0, 1, 2, 3]
    assert sel(r, 0, 4, sort=fr.SORT_PRICE, min_tps=100.0) == [1, 0, 2, 3]
    # A bound none meets, or one <= 0 (unset), leaves the order as it was.
    assert sel(r, 0, 4, sort=fr.SORT_PRICE, max_ttft=1.0) == [0, 1, 2, 3]
    assert sel(r, 0, 4, sort=fr.SORT_PRICE, max_ttft=-5.0, min_tps=0.0) == [0, 1, 2, 3]
    # Named ones keep their place; degraded ones stay last, ranked the same way among themselves.
    assert sel(r, 0, 4, sort=fr.SORT_PRICE, order=(1,), max_ttft=500.0) == [1, 0, 3, 2]
    fail(r, 0, 3)
    fail(r, 1, 3)
    assert sel(r, 0, 4, sort=fr.SORT_PRICE, min_tps=100.0) == [2, 3, 1, 0]
    assert [r.meets_preferences(i, 500.0, 40.0) for i in range(4)] == [True, False, False, False]
    assert [r.meets_preferences(i, 0.0, 0.0) for i in range(4)] == [True] * 4
    # The EWMAs, not the declared seeds, once measured.
    r.observe(1, 50.0, 0.0)
    assert r.meets_preferences(1, 500.0, 0.0)


def test_free_endpoints_come_first_in_random_order(fr: ModuleType) -> None:
    r = make(fr, [M, 0, M // 100, 0, 0], seed=11)
    first: Counter[int] = Counter()
    for _ in range(3_000):
        picked = sel(r, 0, 5)
        assert sorted(picked[:3]) == [1, 3, 4]
        first[picked[0]] += 1
    for p in (1, 3, 4):
        assert abs(first[p] / 3_000 - 1 / 3) < 0.04


def test_same_seed_same_order(fr: ModuleType) -> None:
    prices = [M, 2 * M, 3 * M, 0, 4 * M, 0, 5 * M]
    a = make(fr, prices, seed=42)
    b = make(fr, prices, seed=42)
    c = make(fr, prices, seed=43)
    runs_a = [sel(a, 0, 7) for _ in range(50)]
    assert runs_a == [sel(b, 0, 7) for _ in range(50)]
    assert runs_a != [sel(c, 0, 7) for _ in range(50)]


def test_default_mode_first_pick_follows_inverse_square_price(fr: ModuleType) -> None:
    # SPEC §2.3: prices $1, $2, $3 → weights 1, 1/4, 1/9; the $1 endpoint is first 9x as often as
    # the $3 one. Expected shares w/Σw = 0.735, 0.184, 0.082; 20k draws give σ ≤ 0.0032.
    r = make(fr, [1 * M, 2 * M, 3 * M], seed=2024)
    n = 20_000
    first = Counter(sel(r, 0, 3)[0] for _ in range(n))
    weights = [1.0, 1 / 4, 1 / 9]
    for p, w in enumerate(weights):
        assert first[p] / n == pytest.approx(w / sum(weights), abs=0.015)
    assert 8.0 < first[0] / first[2] < 10.0


def test_second_pick_is_without_replacement(fr: ModuleType) -> None:
    # Given that the $1 endpoint went first, the $2 one is second with odds (1/4) : (1/9).
    r = make(fr, [1 * M, 2 * M, 3 * M], seed=7)
    second: Counter[int] = Counter()
    for _ in range(20_000):
        picked = sel(r, 0, 3)
        assert sorted(picked) == [0, 1, 2]
        if picked[0] == 0:
            second[picked[1]] += 1
    share = second[1] / (second[1] + second[2])
    assert share == pytest.approx((1 / 4) / (1 / 4 + 1 / 9), abs=0.02)


# --------------------------------------------------------------------------------- EWMAs


def test_ewma_is_seeded_by_the_declared_values(fr: ModuleType) -> None:
    r = make(fr, [M], tps=[100.0], ttft=[400.0], ewma_alpha=0.3)
    assert (r.throughput(0), r.latency(0)) == (100.0, 400.0)
    r.observe(0, 0.0, -5.0)  # not measured: nothing changes
    r.observe(0, math.nan, math.inf)
    assert (r.throughput(0), r.latency(0)) == (100.0, 400.0)
    r.observe(0, 200.0, 50.0)  # the first measurement replaces the seed
    assert (r.throughput(0), r.latency(0)) == (50.0, 200.0)
    r.observe(0, 0.0, 150.0)  # then alpha*x + (1-alpha)*ewma, each EWMA on its own
    assert r.throughput(0) == 0.3 * 150.0 + (1.0 - 0.3) * 50.0
    assert r.latency(0) == 200.0
    r.observe(0, 100.0, 0.0)
    assert r.latency(0) == 0.3 * 100.0 + (1.0 - 0.3) * 200.0
    # A new declared value does not overwrite a measured EWMA, but seeds an unmeasured one.
    r.set_endpoint(0, M, 0, 0, 1000, 0, 0, 0, 999.0, 999.0)
    assert r.throughput(0) == pytest.approx(80.0)
    r2 = make(fr, [M], tps=[10.0])
    r2.set_endpoint(0, M, 0, 0, 1000, 0, 0, 0, 20.0, 30.0)
    assert (r2.throughput(0), r2.latency(0)) == (20.0, 30.0)


# --------------------------------------------------------------------------------- compiled == twin

PRICES = st.sampled_from([0, 0, 1, 350_000, M, M, 2 * M, 3 * M, 15 * M, 1 << 48])
SPEEDS = st.sampled_from([0.0, 0.5, 30.0, 30.0, 100.0, 1234.5678])


@st.composite
def endpoint_data(draw: st.DrawFn) -> tuple[Any, ...]:
    return (
        draw(PRICES),
        draw(PRICES),
        draw(st.integers(0, 1000)),
        draw(st.sampled_from([0, 4_096, 8_192, 128_000, 1_000_000])),
        draw(st.integers(0, 5) | st.just(63)),
        draw(st.integers(0, 15) | st.just((1 << 64) - 1)),
        draw(st.integers(0, 3)),
        draw(SPEEDS),
        draw(SPEEDS),
    )


@st.composite
def prefs(draw: st.DrawFn, m: int) -> dict[str, Any]:
    full = (1 << m) - 1

    def sometimes(off: Any, on: st.SearchStrategy[Any]) -> Any:
        # Each filter is active in about one draw out of four, so most selects return endpoints.
        return draw(on) if draw(st.integers(0, 3)) == 0 else off

    return {
        "allow": sometimes(full, st.integers(0, full) | st.integers(0, ALL64)),
        "deny": sometimes(False, st.booleans()),
        "zdr": sometimes(False, st.booleans()),
        "quant": sometimes(0, st.integers(0, 63).map(lambda q: 1 << q) | st.integers(1, ALL64)),
        "max_prompt": sometimes(-1, PRICES),
        "max_completion": sometimes(-1, PRICES),
        "need": sometimes(0, st.sampled_from([1, 8_000, 100_000, 2_000_000])),
        "params": sometimes(0, st.integers(0, 15)),
        "sort": draw(st.integers(0, 3)),
        "order": tuple(draw(st.lists(st.integers(-2, m + 2), max_size=6))),
        "fallbacks": draw(st.integers(0, 3)) > 0,
        "max_ttft": sometimes(0.0, SPEEDS | st.floats(-1, 1e4)),
        "min_tps": sometimes(0.0, SPEEDS | st.floats(-1, 1e4)),
    }


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    m = draw(st.integers(1, 64))
    offset = draw(st.integers(0, 3))
    n = offset + m + draw(st.integers(0, 2))
    events = []
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["ok", "ok", "fail", "fail", "fail", "cool", "obs", "select"]))
        dt = draw(st.sampled_from([0, 0, 0, 1, 7, 250, 999, 1000, 5000, 31_000]))
        i = draw(st.integers(offset, min(n - 1, offset + 3)) | st.integers(0, n - 1))  # hot few
        if kind == "cool":
            arg: Any = draw(st.sampled_from([0, 1, 500, 2_000, 20_000]) | st.integers(0, 40_000))
        elif kind == "obs":
            arg = (draw(SPEEDS | st.floats(-1, 1e4)), draw(SPEEDS | st.floats(-1, 1e4)))
        elif kind == "select":
            arg = draw(prefs(m))
        else:
            arg = None
        events.append((kind, dt, i, arg))
    return {
        "router": {
            "seed": draw(st.integers(-(1 << 70), 1 << 70)),
            "window_buckets": draw(st.integers(1, 40)),
            "bucket_ms": draw(st.sampled_from([1, 10, 100, 1000])),
            "min_failures": draw(st.integers(1, 4)),
            "failure_pct": draw(st.sampled_from([0, 25, 50, 75, 100]) | st.integers(0, 100)),
            "ewma_alpha": draw(st.sampled_from([0.3, 1.0, 0.1, 0.77])),
            "consecutive_failures": draw(st.integers(1, 6)),
        },
        "n": n,
        "start": offset,
        "end": offset + m,
        "endpoints": [draw(endpoint_data()) for _ in range(n)],
        "t0": draw(st.integers(0, 1 << 40)),
        "events": events,
    }


def _run(fr: ModuleType, sc: dict[str, Any]) -> list[Any]:
    """Play a scenario; return everything observable, floats as hex so equality is bit-exact."""
    r = fr.Router(sc["n"], **sc["router"])
    for i, data in enumerate(sc["endpoints"]):
        r.set_endpoint(i, *data)
    start, end, now = sc["start"], sc["end"], sc["t0"]
    seen: list[Any] = []
    for kind, dt, i, arg in sc["events"]:
        now += dt
        if kind == "ok":
            r.record_success(i, now)
        elif kind == "fail":
            r.record_failure(i, now)
        elif kind == "cool":
            r.cool_down(i, now + arg)
        elif kind == "obs":
            r.observe(i, *arg)
        else:
            seen.append((sel(r, start, end, now=now, **arg), r.empty_reason))
    for i in range(sc["n"]):
        seen.append(
            (
                r.window(i, now),
                [r.is_degraded(i, now + later) for later in (0, 999, 5_000, 20_000, 40_000)],
                r.throughput(i).hex(),
                r.latency(i).hex(),
                r.meets_preferences(i, 100.0, 30.0),
            )
        )
    # The PRNG states must agree too: one more unfiltered default-mode draw shows it.
    seen.append(sel(r, start, end, now=now, allow=ALL64))
    return seen


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_compiled_matches_twin(sc: dict[str, Any]) -> None:
    assert _run(_compiled(), sc) == _run(_fastroute_py, sc)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(PRICES, PRICES), min_size=1, max_size=64),
    st.integers(0, ALL64),
    st.integers(1, 30),
)
def test_default_mode_sequences_match_bit_for_bit(
    prices: list[tuple[int, int]], seed: int, rounds: int
) -> None:
    compiled = _compiled()
    a = compiled.Router(len(prices), seed=seed)
    b = _fastroute_py.Router(len(prices), seed=seed)
    for r in (a, b):
        for i, (p, c) in enumerate(prices):
            r.set_endpoint(i, p, c, 0, 1000, 0, 0, 0, 0.0, 0.0)
    for _ in range(rounds):
        assert sel(a, 0, len(prices)) == sel(b, 0, len(prices))


@settings(max_examples=100, deadline=None)
@given(st.integers(-(1 << 64), 1 << 64), st.lists(st.integers(-(1 << 64), 1 << 64), max_size=4))
def test_out_of_range_arguments_fail_alike(value: int, order: list[int]) -> None:
    outcomes = []
    for fr in (_compiled(), _fastroute_py):
        r = make(fr, [M, 2 * M])
        got: list[Any] = []
        for call in (
            lambda r=r: r.record_failure(0, value),
            lambda r=r: r.cool_down(0, value),
            lambda r=r: r.window(value, 0),
            lambda r=r: sel(r, 0, 2, allow=value, order=tuple(order)),
            lambda r=r: sel(r, 0, 2, max_prompt=value, params=value & ALL64),
            lambda r=r: sel(r, 0, 2, need=value, sort=value % 4),
        ):
            try:
                got.append(call())
            except (OverflowError, IndexError, ValueError) as exc:
                got.append(type(exc))
        outcomes.append(got)
    assert outcomes[0] == outcomes[1]
