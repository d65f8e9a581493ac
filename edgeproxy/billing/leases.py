"""A node's leases of shared credits: spend locally what Redis granted, so that an outage, a
burst or a restart can only spend what was leased (SPEC §5.3, §8).

    cover(caller, amount)   make the node's unspent lease of the account (and of the key's
                            limit) at least `amount`; one Redis round trip per slice, shared by
                            every request of the account waiting at that moment
    spent(accounts, keys)   a ledger batch was written: its charges leave the lease for usage
                            (what the ledger refused to take leaves it too, uncharged)
    run()                   every beat: say the node is alive, write leases back after Redis
                            restarted empty, apply queued deltas, return idle slices

A node's lease of an account = what it reserved for requests in flight + what it charged and has
not yet written to the ledger + an unspent rest. Redis counts every node's lease against the
account (`state.redis`), so the nodes together never hold more than the account has. Changes
after a grant (spent, given back) are queued as numbered batches that Redis applies once each,
in order, from this one task: a batch whose answer was lost is sent again and applied once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING

from ..errors import Unavailable
from ..state.redis import RedisState
from .ledger import Ledger

if TYPE_CHECKING:
    from .service import AccountState, Caller

__all__ = ["Leases", "NoLease"]

log = logging.getLogger("edgeproxy.billing")


class NoLease(Exception):
    """Redis refused the lease: the account (`key` False) or key cannot cover `need`."""

    def __init__(self, free: int, key: bool) -> None:
        super().__init__(free, key)
        self.free = free
        self.key = key


def _unreachable() -> Unavailable:
    return Unavailable("shared state (Redis) is unreachable and this node's lease of the "
                       "account's credits is spent; retry shortly", retry_after=1)


class Leases:
    def __init__(self, shared: RedisState, ledger: Ledger, slice_micro: int,
                 idle_s: float) -> None:
        self.shared = shared
        self.ledger = ledger
        self.slice = slice_micro
        self.idle_s = idle_s
        self.accounts: dict[str, AccountState] = {}  # those holding a lease on this node
        self.keys: dict[str, Caller] = {}  # callers whose key holds a lease on this node
        self._grants: dict[str, asyncio.Future[None]] = {}  # account id -> grant in flight
        self._queue: list[tuple[str, dict[str, tuple[int, int]], dict[str, tuple[int, int]]]] = []
        self._epoch: str | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    # -- the request path ------------------------------------------------------------------------

    async def cover(self, caller: Caller, amount: int) -> None:
        acct = caller.account
        acct.lease_used = time.monotonic()  # (a slice in use is not given back as idle)
        limited = caller.key.limit_micro is not None
        while True:
            need = amount - (acct.lease - acct.pending - acct.reserved)
            key_need = amount - (caller.key_lease - caller.key_pending - caller.key_reserved) \
                if limited else 0
            if need <= 0 and key_need <= 0:
                return
            running = self._grants.get(acct.id)
            if running is not None:
                # One grant at a time per account: the others wait for it, then look again.
                await asyncio.shield(running)
                continue
            fut = self._grants[acct.id] = asyncio.get_running_loop().create_future()
            try:
                await self._grant(caller, max(0, need), max(0, key_need))
            finally:
                del self._grants[acct.id]
                fut.set_result(None)

    async def _grant(self, caller: Caller, need: int, key_need: int) -> None:
        acct, key = caller.account, caller.key
        usage: int | None = None
        key_usage: int | None = None
        for _ in range(50):
            res = await self.shared.grant(acct.id, key.id, need, key_need,
                                          max(self.slice, need, key_need), acct.credits, usage,
                                          key.limit_micro, key_usage)
            if res is None:
                raise _unreachable()
            status, a, b = res
            if status == 1:
                acct.lease += a
                caller.key_lease += b
                self.accounts[acct.id] = acct
                if b:
                    self.keys[key.id] = caller
                return
            if status == 0:
                raise NoLease(b, True) if need <= a else NoLease(a, False)
            if status == -1:  # Redis restarted empty: the nodes are writing their leases back
                await asyncio.sleep(a / 1000)
                continue
            # -2: Redis does not hold this account's (or key's) usage: the ledger has it.
            fresh = await self.ledger.account(acct.id)
            row = await self.ledger.key(key.id)
            usage = fresh.usage_micro if fresh is not None else acct.usage
            key_usage = row.usage_micro if row is not None else key.usage_micro
        raise _unreachable()

    # -- off the request path -----------------------------------------------------------------------

    def spent(self, accounts: dict[str, tuple[int, int]],
              keys: dict[str, tuple[int, int]]) -> None:
        """A ledger batch was written: its (charged, uncharged) amounts per account and key
        leave this node's leases, the charged part for usage."""
        for ident, (cost, dropped) in accounts.items():
            st = self.accounts.get(ident)
            if st is not None:
                st.lease = max(0, st.lease - cost - dropped)
        for ident, (cost, dropped) in keys.items():
            caller = self.keys.get(ident)
            if caller is not None:
                caller.key_lease = max(0, caller.key_lease - cost - dropped)
        # Every key goes to Redis: one with a limit counts the usage even when this node holds
        # no lease of it (a dead node's replayed charges); one without has nothing there.
        self._queue.append((secrets.token_hex(8), accounts, keys))
        self._wake.set()

    def _give_back(self, now: float, everything: bool = False) -> None:
        """Return the unspent rest of slices not used for `idle_s` (all of it at shutdown), so
        that another node can lease what this one does not need."""
        acc: dict[str, tuple[int, int]] = {}
        kk: dict[str, tuple[int, int]] = {}
        for ident, st in list(self.accounts.items()):
            if not everything and (st.reserved or now - st.lease_used < self.idle_s):
                continue
            rest = st.lease - st.pending - st.reserved
            if rest > 0:
                st.lease -= rest
                acc[ident] = (0, rest)
            if not st.lease:
                del self.accounts[ident]
        for ident, caller in list(self.keys.items()):
            if not everything and (caller.key_reserved
                                   or now - caller.account.lease_used < self.idle_s):
                continue
            rest = caller.key_lease - caller.key_pending - caller.key_reserved
            if rest > 0:
                caller.key_lease -= rest
                kk[ident] = (0, rest)
            if not caller.key_lease:
                del self.keys[ident]
        if acc or kk:
            self._queue.append((secrets.token_hex(8), acc, kk))

    async def beat(self) -> None:
        """One beat: alive, leases written back after a restart, queued changes applied."""
        shared = self.shared
        if not shared.up and not await shared.ping():
            return
        epoch = await shared.beat(shared.alive_ms)
        if epoch is None:
            return
        if epoch != self._epoch:
            if self._epoch is not None:
                log.warning("redis started empty: writing this node's leases back")
                # What the queue would still subtract is already out of the amounts sent.
                if not await shared.reassert(
                        {a: st.lease for a, st in self.accounts.items()},
                        {k: c.key_lease for k, c in self.keys.items()}):
                    return
                self._queue.clear()
            self._epoch = epoch
        self._give_back(time.monotonic())
        while self._queue:
            batch, acc, kk = self._queue[0]
            if not await shared.apply(batch, acc, kk):
                return
            self._queue.pop(0)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        # Ended by a flag, not by cancelling: redis-py can swallow a cancellation mid-command.
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.shared.sync_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.beat()
            except Exception:
                log.exception("lease upkeep failed")

    async def close(self) -> None:
        """Give every unspent slice back and apply what is queued (a clean shutdown)."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._give_back(time.monotonic(), everything=True)
        await self.beat()
