"""Per-request cost of the money path (issue 11): reserve → settle, as every request does it.

    python bench/bench_money.py [--requests 20000] [--repeats 5] [--redis redis://127.0.0.1:6379/15]

Three cases, each the median over --repeats runs of the mean wall time per request of one run:
  memory   one node: the reservation checks the account's room in memory, settle queues the
           ledger record (and appends it to the journal, when billing has one);
  leased   shared state on Redis: the same, spending this node's lease of the account; a slice of
           $1 covers 1,000 requests of $0.001, so one Redis grant per 1,000 is included;
  grant    one Redis round trip for a new slice (what a request pays when its node's slice is
           spent: `--redis` must be reachable).
The ledger writer is not running (its cost is off the request path: bench_ledger.py).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _timing import cpu_name  # bench/ is on sys.path when run as a script

from edgeproxy.billing.ledger import GenerationRecord, Ledger
from edgeproxy.billing.service import Billing, Caller
from edgeproxy.billing.store import SQLiteDriver
from edgeproxy.config import BillingConfig
from edgeproxy.state.redis import RedisState

COST = 1_000  # micro-USD a request: $0.001


async def _setup(tmp: str, shared: RedisState | None) -> tuple[Billing, Caller]:
    ledger = Ledger(SQLiteDriver(f"{tmp}/ledger.db"))
    await ledger.open()
    acct = await ledger.create_account("bench")
    await ledger.add_credits(acct.id, 10**12, "crypto")
    key, _ = await ledger.create_key(acct.id, "bench")
    billing = Billing(ledger, BillingConfig(), "keys", shared)
    await billing.refresh()
    caller = await billing.authenticate("Bearer " + key)
    return billing, caller


def _record(i: int, caller: Caller) -> GenerationRecord:
    return GenerationRecord(f"gen-bench-{i}", caller.account.id, caller.key.id, "m", "p", 10, 10,
                            0, 0, COST, False, False, 1, 1, 1, False, False, "stop", "stop",
                            None, None, 0)


async def per_request_us(billing: Billing, caller: Caller, n: int) -> float:
    records = [_record(i, caller) for i in range(n)]
    t0 = time.perf_counter()
    for rec in records:
        r = await billing.reserve(caller, COST)
        billing.settle(r, rec)
    elapsed = time.perf_counter() - t0
    # what a flushed batch does to the node's books, so the next run starts level
    billing._queue.clear()
    caller.account.pending = caller.key_pending = 0
    if billing.leases is not None:
        caller.account.lease = 0
    return elapsed / n * 1e6


async def grant_us(shared: RedisState, caller: Caller, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await shared.grant(caller.account.id, caller.key.id, COST, 0, COST, 10**12, 0, None,
                           None)
    return (time.perf_counter() - t0) / n * 1e6


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    args = p.parse_args()
    print(f"# {cpu_name()}; median of {args.repeats} runs of {args.requests} requests")
    with tempfile.TemporaryDirectory() as tmp:
        billing, caller = await _setup(tmp, None)
        runs = [await per_request_us(billing, caller, args.requests) for _ in range(args.repeats)]
        print(f"memory   {statistics.median(runs):6.2f} µs/request")
        await billing.ledger.close()
    shared = RedisState(args.redis, node=f"bench-{time.time_ns()}")
    if not await shared.ping():
        print("leased   (no Redis at --redis)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        billing, caller = await _setup(tmp, shared)
        assert billing.leases is not None
        await billing.leases.beat()
        await asyncio.sleep(shared.grace_ms / 1000)  # a new epoch waits its grace period
        runs = [await per_request_us(billing, caller, args.requests) for _ in range(args.repeats)]
        print(f"leased   {statistics.median(runs):6.2f} µs/request (one grant per 1,000)")
        runs = [await grant_us(shared, caller, 500) for _ in range(args.repeats)]
        print(f"grant    {statistics.median(runs):6.1f} µs per Redis round trip")
        await billing.ledger.close()
    await shared.r.delete(*[k async for k in shared.r.scan_iter("ep:*")] or ["ep:none"])
    await shared.close()


if __name__ == "__main__":
    asyncio.run(main())
