"""Micro-benchmark of route selection (SPEC §11: ≤ 5 µs with 50 endpoints, compiled ≥ 10x the twin).

Times Router.select() of the compiled ``edgeproxy._fastroute`` and of the pure-Python twin
``edgeproxy._fastroute_py`` on one model of 5 and of 50 endpoints: the default weighted-random
mode, a sort mode, and the default mode behind a provider filter. A few endpoints are free and a
few degraded, as in a live table. Each figure is the median over --repeats runs of the mean
ns per select() of one run (about --run-ms long).

    python setup.py build_ext --inplace && python bench/bench_router.py
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _timing import cpu_name, per_call_ns  # bench/ is on sys.path when run as a script

from edgeproxy import _fastroute_py

NOW_MS = 1_000_000
CASES = [  # name, sort, allow-mask builder
    ("default (1/price² weighted)", 0, lambda n: (1 << n) - 1),
    ("sort=price", 1, lambda n: (1 << n) - 1),
    ("sort=throughput", 2, lambda n: (1 << n) - 1),
    ("default + provider filter (every 2nd)", 0, lambda n: int("01" * 32, 2) & ((1 << n) - 1)),
]


def build(fr: ModuleType, n: int) -> Any:
    rnd = random.Random(n)
    r = fr.Router(n, seed=1)
    for i in range(n):
        free = i % 10 == 3
        prompt = 0 if free else rnd.randrange(50_000, 15_000_000)
        completion = 0 if free else prompt * rnd.choice((1, 2, 4))
        r.set_endpoint(
            i,
            prompt,
            completion,
            0,
            rnd.choice((32_768, 131_072, 1_000_000)),
            rnd.randrange(4),
            0xFF,
            rnd.randrange(4),
            rnd.uniform(20.0, 500.0),
            rnd.uniform(100.0, 2_000.0),
        )
    for i in range(1, n, 7):  # a few degraded endpoints, so both halves of the order are built
        for _ in range(3):
            r.record_failure(i, NOW_MS - 500)
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--run-ms", type=float, default=200.0, help="length of one timed run")
    opts = ap.parse_args()
    try:
        from edgeproxy import _fastroute
    except ImportError:
        print("edgeproxy._fastroute is not built: python setup.py build_ext --inplace")
        return 2

    print(f"Python {platform.python_version()} on {platform.machine()}, {cpu_name()}")
    print(f"median of {opts.repeats} runs of ~{opts.run_ms:.0f} ms each, ns per select()\n")
    print(f"{'case':40} {'n':>3} {'compiled':>10} {'twin':>10} {'speedup':>8}")
    ok = True
    for n in (5, 50):
        for name, sort, allow_of in CASES:
            compiled, twin = build(_fastroute, n), build(_fastroute_py, n)
            args = (0, n, NOW_MS, allow_of(n), False, False, 0, -1, -1, 0, 0, sort, (), True)
            # Both must agree (same seed, same draws) before their speed means anything.
            assert compiled.select(*args) == twin.select(*args)
            c_ns = per_call_ns(compiled.select, args, opts.run_ms, opts.repeats)
            py_ns = per_call_ns(twin.select, args, opts.run_ms, opts.repeats)
            ratio = py_ns / c_ns
            print(f"{name:40} {n:3d} {c_ns:10.0f} {py_ns:10.0f} {ratio:7.1f}x")
            if n == 50 and (c_ns > 5_000 or ratio < 10):
                ok = False
    print(
        "\ntargets (50 endpoints: compiled <= 5000 ns, >= 10x the twin):", "met" if ok else "MISSED"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
