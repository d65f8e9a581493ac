"""Micro-benchmark of the auto router's classifier (SPEC §7: "costs microseconds, not a model call").

Times autorouter.classify() on a 4 KB and a 400 KB prompt (a system message and one user message
of English prose, with and without a question that selects a rule), against the targets of the
issue: <= 20 µs for 4 KB and <= 200 µs for 400 KB. The 400 KB prompt is estimated at ~100K tokens,
under the long-context threshold, so it takes the full text path. Each figure is the median over
--repeats runs of the mean µs per call of one run (about --run-ms long).

    python bench/bench_autorouter.py
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _timing import cpu_name, per_call_ns  # bench/ is on sys.path when run as a script

from edgeproxy.autorouter import AutoPolicy, classify
from edgeproxy.schema import Message

TARGET_US = {4 * 1024: 20.0, 400 * 1024: 200.0}

_WORDS = (
    "the council reviewed its annual budget and the plans for new housing along the river while "
    "residents asked about parking schools buses and the library which had shortened its hours "
    "after a wet winter damaged part of the roof and delayed the repairs until late spring"
).split()

PYTHON_TAIL = """

Why does this raise ZeroDivisionError?

```python
def mean(xs):
    return sum(xs) / len(xs)
```
"""
PROOF_TAIL = "\n\nProve that the square root of 2 is irrational."


def prose(chars: int, seed: int = 1) -> str:
    rnd = random.Random(seed)
    out: list[str] = []
    n = 0
    while n < chars:
        s = " ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(8, 22)))
        s = s[0].upper() + s[1:] + (", " if rnd.random() < 0.2 else ". ")
        if rnd.random() < 0.1:
            s += "\n\n"
        out.append(s)
        n += len(s)
    return "".join(out)[:chars]


def cases(size: int) -> list[tuple[str, list[Message]]]:
    system = Message(role="system", content="You are a helpful assistant.")
    out = []
    for label, tail in (("plain prose", ""), ("+ python question", PYTHON_TAIL),
                        ("+ proof question", PROOF_TAIL)):
        text = prose(size - len(tail)) + tail
        out.append((label, [system, Message(role="user", content=text)]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--run-ms", type=float, default=200.0, help="length of one timed run")
    opts = ap.parse_args()
    policy = AutoPolicy()

    print(f"Python {platform.python_version()} on {platform.machine()}, {cpu_name()}")
    print(f"median of {opts.repeats} runs of ~{opts.run_ms:.0f} ms each, µs per classify()\n")
    print(f"{'prompt':26} {'rule':10} {'µs':>8} {'target':>8}")
    ok = True
    for size, target in TARGET_US.items():
        for label, msgs in cases(size):
            tokens = sum(len(str(m.content)) for m in msgs) // 4
            args = (policy, msgs, False, tokens, None)
            rule, _ = classify(*args)
            us = per_call_ns(classify, args, opts.run_ms, opts.repeats) / 1000
            met = us <= target
            ok &= met
            name = f"{size // 1024} KB {label}"
            print(f"{name:26} {rule:10} {us:8.1f} {target:8.0f} {'' if met else 'MISSED'}")
    print("\ntargets (4 KB <= 20 µs, 400 KB <= 200 µs):", "met" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
