"""Who is calling and what they may spend, decided in memory; the ledger written off the path.

Money on the request path never waits on the database (SPEC §5.6):
  authenticate  a dict lookup of the key's hash (a miss asks the ledger once, then is cached)
  reserve       the request's maximum cost against the account's and key's room, or 402
  settle        the reservation becomes the real charge; a GenerationRecord joins the queue
                and the local journal (billing.journal: it survives a crash of the process)
and one writer task flushes the queue in batches (each batch one idempotent transaction that
also moves the money, retried with back-off until the ledger takes it). Room = credits − flushed usage − charged-but-unflushed − reserved, so concurrent
requests can never together spend more than the account holds (SPEC §5.3). Balances, keys and
limits are re-read every `refresh_s`, under the same lock as the flush, so top-ups and key
changes made by other processes (the CLI, other nodes) are seen within a second.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ..config import BillingConfig
from ..errors import Forbidden, PaymentRequired, RateLimited, Unauthorized, Unavailable
from ..state.memory import MemoryCounters
from ..state.redis import RedisState
from .byok import SealError, current, open_sealed, seal
from .fees import MICRO, byok_fee
from .journal import Journal
from .leases import Leases, NoLease
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

# While the ledger does not answer, a key not seen before cannot be checked: a 503 saying when to
# retry, rather than a wait. A lookup that does reach it is bounded by _LEDGER_WAIT_S.
_LEDGER_RETRY_S = 5
_LEDGER_WAIT_S = 5.0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(slots=True)
class AccountState:
    id: str
    credits: int = 0
    usage: int = 0  # flushed to the ledger
    pending: int = 0  # charged, not yet flushed
    reserved: int = 0  # held by requests in flight
    lease: int = 0  # shared state: the slice of the credits this node holds (billing.leases)
    lease_used: float = 0.0  # monotonic time the lease was last drawn on
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
    key_lease: int = 0  # shared state: this node's slice of the key's limit
    byok: dict[str, str] = field(default_factory=dict)

    def key_room(self) -> int | None:
        if self.key.limit_micro is None:
            return None
        return self.key.limit_micro - self.key.usage_micro - self.key_pending - self.key_reserved


@dataclass(slots=True)
class _Allowance:
    """One account's BYOK use in one calendar month (SPEC §5.4): requests, or list-price spend
    in micro-USD when the allowance is `byok_free_spend_usd`. It survives restarts and is shared
    by workers and nodes: the ledger's count seeds it when a process first sees the month, and
    with shared state every node adds its uses to one Redis counter, off the request path."""

    base: int = 0  # the ledger's count at first sight, then the shared count last read
    mine: int = 0  # this process's uses not in `base` yet
    seed: int = 0  # the ledger's count, to start the shared counter if Redis has none
    seeded: bool = False
    busy: bool = False  # a task is seeding or sharing it

    @property
    def used(self) -> int:
        return self.base + self.mine


@dataclass(slots=True)
class Reservation:
    caller: Caller
    amount: int
    done: bool = False


class Billing:
    def __init__(
        self, ledger: Ledger, cfg: BillingConfig, auth: str, shared: RedisState | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.ledger = ledger
        self.journal = journal
        self.shared = shared
        self.cfg = cfg
        self.leases = Leases(shared, ledger, int(cfg.lease_usd * MICRO), cfg.lease_idle_s) \
            if shared is not None else None
        self.auth = auth
        self.counters = MemoryCounters()
        self._callers: dict[str, Caller] = {}  # key hash -> caller
        self._misses: dict[str, float] = {}  # key hash -> when the ledger last said "unknown"
        self._accounts: dict[str, AccountState] = {}
        self._allowance: dict[tuple[str, int, int], _Allowance] = {}  # (account, year, month)
        self._ledger_down = 0.0  # monotonic time the ledger stopped answering; 0: it answers
        self._ledger_asked = 0.0  # when a request last asked it for a key
        self._background: set[asyncio.Task[None]] = set()
        self._queue: list[GenerationRecord] = []
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._closing = False
        self._stopping = asyncio.Event()  # cuts the writer's back-off short at stop()
        self._tasks: list[asyncio.Task[None]] = []
        self._byok: dict[str, dict[str, str]] = {}  # account -> provider -> key
        self._opened: dict[tuple[str, str, str], str] = {}  # a ledger row -> its key ("": none)
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
        if self.journal is not None:
            await self._replay()
            self.journal.start()
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
        if self.leases is not None:
            self.leases.start()

    async def stop(self) -> None:
        """Flush everything queued (SIGTERM drains the writer: SPEC §5.6), then close."""
        self._closing = True
        self._stopping.set()
        self._wake.set()
        writer, refresher = self._tasks or (None, None)
        if refresher is not None:
            refresher.cancel()
        for t in (writer, refresher):
            if t is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        await self._drain()
        if self.leases is not None:
            await self.leases.close()  # the unspent slices go back for the other nodes
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
        if not token.isascii():  # (any bytes may come; a key is ASCII)
            raise Unauthorized("invalid API key")
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
        if self._ledger_down and now - self._ledger_asked < 1.0:
            raise self._ledger_failed(None)  # down: asked at most once a second from here
        self._ledger_asked = now
        try:
            async with asyncio.timeout(_LEDGER_WAIT_S):
                row = await self.ledger.key_by_hash(h)
                acct = await self.ledger.account(row.account_id) if row is not None else None
        except Exception as exc:
            raise self._ledger_failed(exc) from None
        self._ledger_answered()
        if row is None:
            if len(self._misses) > 10_000:
                self._misses.clear()
            self._misses[h] = now
            raise Unauthorized("invalid API key")
        if self._byok_for(row.account_id):  # its first BYOK request is charged from the real count
            await self._count_allowance(row.account_id, time.gmtime())
        # Concurrent first requests of a key all load it: only one Caller may exist per key,
        # since its pending and reserved amounts are the key's own (nothing awaits from here on).
        caller = self._callers.get(h)
        if caller is None:
            state = self._account_state(row.account_id)
            if acct is not None:
                state.credits, state.usage, state.purchased = (acct.credits_micro,
                                                               acct.usage_micro,
                                                               acct.purchased_micro)
            caller = self._callers[h] = Caller(row, state)
            caller.byok = self._byok_for(row.account_id)
        return caller

    def _ledger_failed(self, exc: BaseException | None) -> Unavailable:
        """The ledger did not answer: one log line per outage, and the error a request gets."""
        if not self._ledger_down:
            self._ledger_down = time.monotonic()
            log.error("ledger unreachable (%s): API keys not seen before get 503 until it "
                      "answers", _one_line(exc) if exc is not None else "no answer")
        return Unavailable("the ledger is unreachable, so this API key cannot be checked now; "
                           "retry shortly", retry_after=_LEDGER_RETRY_S)

    def _ledger_answered(self) -> None:
        if self._ledger_down:
            log.warning("ledger reachable again after %.1f s",
                        time.monotonic() - self._ledger_down)
            self._ledger_down = 0.0

    def is_admin(self, authorization: str | None) -> bool:
        if not self._admin_hash or not authorization or not authorization.startswith("Bearer "):
            return False
        token = authorization[7:].strip()
        if not token.isascii():
            return False
        given = hashlib.sha256(token.encode()).hexdigest()
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
        if self.leases is not None and not acct.unlimited:
            # Many nodes: spend from this node's lease of the account; Redis is asked only when
            # it runs short. (The local account of auth = "none" is never refused.)
            try:
                await self.leases.cover(caller, amount)
            except NoLease as refused:
                free = refused.free + (caller.key_lease - caller.key_pending
                                       - caller.key_reserved if refused.key
                                       else acct.lease - acct.pending - acct.reserved)
                raise (_over_limit(free, caller) if refused.key
                       else _no_credits(amount, free)) from None
        acct.reserved += amount
        caller.key_reserved += amount
        return Reservation(caller, amount)

    def release(self, r: Reservation) -> None:
        """Give the reservation back (settle first moves the real charge to pending)."""
        if not r.done:
            r.done = True
            r.caller.account.reserved -= r.amount
            r.caller.key_reserved -= r.amount

    def byok_charge(self, caller: Caller, would_cost: int, now: float | None = None) -> int:
        """The fee of a BYOK generation; counts it against the month's allowance. Never waits:
        the count is seeded and shared by a background task (_count_allowance)."""
        t = time.gmtime(time.time() if now is None else now)
        a = self._month(caller.account.id, t)
        before = a.used
        spend = self.cfg.byok_free_spend_usd
        a.mine += would_cost if spend is not None else 1
        if (not a.seeded or self.shared is not None) and not a.busy:
            self._spawn(self._count_allowance(caller.account.id, t))
        if spend is not None:
            return 0 if before + would_cost <= int(spend * MICRO) else byok_fee(would_cost, 1, 0)
        return byok_fee(would_cost, before, self.cfg.byok_free_requests)

    def _month(self, account_id: str, t: time.struct_time) -> _Allowance:
        a = self._allowance.get((account_id, t.tm_year, t.tm_mon))
        if a is None:
            a = self._allowance[(account_id, t.tm_year, t.tm_mon)] = _Allowance()
            last = (t.tm_year, t.tm_mon - 1) if t.tm_mon > 1 else (t.tm_year - 1, 12)
            self._allowance.pop((account_id, *last), None)
        return a

    async def _count_allowance(self, account_id: str, t: time.struct_time) -> None:
        """Seed the month's count from the ledger the first time (requests only: the ledger does
        not keep the list price of a BYOK generation), then, with shared state, add this
        process's uses to the shared count until none is left unshared."""
        a = self._month(account_id, t)
        if a.busy:
            return
        a.busy = True
        requests = self.cfg.byok_free_spend_usd is None
        try:
            if not a.seeded:
                if requests:
                    since = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))
                    try:
                        async with asyncio.timeout(_LEDGER_WAIT_S):
                            a.seed = await self.ledger.byok_requests_since(account_id, since)
                    except Exception as exc:
                        self._ledger_failed(exc)  # counted from zero: the fee errs low
                a.base += a.seed
                a.seeded = True
            name = f"{account_id}:{t.tm_year:04d}{t.tm_mon:02d}:{'req' if requests else 'spend'}"
            while self.shared is not None:
                sent = a.mine
                total = await self.shared.byok_count(name, sent, a.seed)
                if total is None:
                    break  # Redis is away: counted here, shared at a use once it is back
                a.base, a.mine = total, a.mine - sent
                if not a.mine:
                    break
        finally:
            a.busy = False

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def spend_last_hour(self, account_id: str, now: float | None = None) -> int:
        minute = int(time.time() if now is None else now) // 60
        buckets = self._spend.get(account_id)
        if not buckets:
            return 0
        return sum(v for m, v in buckets.items() if m > minute - 60)

    def settle(self, r: Reservation, record: GenerationRecord) -> None:
        """Turn a reservation into the real charge and queue the ledger record."""
        self.release(r)
        if record.cost_micro:
            minute = int(time.time()) // 60
            buckets = self._spend.setdefault(r.caller.account.id, {})
            buckets[minute] = buckets.get(minute, 0) + record.cost_micro
            if len(buckets) > 61:
                for m in [m for m in buckets if m <= minute - 60]:
                    del buckets[m]
        r.caller.account.pending += record.cost_micro
        r.caller.key_pending += record.cost_micro
        if self.journal is not None:
            self.journal.append(record)  # on disk before the answer's last byte goes out
        self._queue.append(record)
        if len(self._queue) >= self.cfg.flush_batch:
            self._wake.set()

    # -- the writer ----------------------------------------------------------------------------

    async def _writer(self) -> None:
        interval = self.cfg.flush_interval_ms / 1000
        backoff = 0.0
        down = 0.0  # when the ledger stopped taking writes: one log line per outage
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception as exc:
                # The batch stays queued (and journaled) and is retried whole: writes are
                # idempotent, so a commit whose reply was lost is not written twice.
                if not down:
                    down = time.monotonic()
                    log.error("ledger write failed (%s); %d records kept, retrying with "
                              "back-off", _one_line(exc), len(self._queue))
                backoff = min(5.0, max(interval, backoff * 2))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff)
                continue
            if down:
                log.warning("ledger writes resumed after %.1f s", time.monotonic() - down)
                backoff = down = 0.0

    async def _drain(self) -> None:
        """The last flush, retried for a few seconds; what the ledger still refuses then stays in
        the journal, for the next start on this journal directory to write."""
        failure: Exception | None = None
        for wait in (0.0, 0.25, 0.5, 1.0, 2.0):
            await asyncio.sleep(wait)
            try:
                await self.flush()
                failure = None
                break
            except Exception as exc:
                failure = exc
        if failure is not None:
            if self.journal is None:
                raise failure
            log.error("ledger unreachable at shutdown (%s): %d records stay in the journal %s, "
                      "written at the next start", _one_line(failure), len(self._queue),
                      self.journal.dir)
        if self.journal is not None:
            self.journal.close(committed=not self._queue)

    async def _replay(self) -> None:
        """Write what processes that died (SIGKILL, OOM) journaled but did not commit."""
        assert self.journal is not None
        for seg in self.journal.orphans():
            with seg:
                new, _ = await self._write(seg.records)
                seg.done()
            if self.leases is not None:
                # Charges of a dead node that Redis never counted: it counts them now.
                self.leases.spent(*_by_account_and_key(new, set()))
            if seg.records or seg.torn:
                log.warning("ledger journal: replayed %s: %d records, %d of them not yet in the "
                            "ledger%s", seg.path, len(seg.records), new,
                            f", {seg.torn} torn line(s) skipped" if seg.torn else "")

    async def _write(
        self, batch: list[GenerationRecord]
    ) -> tuple[list[GenerationRecord], set[str]]:
        """Write a batch; a record the ledger refuses for its data is set apart, loudly, rather
        than block every record behind it: it is kept (journal `.refused` file, else this log)
        and not charged. Returns the records inserted now and the ids refused."""
        inserted, refused = await self.ledger.write_apart(batch)
        for rec, exc in refused:
            kept = (self.journal.set_apart(rec) if self.journal is not None
                    else msgspec.json.encode(rec).decode())
            log.error("ledger refused generation %s of account %s (%d micro-USD, not charged): "
                      "%s; kept in %s", rec.id, rec.account_id, rec.cost_micro, _one_line(exc),
                      kept)
        return inserted, {rec.id for rec, _ in refused}

    async def flush(self) -> int:
        async with self._lock:
            batch, self._queue = self._queue, []
            if not batch:
                return 0
            # Records journaled from here on go to a new segment; the older ones are deleted
            # once this batch, which holds all of them, is committed.
            mark = self.journal.seal() if self.journal is not None else 0
            try:
                _, refused = await self._write(batch)
            except BaseException:
                self._queue[:0] = batch
                raise
            if self.journal is not None:
                self.journal.trim(mark)
            by_account, by_key = _by_account_and_key(batch, refused)
            for account_id, (cost, dropped) in by_account.items():
                acct = self._accounts.get(account_id)
                if acct is not None:
                    acct.pending -= cost + dropped
                    acct.usage += cost
            callers = list(self._callers.values())
            if self.local is not None:
                callers.append(self.local)
            for caller in callers:
                key_cost = by_key.get(caller.key.id)
                if key_cost is not None:
                    caller.key_pending -= key_cost[0] + key_cost[1]
                    caller.key.usage_micro += key_cost[0]
            if self.leases is not None:
                self.leases.spent(by_account, by_key)
            self.written += len(batch)
            return len(batch)

    async def _refresher(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.cfg.refresh_s)
            try:
                await self.refresh()
            except Exception as exc:
                self._ledger_failed(exc)  # one line per outage, not a traceback a second
            else:
                self._ledger_answered()

    async def refresh(self) -> None:
        async with self._lock:
            # Balances: only accounts in use here are read again (another is read when its
            # first key comes); Redis gets each account's credits with its next lease grant.
            for acct in await self.ledger.accounts_by_id(list(self._accounts)):
                st = self._accounts[acct.id]
                st.credits, st.usage, st.purchased = (acct.credits_micro, acct.usage_micro,
                                                      acct.purchased_micro)
            # Keys: only those in use here are read again (another is read when it comes).
            hashes = list(self._callers)
            if self.local is not None:
                hashes.append(self.local.key.hash)
            rows = await self.ledger.keys_by_hash(hashes)
            await self._load_byok()
            for h in hashes:
                caller = self._callers.get(h)
                if caller is None:
                    if self.local is None or h != self.local.key.hash:
                        continue  # (gone meanwhile)
                    caller = self.local
                row = rows.get(h)
                if row is None:
                    self._callers.pop(h, None)  # deleted key
                    continue
                caller.key = row
                caller.byok = self._byok_for(row.account_id)

    async def _load_byok(self) -> None:
        """Every account's BYOK keys: the rows are read, and only a new or changed one is opened;
        one sealed in an older format is sealed again, in place, in the current one."""
        secret = self.cfg.byok_secret()
        rows = await self.ledger.byok_keys() if secret else []
        opened: dict[tuple[str, str, str], str] = {}
        byok: dict[str, dict[str, str]] = {}
        resealed = 0
        for row in rows:
            account_id, provider, sealed = row
            key = self._opened.get(row)
            if key is None:
                try:
                    key = open_sealed(sealed, secret, account_id, provider)
                except SealError as exc:
                    key = ""  # (remembered: said once, not at every refresh)
                    log.warning("BYOK key of account %s for %s cannot be opened: %s",
                                account_id, provider, exc)
                if key and not current(sealed):
                    again = seal(key, secret, account_id, provider)
                    if await self.ledger.reseal_byok(account_id, provider, sealed, again):
                        resealed += 1
                        opened[(account_id, provider, again)] = key
            opened[row] = key
            if key:
                byok.setdefault(account_id, {})[provider] = key
        if resealed:
            log.info("sealed %d BYOK key(s) again in the current format (AES-GCM, bound to "
                     "their account and provider)", resealed)
        in_use: set[str] | None = None
        for account_id, keys in byok.items():
            if self._byok.get(account_id) == keys:
                byok[account_id] = self._byok[account_id]  # unchanged: callers keep theirs
                continue
            # New keys of an account in use here: the month's count before their first use (an
            # account not in use is counted when its key is first seen: _load_key).
            if in_use is None:
                in_use = {c.account.id for c in self._callers.values()}
            if account_id in in_use:
                self._spawn(self._count_allowance(account_id, time.gmtime()))
        self._opened = opened
        self._byok = byok

    async def byok_stored(self, account_id: str, provider: str, key: str, sealed: str) -> None:
        """POST /byok stored a key: this process uses it from now on (the others see the row at
        their next refresh), with no reload of anything else."""
        keys = self._byok[account_id] = {**self._byok_for(account_id), provider: key}
        self._opened[(account_id, provider, sealed)] = key
        callers = list(self._callers.values())
        if self.local is not None:
            callers.append(self.local)
        for caller in callers:
            if caller.account.id == account_id:
                caller.byok = keys
        await self._count_allowance(account_id, time.gmtime())

    def _byok_for(self, account_id: str) -> dict[str, str]:
        return self._byok.get(account_id, {})


def _by_account_and_key(
    records: list[GenerationRecord], refused: set[str]
) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """(charged, not charged) micro-USD per account and per key of written records; a record
    the ledger refused is not charged."""
    by_account: dict[str, tuple[int, int]] = {}
    by_key: dict[str, tuple[int, int]] = {}
    for rec in records:
        part = (0, rec.cost_micro) if rec.id in refused else (rec.cost_micro, 0)
        for totals, ident in ((by_account, rec.account_id), (by_key, rec.key_id)):
            was = totals.get(ident, (0, 0))
            totals[ident] = (was[0] + part[0], was[1] + part[1])
    return by_account, by_key
