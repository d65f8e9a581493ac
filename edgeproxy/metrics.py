"""Prometheus text exposition (SPEC §9) without a client library: counters and histograms keyed by
label tuples, rendered on demand. Recording is a dict update: cheap enough for the request path.
Integers print exactly and floats with repr's shortest round-trip digits (the format's values are
Go ParseFloat numbers: https://prometheus.io/docs/instrumenting/exposition_formats/), never
rounded to six significant digits.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable
from typing import TypeVar

__all__ = ["Counter", "Gauge", "Histogram", "Registry"]


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    esc = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in values)
    return "{" + ",".join(f'{n}="{v}"' for n, v in zip(names, esc, strict=True)) + "}"


def _value(v: float) -> str:
    """A sample value: integral ones as exact integers, others as repr (shortest exact)."""
    if isinstance(v, int):
        return str(v)
    if math.isfinite(v):
        return str(int(v)) if v.is_integer() else repr(v)
    return "NaN" if math.isnan(v) else ("+Inf" if v > 0 else "-Inf")


class Counter:
    """A counter; with `scale` it counts integer units (e.g. micro-USD) and shows value / scale,
    exactly, so money never goes through a float sum."""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = (), scale: int = 1) -> None:
        self.name, self.help, self.label_names = name, help, labels
        self.scale = scale
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...] = (), amount: float = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + amount

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for key, v in self.values.items():
            out.append(f"{self.name}{_labels(self.label_names, key)} {self._shown(v)}")
        return out

    def _shown(self, v: float) -> str:
        if self.scale == 1:
            return _value(v)
        whole, part = divmod(int(v), self.scale)  # scale: a power of ten
        digits = len(str(self.scale)) - 1
        return f"{whole}.{part:0{digits}d}".rstrip("0").rstrip(".")


class Gauge:
    def __init__(
        self, name: str, help: str, labels: tuple[str, ...] = (),
        fn: Callable[[], dict[tuple[str, ...], float]] | None = None,
    ) -> None:
        self.name, self.help, self.label_names, self.fn = name, help, labels, fn
        self.values: dict[tuple[str, ...], float] = {}

    def set(self, value: float, labels: tuple[str, ...] = ()) -> None:
        self.values[labels] = value

    def render(self) -> list[str]:
        values = self.fn() if self.fn is not None else self.values
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        for key, v in values.items():
            out.append(f"{self.name}{_labels(self.label_names, key)} {_value(v)}")
        return out


class Histogram:
    # Seconds; from 50 µs (gateway overhead) to minutes (long generations).
    BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
               0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help, labels
        self.series: dict[tuple[str, ...], list[float]] = {}  # bucket counts..., count, sum

    def observe(self, value: float, labels: tuple[str, ...] = ()) -> None:
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = [0.0] * (len(self.BUCKETS) + 3)
        s[bisect_left(self.BUCKETS, value)] += 1
        s[-2] += 1
        s[-1] += value

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        names = (*self.label_names, "le")
        for key, s in self.series.items():
            acc = 0.0
            for i, b in enumerate(self.BUCKETS):
                acc += s[i]
                out.append(f"{self.name}_bucket{_labels(names, (*key, f'{b:g}'))} {_value(acc)}")
            acc += s[len(self.BUCKETS)]
            out.append(f"{self.name}_bucket{_labels(names, (*key, '+Inf'))} {_value(acc)}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {_value(s[-2])}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {_value(s[-1])}")
        return out


_M = TypeVar("_M", Counter, Gauge, Histogram)


class Registry:
    def __init__(self) -> None:
        self.items: list[Counter | Gauge | Histogram] = []

    def add(self, item: _M) -> _M:
        self.items.append(item)
        return item

    def render(self) -> bytes:
        lines: list[str] = []
        for m in self.items:
            lines.extend(m.render())
        return ("\n".join(lines) + "\n").encode()
