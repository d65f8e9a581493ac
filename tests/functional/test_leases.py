"""Credit leases on a real Redis (state.redis scripts, billing.leases): what two nodes may hold of
one account, a dead node's lease returning, a batch applied once however often it is sent, and a
restart of Redis with nothing in it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgeproxy.billing.leases import Leases, NoLease
from edgeproxy.billing.ledger import KeyRow, Ledger
from edgeproxy.billing.service import AccountState, Caller
from edgeproxy.billing.store import SQLiteDriver
from edgeproxy.state.redis import RedisState
from tests.nodes import RedisServer


def _caller(account: str, credits: int, limit: int | None = None) -> Caller:
    key = KeyRow("key_" + account, account, "h", "p", "l", limit, 0, False, False, 0)
    return Caller(key, AccountState(account, credits=credits))


async def _node(url: str, name: str, ledger: Ledger, sync_s: float = 0.05) -> Leases:
    state = RedisState(url, node=name, sync_s=sync_s)
    await state.start()
    leases = Leases(state, ledger, slice_micro=1_000_000, idle_s=60)
    await leases.beat()  # alive, and the epoch noted
    return leases


@pytest.fixture
async def ledger(tmp_path: Path):
    led = Ledger(SQLiteDriver(str(tmp_path / "l.db")))
    await led.open()
    await led.create_account("a", "acct_a")
    yield led
    await led.close()


async def test_two_nodes_never_hold_more_than_the_account(tmp_path: Path, ledger: Ledger) -> None:
    redis = RedisServer(tmp_path)
    try:
        a = await _node(redis.url, "a", ledger)
        b = await _node(redis.url, "b", ledger)
        on_a, on_b = _caller("acct_a", 1000), _caller("acct_a", 1000)
        await a.cover(on_a, 100)
        assert on_a.account.lease == 250  # a quarter of what is free, at least what is needed
        with pytest.raises(NoLease) as refused:
            await b.cover(on_b, 800)
        assert refused.value.free == 750 and not refused.value.key
        await b.cover(on_b, 750)
        assert on_b.account.lease == 750
        with pytest.raises(NoLease):
            await b.cover(on_b, 751)
        # node a dies (no more beats): its lease returns once its alive key expires
        await asyncio.sleep(a.shared.alive_ms / 1000 + 0.2)
        await b.beat()
        await b.cover(on_b, 1000)
        assert on_b.account.lease == 1000
        for node in (a, b):
            await node.shared.close()
    finally:
        redis.kill()


async def test_a_batch_sent_twice_is_applied_once(tmp_path: Path, ledger: Ledger) -> None:
    redis = RedisServer(tmp_path)
    try:
        a = await _node(redis.url, "a", ledger)
        caller = _caller("acct_a", 1000)
        await a.cover(caller, 400)
        assert caller.account.lease == 400
        assert await a.shared.apply("b1", {"acct_a": (300, 0)}, {})
        assert await a.shared.apply("b1", {"acct_a": (300, 0)}, {})  # the answer was lost
        r = a.shared.r
        assert int(await r.hget("ep:acct:acct_a", "usage")) == 300
        assert int(await r.hget("ep:lease:acct_a", "a")) == 100
        await a.shared.close()
    finally:
        redis.kill()


async def test_after_redis_restarts_empty_no_lease_is_granted_before_the_others_reassert(
    tmp_path: Path, ledger: Ledger
) -> None:
    redis = RedisServer(tmp_path)
    try:
        a = await _node(redis.url, "a", ledger)
        b = await _node(redis.url, "b", ledger)
        on_a, on_b = _caller("acct_a", 1000), _caller("acct_a", 1000)
        await a.cover(on_a, 600)
        redis.kill()
        redis.start()
        # b asks first: it waits for the grace period, a re-asserts its 600 meanwhile
        beats = asyncio.ensure_future(_beat_until_reasserted(a))
        with pytest.raises(NoLease) as refused:
            await b.cover(on_b, 500)
        assert refused.value.free == 400
        await beats
        for node in (a, b):
            await node.shared.close()
    finally:
        redis.kill()


async def _beat_until_reasserted(leases: Leases) -> None:
    for _ in range(100):
        await leases.beat()
        if await leases.shared.r.hget("ep:lease:acct_a", "a"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the lease was not written back")
