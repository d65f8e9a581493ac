"""What the ledger journal (edgeproxy/billing/journal.py) costs a request.

    python bench/bench_journal.py [--dir DIR] [--run-ms 200] [--repeats 7]

Every settled generation is appended to the journal (encode one JSON line, one write(2), no
fsync) on the request path; every flush of the writer seals the segment (a new file, opened and
locked) and trims the committed one (unlink, close). Prints, as medians of --repeats runs of
about --run-ms each, wall and CPU time of:
  append             one record
  seal + trim        one flush's rotation (amortised over the records of that flush)
The journal directory is a fresh one under --dir (default: the system temp directory); say which
filesystem it was on when quoting the figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _timing import cpu_name, per_call_ns  # bench/ is on sys.path when run as a script

from edgeproxy.billing.journal import Journal
from edgeproxy.billing.ledger import GenerationRecord


def record(i: int) -> GenerationRecord:
    """A typical record: ids as the gateway makes them, a model and provider, an app name."""
    return GenerationRecord(f"gen-{time.time_ns()}-{i:08x}", "acct_3f9c2a1b7d4e6f80",
                            "key_9a8b7c6d5e4f3a2b", "meta-llama/llama-3.1-70b-instruct",
                            "together", 1234, 256, 0, 0, 1876, False, False, 850, 120, 730,
                            True, False, "stop", "stop", "my app", "default",
                            int(time.time()))


def filesystem(path: str) -> str:
    try:
        out = subprocess.run(["df", "-T", path], capture_output=True, text=True, check=True)
        return out.stdout.splitlines()[1].split()[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--run-ms", type=float, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        j = Journal(d, "bench")
        j.orphans()
        j.start()
        rec = record(0)
        marks: list[int] = []

        def rotate() -> None:
            j.append(rec)  # a flush seals only a segment that holds records
            marks.append(j.seal())
            j.trim(marks[-1])

        results = {}
        for clock, name in ((time.perf_counter_ns, "wall"), (time.process_time_ns, "CPU")):
            results[("append", name)] = per_call_ns(j.append, (rec,), args.run_ms, args.repeats,
                                                    clock)
            # Segments grow without a trim here: rotate now and then to keep the file small.
            rotate()
            per = per_call_ns(rotate, (), args.run_ms, args.repeats, clock)
            results[("seal + trim", name)] = per - results[("append", name)]
        j.close(committed=True)
    size = len(msgspec.json.encode(rec)) + 1
    print(f"{cpu_name()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; journal on "
          f"{filesystem(args.dir)} ({args.dir}); a record's line: {size} bytes")
    print(f"{'what':<14}{'wall µs':>10}{'CPU µs':>10}")
    for what in ("append", "seal + trim"):
        print(f"{what:<14}{results[(what, 'wall')] / 1000:>10.2f}"
              f"{results[(what, 'CPU')] / 1000:>10.2f}")
    print("(medians of", args.repeats, "runs; seal + trim is paid once per flush, not per record)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
