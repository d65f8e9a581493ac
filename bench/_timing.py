"""Timing helpers shared by the micro-benchmarks: calibrated runs, median per call."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["cpu_name", "per_call_ns"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def per_call_ns(fn: Any, args: tuple[Any, ...], run_ms: float, repeats: int,
                clock: Callable[[], int] = time.perf_counter_ns) -> float:
    """Median over `repeats` runs of the mean ns per call of one run (about `run_ms` long, by
    `clock`: wall time by default; `time.process_time_ns` counts this process's CPU only, which
    other load on a shared machine does not inflate)."""
    iters = 1
    while True:  # calibrate: iterations for a run of about run_ms
        t0 = clock()
        for _ in range(iters):
            fn(*args)
        elapsed = clock() - t0
        if elapsed >= run_ms * 1e6 / 4:
            break
        iters *= 2
    iters = max(1, int(iters * run_ms * 1e6 / elapsed))
    runs = []
    for _ in range(repeats):
        t0 = clock()
        for _ in range(iters):
            fn(*args)
        runs.append((clock() - t0) / iters)
    return statistics.median(runs)
