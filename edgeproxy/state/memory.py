"""In-process state for one worker: fixed-window counters for rate limits."""

from __future__ import annotations

__all__ = ["MemoryCounters"]


class MemoryCounters:
    """Fixed-window counters: `hit` counts one event unless the window's limit is reached.

    Windows are aligned to multiples of their length (minutes start at :00, days at 00:00 UTC),
    which is what lets the Redis version use INCR + EXPIRE on the same keys.
    """

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, int]] = {}  # key -> (window start, count)

    def hit(self, key: str, window_s: int, limit: int, now: float) -> tuple[bool, int]:
        """(allowed, seconds until the window ends)."""
        start = int(now) - int(now) % window_s
        retry = start + window_s - int(now)
        w, n = self._counts.get(key, (start, 0))
        if w != start:
            n = 0
        if n >= limit:
            self._counts[key] = (start, n)
            return False, max(1, retry)
        self._counts[key] = (start, n + 1)
        if len(self._counts) > 100_000:
            self._evict(now)
        return True, retry

    def count(self, key: str, window_s: int, now: float) -> int:
        """How many events `hit` counted in the current window."""
        w, n = self._counts.get(key, (0, 0))
        return n if w == int(now) - int(now) % window_s else 0

    def _evict(self, now: float) -> None:
        # Windows of at most a day: anything older than that is dead weight.
        cutoff = int(now) - 86400
        self._counts = {k: v for k, v in self._counts.items() if v[0] >= cutoff}
