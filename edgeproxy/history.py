"""Each endpoint's recent past, as `/models/{author}/{slug}/endpoints` reports it (SPEC §1.1):
uptime over the last 5 minutes, 30 minutes and day, and latency and throughput percentiles over
the last 30 minutes. Routing reads the router's own live window and EWMAs, never this.

Uptime is OpenRouter's (PublicEndpoint.uptime_last_5m in its OpenAPI spec): successful attempts /
(successful + failed) × 100, rate-limited ones left out; None when the period saw no attempt.
Attempts are counted per minute in a ring of one day's minutes per endpoint, so a period is
whole minutes: "the last 5 minutes" is this minute and the four before it.

Latency is time to first token in milliseconds (streams only: a whole answer's first token is not
seen apart) and throughput completion tokens per second, as the router measures them. Each
endpoint keeps its last SAMPLES of each with their time; the percentiles are those of the samples
of the last 30 minutes (nearest rank). OpenRouter reads a percentile as "p90: 90% of requests
perform better than this value" (its provider-selection guide), so a latency p90 is the 90th
percentile and a throughput p90 the 10th. An endpoint allocates its ring at its first attempt.
"""

from __future__ import annotations

import math
from array import array

__all__ = ["PERCENTILES", "History"]

MINUTES = 24 * 60  # the longest period reported: a day
SAMPLES = 256  # latency and throughput samples kept per endpoint
PERCENTILES = (50, 75, 90, 99)
_MINUTE_MS = 60_000


class _Samples:
    """The last SAMPLES values with their time (ms), oldest overwritten first."""

    __slots__ = ("at", "count", "value")

    def __init__(self) -> None:
        self.at = array("q", bytes(8 * SAMPLES))
        self.value = array("d", bytes(8 * SAMPLES))
        self.count = 0

    def add(self, at: int, value: float) -> None:
        i = self.count % SAMPLES
        self.at[i] = at
        self.value[i] = value
        self.count += 1

    def since(self, start: int) -> list[float]:
        n = min(self.count, SAMPLES)
        return [v for a, v in zip(self.at[:n], self.value[:n], strict=True) if a >= start]


class _Track:
    __slots__ = ("failed", "latency", "minute", "ok", "throughput")

    def __init__(self) -> None:
        self.minute = array("q", bytes(8 * MINUTES))  # the minute (since the epoch) a slot counts
        self.ok = array("i", bytes(4 * MINUTES))
        self.failed = array("i", bytes(4 * MINUTES))
        self.latency = _Samples()
        self.throughput = _Samples()


class History:
    """Outcomes and speed samples of endpoints by index; `now` is milliseconds since the epoch."""

    def __init__(self) -> None:
        self._tracks: dict[int, _Track] = {}

    def _track(self, index: int) -> _Track:
        t = self._tracks.get(index)
        if t is None:
            t = self._tracks[index] = _Track()
        return t

    def outcome(self, index: int, now: int, ok: int = 0, failed: int = 0) -> None:
        """Count attempts that succeeded or failed (not rate-limited ones) at `now`."""
        t = self._track(index)
        minute = now // _MINUTE_MS
        i = minute % MINUTES
        if t.minute[i] != minute:  # the slot last counted a day ago or more
            t.minute[i] = minute
            t.ok[i] = t.failed[i] = 0
        t.ok[i] += ok
        t.failed[i] += failed

    def sample(self, index: int, now: int, ttft_ms: float, tokens_per_s: float) -> None:
        """One attempt's time to first token and throughput (0: not measured)."""
        t = self._track(index)
        if ttft_ms > 0:
            t.latency.add(now, ttft_ms)
        if tokens_per_s > 0:
            t.throughput.add(now, tokens_per_s)

    def uptime(self, index: int, now: int, *periods: int) -> list[float | None]:
        """For each period (minutes, this one included): the percent of its attempts that
        succeeded."""
        t = self._tracks.get(index)
        out: list[float | None] = []
        this = now // _MINUTE_MS
        for period in periods:
            first = this - period + 1
            ok = failed = 0
            if t is not None:
                kept = [i for i, m in enumerate(t.minute) if first <= m <= this]
                ok = sum(t.ok[i] for i in kept)
                failed = sum(t.failed[i] for i in kept)
            out.append(round(100.0 * ok / (ok + failed), 2) if ok + failed else None)
        return out

    def latency(self, index: int, now: int) -> dict[str, float] | None:
        """Time-to-first-token percentiles (ms) of the last 30 minutes; None without samples."""
        t = self._tracks.get(index)
        return _percentiles(t.latency.since(now - 30 * _MINUTE_MS), False) if t else None

    def throughput(self, index: int, now: int) -> dict[str, float] | None:
        """Tokens-per-second percentiles of the last 30 minutes; None without samples."""
        t = self._tracks.get(index)
        return _percentiles(t.throughput.since(now - 30 * _MINUTE_MS), True) if t else None


def _percentiles(values: list[float], higher_is_better: bool) -> dict[str, float] | None:
    if not values:
        return None
    values.sort(reverse=higher_is_better)  # best first: pXX is what XX % of them match or beat
    n = len(values)
    return {f"p{p}": round(values[max(0, math.ceil(p * n / 100) - 1)], 2) for p in PERCENTILES}
