"""The Prometheus text format of /metrics (edgeproxy/metrics.py): values exact, never rounded."""

from __future__ import annotations

from edgeproxy.metrics import Counter, Gauge, Histogram, Registry


def _samples(text: bytes) -> dict[str, str]:
    return dict(line.rsplit(" ", 1) for line in text.decode().splitlines()
                if not line.startswith("#"))


def test_values_print_exactly() -> None:
    reg = Registry()
    requests = reg.add(Counter("req_total", "requests", ("status",)))
    requests.inc(("200",), 1_234_567)  # printed 1.23457e+06 before
    requests.inc(("500",))
    big = reg.add(Counter("big_total", "a count beyond float precision"))
    big.inc((), 2**60 + 1)
    ratio = reg.add(Counter("ratio_total", "floats keep every digit"))
    ratio.inc((), 0.1)
    ratio.inc((), 0.2)
    spent = reg.add(Counter("spent_usd", "micro-USD shown in USD", ("model",), scale=1_000_000))
    spent.inc(("a",), 1_234_567)
    spent.inc(("b",), 3_000_000)
    spent.inc(("c",), 7)
    gauge = reg.add(Gauge("g", "gauge", ("k",)))
    gauge.set(12_345_678.0, ("int",))
    gauge.set(float("inf"), ("inf",))
    gauge.set(float("-inf"), ("ninf",))
    gauge.set(float("nan"), ("nan",))
    gauge.set(1e-7, ("small",))
    hist = reg.add(Histogram("h_seconds", "histogram"))
    total = 0.0
    for _ in range(1_000_001):
        hist.observe(0.3)
        total += 0.3
    s = _samples(reg.render())
    assert s['req_total{status="200"}'] == "1234567"
    assert s['req_total{status="500"}'] == "1"
    assert s["big_total"] == str(2**60 + 1)
    assert s["ratio_total"] == repr(0.1 + 0.2) == "0.30000000000000004"
    assert s['spent_usd{model="a"}'] == "1.234567"
    assert s['spent_usd{model="b"}'] == "3"
    assert s['spent_usd{model="c"}'] == "0.000007"
    assert s['g{k="int"}'] == "12345678"
    assert (s['g{k="inf"}'], s['g{k="ninf"}'], s['g{k="nan"}']) == ("+Inf", "-Inf", "NaN")
    assert float(s['g{k="small"}']) == 1e-7
    assert s['h_seconds_bucket{le="0.25"}'] == "0"
    assert s['h_seconds_bucket{le="0.5"}'] == "1000001"
    assert s['h_seconds_bucket{le="+Inf"}'] == "1000001"
    assert s["h_seconds_count"] == "1000001"
    assert s["h_seconds_sum"] == repr(total)  # printed to 6 decimals before
