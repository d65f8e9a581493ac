"""What the endpoints API reports of an endpoint's past (edgeproxy.history)."""

from __future__ import annotations

from edgeproxy.history import SAMPLES, History

MIN = 60_000
NOW = 1_790_000_000_000 // MIN * MIN + 30_000  # ms, half-way through a minute


def test_uptime_is_whole_minutes_per_period() -> None:
    h = History()
    assert h.uptime(0, NOW, 5, 30, 1440) == [None, None, None]
    h.outcome(0, NOW - 25 * 60 * MIN, failed=9)  # over a day ago: gone
    h.outcome(0, NOW - 10 * MIN, failed=1)
    h.outcome(0, NOW - 4 * MIN, ok=1)  # the fifth minute back is still in "the last 5"
    h.outcome(0, NOW, ok=2)
    assert h.uptime(0, NOW, 5, 30, 1440) == [100.0, 75.0, 75.0]
    assert h.uptime(0, NOW + 6 * MIN, 5, 30) == [None, 75.0]
    assert h.uptime(1, NOW, 5) == [None]  # another endpoint saw nothing


def test_a_slot_a_day_old_starts_again() -> None:
    h = History()
    h.outcome(0, NOW - 1440 * MIN, failed=5)  # the same slot of the ring, a day earlier
    h.outcome(0, NOW, ok=1)
    assert h.uptime(0, NOW, 1440) == [100.0]


def test_percentiles_read_as_openrouter_reads_them() -> None:
    h = History()
    for v in range(1, 101):
        h.sample(0, NOW, float(v), float(v))
    # Latency: p90 is what 90 % of requests stay under; throughput: what 90 % of them reach.
    assert h.latency(0, NOW) == {"p50": 50.0, "p75": 75.0, "p90": 90.0, "p99": 99.0}
    assert h.throughput(0, NOW) == {"p50": 51.0, "p75": 26.0, "p90": 11.0, "p99": 2.0}
    assert h.latency(0, NOW + 31 * MIN) is None  # older than 30 minutes
    assert h.latency(1, NOW) is None


def test_only_the_latest_samples_are_kept_and_zero_is_no_sample() -> None:
    h = History()
    h.sample(0, NOW, 0.0, 5.0)  # a whole answer: no time to first token
    assert h.latency(0, NOW) is None and h.throughput(0, NOW) == dict.fromkeys(
        ("p50", "p75", "p90", "p99"), 5.0)
    for v in range(SAMPLES + 10):
        h.sample(0, NOW, 1000.0 if v < 10 else 1.0, 0.0)
    assert h.latency(0, NOW) == dict.fromkeys(("p50", "p75", "p90", "p99"), 1.0)
