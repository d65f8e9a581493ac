"""Ledger write throughput: generation records per second through the batched writer's path.

    python bench/bench_ledger.py [--records 50000] [--batch 1000] [--url sqlite:///tmp/x.db]

Writes `records` GenerationRecords in batches with Ledger.write (one transaction per batch that
also moves the money, as the writer does) and prints records/s, median of 3 runs. The target
(issue 4) is at least 5,000 records/s on SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time

from edgeproxy.billing.ledger import GenerationRecord, Ledger
from edgeproxy.billing.store import open_driver


async def run(url: str, records: int, batch: int) -> float:
    ledger = Ledger(open_driver(url))
    await ledger.open()
    try:
        acct = await ledger.create_account("bench")
        _, key = await ledger.create_key(acct.id, "bench")
        now = int(time.time())
        recs = [GenerationRecord(f"gen-{now}-{i}-{os.getpid()}-{time.perf_counter_ns()}",
                                 acct.id, key.id, "m/x", "acme", 120, 40, 0, 0, 37, False,
                                 False, 150, 40, 110, bool(i % 2), False, "stop", "stop", None,
                                 "default", now) for i in range(records)]
        t = time.perf_counter()
        for i in range(0, records, batch):
            await ledger.write(recs[i:i + batch])
        return records / (time.perf_counter() - t)
    finally:
        await ledger.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--url", help="ledger URL (default: a fresh SQLite file per run)")
    args = ap.parse_args()
    rates = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as d:
            url = args.url or f"sqlite:///{d}/ledger.db"
            rates.append(asyncio.run(run(url, args.records, args.batch)))
    med = statistics.median(rates)
    print(f"ledger {args.url or 'sqlite (WAL, synchronous=NORMAL)'}: {med:,.0f} records/s "
          f"(median of 3; runs {', '.join(f'{r:,.0f}' for r in rates)}; batch {args.batch})")
    print("target >= 5,000 records/s:", "met" if med >= 5000 else "NOT met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
