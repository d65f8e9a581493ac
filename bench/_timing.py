"""Timing helpers shared by the micro-benchmarks: calibrated runs, median per call."""

from __future__ import annotations

import platform
import statistics
import time
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


def per_call_ns(fn: Any, args: tuple[Any, ...], run_ms: float, repeats: int) -> float:
    iters = 1
    while True:  # calibrate: iterations for a run of about run_ms
        t0 = time.perf_counter_ns()
        for _ in range(iters):
            fn(*args)
        elapsed = time.perf_counter_ns() - t0
        if elapsed >= run_ms * 1e6 / 4:
            break
        iters *= 2
    iters = max(1, int(iters * run_ms * 1e6 / elapsed))
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(iters):
            fn(*args)
        runs.append((time.perf_counter_ns() - t0) / iters)
    return statistics.median(runs)
