"""Who is calling and what they may spend, decided in memory; the ledger written off the path.

Money on the request path never waits on the database (SPEC §5.6):
  authenticate  a dict lookup of the key's hash (a miss asks the ledger once, then is cached)
  reserve       the request's maximum cost against the account's and key's room, or 402
  settle        the reservation becomes the real charge; a GenerationRecord joins the queue
and one writer task flushes the queue in batches (each batch one transaction that also moves
the money). Room = credits − flushed usage − charged-but-unflushed − reserved, so concurrent
requests can never together spend more than the account holds (SPEC §5.3). Balances, keys and
limits are re-read every `refresh_s`, under the same lock as the flush, so top-ups and key
changes made by other processes (the CLI, other nodes) are seen within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass, field

from ..config import BillingConfig
from ..errors import Forbidden, PaymentRequired, RateLimited, Unauthorized
from ..state.memory import MemoryCounters
from ..state.redis import RedisState
from .byok import SealError, open_sealed
from .fees import MICRO, byok_fee
from .ledger import GenerationRecord, KeyRow, Ledger, hash_key

__all__ = ["AccountState", "Billing", "Caller", "Reservation"]


def _no_credits(amount: int, room: int) -> PaymentRequired:
    return PaymentRequired(
        f"insufficient credits: this request may cost up to ${amount / MICRO:.6f} and the "
        f"account has ${max(0, room) / MICRO:.6f} left",
        {"required_usd": amount / MICRO, "available_usd": max(0, room) / MICRO},
    )


def _over_limit(room: int | None, caller: Caller) -> PaymentRequired:
    return PaymentRequired(
        f"this API key's spend limit would be exceeded (${max(0, room or 0) / MICRO:.6f} left)",
        {"key_limit_usd": (caller.key.limit_micro or 0) / MICRO},
    )

log = logging.getLogger("edgeproxy.billing")


@dataclass(slots=True)
class AccountState:
    id: str
    credits: int = 0
    usage: int = 0  # flushed to the ledger
    pending: int = 0  # charged, not yet flushed
    reserved: int = 0  # held by requests in flight
    purchased: int = 0
    unlimited: bool = False  # the local account of auth = "none"

    @property
    def room(self) -> int:
        return self.credits - self.usage - self.pending - self.reserved


@dataclass(slots=True)
class Caller:
    key: KeyRow
    account: AccountState
    key_pending: int = 0
    key_reserved: int = 0
    byok: dict[str, str] = field(default_factory=dict)

    def key_room(self) -> int | None:
        if self.key.limit_micro is None:
            return None
        return self.key.limit_micro - self.key.usage_micro - self.key_pending - self.key_reserved


@dataclass(slots=True)
class Reservation:
    caller: Caller
    amount: int
    done: bool = False
    shared: bool = False  # also held in Redis


class Billing:
    def __init__(
        self, ledger: Ledger, cfg: BillingConfig, auth: str, shared: RedisState | None = None
    ) -> None:
        self.ledger = ledger
        self.shared = shared
        self.cfg = cfg
        self.auth = auth
        self.counters = MemoryCounters()
        self._callers: dict[str, Caller] = {}  # key hash -> caller
        self._misses: dict[str, float] = {}  # key hash -> when the ledger last said "unknown"
        self._accounts: dict[str, AccountState] = {}
        self._byok_month: dict[tuple[str, int], int] = {}
        self._queue: list[GenerationRecord] = []
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._byok: dict[str, dict[str, str]] = {}
        # account -> {minute: micro-USD charged}: the last hour's spend for the auto router's
        # cost-spike protection (SPEC §7).
        self._spend: dict[str, dict[int, int]] = {}
        self.local: Caller | None = None
        self.written = 0
        self._admin_hash = hashlib.sha256(cfg.admin_key().encode()).hexdigest() \
            if cfg.admin_key() else ""

    # -- lifetime --------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.ledger.open()
        await self.ledger.expire_inactive()
        if self.auth == "none":
            acct = await self.ledger.ensure_account(self.cfg.local_account, "local")
            keys = await self.ledger.keys(acct.id)
            key = keys[0] if keys else (await self.ledger.create_key(acct.id, "local"))[1]
            state = self._account_state(acct.id)
            state.unlimited = True
            self.local = Caller(key, state)
        await self.refresh()
        self._tasks = [asyncio.ensure_future(self._writer()),
                       asyncio.ensure_future(self._refresher())]

    async def stop(self) -> None:
        """Flush everything queued (SIGTERM drains the writer: SPEC §5.6), then close."""
        self._closing = True
        self._wake.set()
        writer, refresher = self._tasks or (None, None)
        if refresher is not None:
            refresher.cancel()
        for t in (writer, refresher):
            if t is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        await self.flush()
        await self.ledger.close()

    # -- who is calling ----------------------------------------------------------------------------

    def _account_state(self, account_id: str) -> AccountState:
        st = self._accounts.get(account_id)
        if st is None:
            st = self._accounts[account_id] = AccountState(account_id)
        return st

    async def authenticate(self, authorization: str | None) -> Caller:
        if self.local is not None:
            return self.local
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("missing API key: send Authorization: Bearer <key>")
        token = authorization[7:].strip()
        h = hash_key(token)
        caller = self._callers.get(h)
        if caller is None:
            caller = await self._load_key(h)
        if caller.key.disabled:
            raise Forbidden("this API key is disabled")
        return caller

    async def _load_key(self, h: str) -> Caller:
        now = time.monotonic()
        if now - self._misses.get(h, -1e9) < self.cfg.refresh_s:
            raise Unauthorized("invalid API key")
        row = await self.ledger.key_by_hash(h)
        if row is None:
            if len(self._misses) > 10_000:
                self._misses.clear()
            self._misses[h] = now
            raise Unauthorized("invalid API key")
        caller = self._callers.get(h)
        if caller is None:
            acct = await self.ledger.account(row.account_id)
            state = self._account_state(row.account_id)
            if acct is not None:
                state.credits, state.usage, state.purchased = (acct.credits_micro,
                                                               acct.usage_micro,
                                                               acct.purchased_micro)
            caller = self._callers[h] = Caller(row, state)
            caller.byok = self._byok_for(row.account_id)
        return caller

    def is_admin(self, authorization: str | None) -> bool:
        if not self._admin_hash or not authorization or not authorization.startswith("Bearer "):
            return False
        given = hashlib.sha256(authorization[7:].strip().encode()).hexdigest()
        return hmac.compare_digest(given, self._admin_hash)

    # -- limits and money on the request path ------------------------------------------------------

    async def _hit(self, key: str, window_s: int, limit: int, now: float) -> tuple[bool, int]:
        if self.shared is not None:
            res = await self.shared.hit(key, window_s, limit, now)
            if res is not None:
                return res
        return self.counters.hit(key, window_s, limit, now)

    async def check_free(self, caller: Caller, now: float | None = None) -> None:
        """SPEC §5.5: 20/min per key; 50/day per account, 1,000/day after $10 bought."""
        now = time.time() if now is None else now
        ok, retry = await self._hit("free:min:" + caller.key.id, 60, self.cfg.free_per_minute,
                                    now)
        if not ok:
            raise RateLimited(f"free models: {self.cfg.free_per_minute} requests per minute per "
                              "key", retry, {"limit": "per_minute"})
        paid = caller.account.purchased >= int(self.cfg.free_paid_threshold_usd * MICRO)
        daily = self.cfg.free_per_day_paid if paid else self.cfg.free_per_day
        ok, retry = await self._hit("free:day:" + caller.account.id, 86400, daily, now)
        if not ok:
            raise RateLimited(f"free models: {daily} requests per day per account", retry,
                              {"limit": "per_day"})

    async def reserve(self, caller: Caller, amount: int) -> Reservation:
        acct = caller.account
        if not acct.unlimited and amount > acct.room:
            raise _no_credits(amount, acct.room)
        room = caller.key_room()
        if room is not None and amount > room:
            raise _over_limit(room, caller)
        shared = False
        if self.shared is not None and not acct.unlimited:
            # Many nodes: Redis holds every node's reservations; its answer is the one that counts.
            # (The local account of auth = "none" is never refused: nothing to hold globally.)
            res = await self.shared.reserve(
                acct.id, caller.key.id, amount, acct.credits, acct.usage, caller.key.limit_micro,
                caller.key.usage_micro, acct.unlimited)
            if res is not None:
                granted, room, kroom = res
                if not granted:
                    raise (_no_credits(amount, room) if amount > room and not acct.unlimited
                           else _over_limit(kroom, caller))
                shared = True
        acct.reserved += amount
        caller.key_reserved += amount
        return Reservation(caller, amount, shared=shared)

    def release(self, r: Reservation, charged: int = 0) -> None:
        """Give the reservation back; `charged` of it stays held as pending (settle)."""
        if not r.done:
            r.done = True
            r.caller.account.reserved -= r.amount
            r.caller.key_reserved -= r.amount
            if r.shared and self.shared is not None:
                self.shared.background(self.shared.add_held(
                    r.caller.account.id, r.caller.key.id, charged - r.amount))

    def byok_charge(self, caller: Caller, would_cost: int, now: float | None = None) -> int:
        """The fee of a BYOK generation; counts it against the month's allowance."""
        t = time.gmtime(time.time() if now is None else now)
        month = (caller.account.id, t.tm_year * 12 + t.tm_mon)
        before = self._byok_month.get(month, 0)
        self._byok_month[month] = before + 1
        if self.cfg.byok_free_spend_usd is not None:
            spent_key = (caller.account.id, -(t.tm_year * 12 + t.tm_mon))
            spent = self._byok_month.get(spent_key, 0)
            self._byok_month[spent_key] = spent + would_cost
            return 0 if spent + would_cost <= int(self.cfg.byok_free_spend_usd * MICRO) \
                else byok_fee(would_cost, 1, 0)
        return byok_fee(would_cost, before, self.cfg.byok_free_requests)

    def spend_last_hour(self, account_id: str, now: float | None = None) -> int:
        minute = int(time.time() if now is None else now) // 60
        buckets = self._spend.get(account_id)
        if not buckets:
            return 0
        return sum(v for m, v in buckets.items() if m > minute - 60)

    def settle(self, r: Reservation, record: GenerationRecord) -> None:
        """Turn a reservation into the real charge and queue the ledger record."""
        self.release(r, record.cost_micro)
        if record.cost_micro:
            minute = int(time.time()) // 60
            buckets = self._spend.setdefault(r.caller.account.id, {})
            buckets[minute] = buckets.get(minute, 0) + record.cost_micro
            if len(buckets) > 61:
                for m in [m for m in buckets if m <= minute - 60]:
                    del buckets[m]
        r.caller.account.pending += record.cost_micro
        r.caller.key_pending += record.cost_micro
        self._queue.append(record)
        if len(self._queue) >= self.cfg.flush_batch:
            self._wake.set()

    # -- the writer ----------------------------------------------------------------------------

    async def _writer(self) -> None:
        interval = self.cfg.flush_interval_ms / 1000
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                # The batch stays queued and is retried: a record is never dropped.
                log.exception("ledger write failed; retrying")
                await asyncio.sleep(min(1.0, interval * 10))

    async def flush(self) -> int:
        async with self._lock:
            batch, self._queue = self._queue, []
            if not batch:
                return 0
            try:
                await self.ledger.write(batch)
            except BaseException:
                self._queue[:0] = batch
                raise
            by_account: dict[str, int] = {}
            by_key: dict[str, int] = {}
            for rec in batch:
                by_account[rec.account_id] = by_account.get(rec.account_id, 0) + rec.cost_micro
                by_key[rec.key_id] = by_key.get(rec.key_id, 0) + rec.cost_micro
            for account_id, cost in by_account.items():
                acct = self._accounts.get(account_id)
                if acct is not None:
                    acct.pending -= cost
                    acct.usage += cost
            callers = list(self._callers.values())
            if self.local is not None:
                callers.append(self.local)
            for caller in callers:
                key_cost = by_key.get(caller.key.id)
                if key_cost is not None:
                    caller.key_pending -= key_cost
                    caller.key.usage_micro += key_cost
            if self.shared is not None:
                await self.shared.flushed(by_account, by_key)
            self.written += len(batch)
            return len(batch)

    async def _refresher(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.cfg.refresh_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("refreshing balances from the ledger failed")

    async def refresh(self) -> None:
        async with self._lock:
            for acct in await self.ledger.accounts():
                st = self._account_state(acct.id)
                st.credits, st.usage, st.purchased = (acct.credits_micro, acct.usage_micro,
                                                      acct.purchased_micro)
            if self.shared is not None:
                await self.shared.set_credits({a: st.credits for a, st in self._accounts.items()})
            rows = {k.hash: k for k in await self.ledger.keys()}
            byok = await self._load_byok()
            for h, caller in list(self._callers.items()):
                row = rows.get(h)
                if row is None:
                    del self._callers[h]  # deleted key
                    continue
                caller.key = row
                caller.byok = byok.get(row.account_id, {})
            if self.local is not None:
                row = rows.get(self.local.key.hash)
                if row is not None:
                    self.local.key = row
            self._byok = byok

    async def _load_byok(self) -> dict[str, dict[str, str]]:
        secret = self.cfg.byok_secret()
        out: dict[str, dict[str, str]] = {}
        if not secret:
            return out
        for account_id, provider, sealed in await self.ledger.byok_keys():
            try:
                out.setdefault(account_id, {})[provider] = open_sealed(sealed, secret)
            except SealError:
                log.warning("BYOK key of account %s for %s cannot be opened", account_id,
                            provider)
        return out

    def _byok_for(self, account_id: str) -> dict[str, str]:
        return self._byok.get(account_id, {})
