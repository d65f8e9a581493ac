"""Accounts, keys, top-ups and generation records on top of a storage Driver (SPEC §5).

Keys are random, shown once, and stored only as a SHA-256 hash: they carry 256 bits of entropy, so
a fast hash is enough (no password-style KDF is needed). Every write that moves money is one
transaction.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import time
from typing import Any

import msgspec

from ..errors import BadRequest, NoEndpoint
from .fees import EXPIRY_DAYS, topup_fee
from .store import Driver, Row, Statement

__all__ = ["Account", "GenerationRecord", "KeyRow", "Ledger", "hash_key", "new_key", "storable"]

KEY_PREFIX = "sk-ep-v1-"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_hex(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Account(msgspec.Struct):
    id: str
    name: str
    credits_micro: int
    usage_micro: int
    purchased_micro: int
    expired_micro: int
    last_active: int
    created: int

    @property
    def balance_micro(self) -> int:
        return self.credits_micro - self.usage_micro


class KeyRow(msgspec.Struct):
    id: str
    account_id: str
    hash: str
    prefix: str
    label: str
    limit_micro: int | None
    usage_micro: int
    disabled: bool
    log_prompts: bool
    created: int


class GenerationRecord(msgspec.Struct, array_like=True):
    """One row of `generations`; field order is the column order. Fields added after the first
    schema come last, with defaults, so a journal line written before them still decodes."""

    id: str
    account_id: str
    key_id: str
    model: str
    provider: str
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int
    cost_micro: int
    is_byok: bool
    usage_estimated: bool
    latency_ms: int
    ttft_ms: int
    generation_ms: int
    streamed: bool
    cancelled: bool
    finish_reason: str | None
    native_finish_reason: str | None
    app: str | None
    route: str | None
    created: int
    cache_write_tokens: int = 0  # prompt tokens written to the provider's cache
    # What the cache saved against the uncached prompt price, micro-USD (negative: writes cost
    # more than reads saved); OpenRouter's `cache_discount`.
    cache_discount_micro: int = 0
    upstream_id: str | None = None  # the provider's own id of the answer, when it sent one
    upstream_cost_micro: int = 0  # BYOK: what the provider charged the account's own key


_ACCOUNT_COLS = "id, name, credits_micro, usage_micro, purchased_micro, expired_micro, last_active, created"
_KEY_COLS = "id, account_id, hash, prefix, label, limit_micro, usage_micro, disabled, log_prompts, created"
_GEN_COLS = ", ".join(GenerationRecord.__struct_fields__)
_GEN_ROW = f"({', '.join('?' for _ in GenerationRecord.__struct_fields__)})"
_TEXT = [i for i, f in enumerate(GenerationRecord.__struct_fields__)
         if f in ("model", "provider", "finish_reason", "native_finish_reason", "app", "route",
                  "upstream_id")]
# Rows per INSERT: a batch goes out in chunks of powers of two up to this, so seven statement
# texts serve every batch size. At 64 rows the PostgreSQL text (~10 KB) stays under asyncpg's
# prepared-statement cache limit (15 KB): 256 rows wrote half as many records/s.
_CHUNK = 64


@functools.cache
def _insert_new(rows: int) -> str:
    """Insert `rows` generations, skipping ids already present; returns the ids inserted. Both
    databases have ON CONFLICT … DO NOTHING and RETURNING (SQLite since 3.35)."""
    return (f"INSERT INTO generations ({_GEN_COLS}) VALUES {', '.join([_GEN_ROW] * rows)} "
            "ON CONFLICT (id) DO NOTHING RETURNING id")


def _chunks(n: int) -> list[int]:
    sizes = [_CHUNK] * (n // _CHUNK)
    rest = n % _CHUNK
    return sizes + [1 << b for b in range(rest.bit_length() - 1, -1, -1) if rest >> b & 1]


def _storable(text: str) -> str:
    """Text every database takes: PostgreSQL refuses NUL, and no encoder takes a lone
    surrogate (aiohttp decodes a non-UTF-8 header byte to one)."""
    if text.isascii():
        return text.replace("\x00", "")
    return text.replace("\x00", "").encode("utf-8", "replace").decode()


def storable(g: GenerationRecord) -> GenerationRecord:
    """The record with its free text made storable (see `_storable`)."""
    vals = list(msgspec.structs.astuple(g))
    for i in _TEXT:
        if isinstance(vals[i], str):
            vals[i] = _storable(vals[i])
    return GenerationRecord(*vals)


def _row(g: GenerationRecord) -> list[Any]:
    vals: list[Any] = [int(v) if isinstance(v, bool) else v for v in msgspec.structs.astuple(g)]
    for i in _TEXT:
        if isinstance(vals[i], str):
            vals[i] = _storable(vals[i])
    return vals


def _account(row: Any) -> Account:
    return Account(*row)


def _key(row: Any) -> KeyRow:
    r = list(row)
    r[7] = bool(r[7])
    r[8] = bool(r[8])
    return KeyRow(*r)


class Ledger:
    def __init__(self, driver: Driver) -> None:
        self.db = driver

    async def open(self) -> None:
        """Connect and bring the schema forward; a database this process cannot use raises
        StartupError (the cause and the fix), not a driver's traceback."""
        try:
            await self.db.open()
            await self.db.migrate()
        except Exception as exc:
            refused = self.db.refused(exc)
            if refused is None:
                raise
            raise refused from exc

    async def close(self) -> None:
        await self.db.close()

    # -- accounts -------------------------------------------------------------------------------

    async def create_account(self, name: str, account_id: str | None = None) -> Account:
        now = int(time.time())
        acct = Account(account_id or "acct_" + secrets.token_hex(8), name, 0, 0, 0, 0, now, now)
        await self.db.transaction([(
            f"INSERT INTO accounts ({_ACCOUNT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (acct.id, acct.name, 0, 0, 0, 0, now, now),
        )])
        return acct

    async def account(self, account_id: str) -> Account | None:
        row = await self.db.fetchone(f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE id = ?",
                                     (account_id,))
        return _account(row) if row else None

    async def accounts(self) -> list[Account]:
        return [_account(r) for r in await self.db.fetch(f"SELECT {_ACCOUNT_COLS} FROM accounts")]

    async def ensure_account(self, account_id: str, name: str) -> Account:
        acct = await self.account(account_id)
        return acct if acct is not None else await self.create_account(name, account_id)

    async def add_credits(self, account_id: str, credits: int, method: str) -> tuple[Account, int]:
        """Buy `credits` micro-USD of credits; returns the account and the fee charged on top."""
        if credits <= 0:
            raise BadRequest("the amount must be positive")
        try:
            fee = topup_fee(credits, method)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if await self.account(account_id) is None:
            raise NoEndpoint(f"unknown account {account_id!r}")
        now = int(time.time())
        await self.db.transaction([
            ("INSERT INTO topups (id, account_id, credits_micro, fee_micro, method, created) "
             "VALUES (?, ?, ?, ?, ?, ?)",
             ("top_" + secrets.token_hex(8), account_id, credits, fee, method, now)),
            ("UPDATE accounts SET credits_micro = credits_micro + ?, "
             "purchased_micro = purchased_micro + ?, last_active = ? WHERE id = ?",
             (credits, credits, now, account_id)),
        ])
        acct = await self.account(account_id)
        assert acct is not None
        return acct, fee

    async def expire_inactive(self, now: int | None = None) -> int:
        """Credits of accounts inactive for 365 days expire (SPEC §5.2); returns accounts hit."""
        now = int(time.time()) if now is None else now
        cutoff = now - EXPIRY_DAYS * 86400
        counts = await self.db.transaction([(
            "UPDATE accounts SET expired_micro = expired_micro + (credits_micro - usage_micro), "
            "credits_micro = usage_micro WHERE last_active < ? AND credits_micro > usage_micro",
            (cutoff,),
        )])
        return counts[0]

    # -- keys ---------------------------------------------------------------------------------

    async def create_key(
        self, account_id: str, label: str, limit_micro: int | None = None
    ) -> tuple[str, KeyRow]:
        """A new key for an account: the key itself (shown once) and its stored row."""
        if limit_micro is not None and limit_micro < 0:
            raise BadRequest("a key's limit must be >= 0")
        if await self.account(account_id) is None:
            raise NoEndpoint(f"unknown account {account_id!r}")
        key = new_key()
        row = KeyRow("key_" + secrets.token_hex(8), account_id, hash_key(key),
                     key[: len(KEY_PREFIX) + 6], label, limit_micro, 0, False, False,
                     int(time.time()))
        await self.db.transaction([(
            f"INSERT INTO api_keys ({_KEY_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.account_id, row.hash, row.prefix, row.label, row.limit_micro, 0, 0, 0,
             row.created),
        )])
        return key, row

    async def keys(self, account_id: str | None = None) -> list[KeyRow]:
        if account_id is None:
            rows = await self.db.fetch(f"SELECT {_KEY_COLS} FROM api_keys ORDER BY created")
        else:
            rows = await self.db.fetch(
                f"SELECT {_KEY_COLS} FROM api_keys WHERE account_id = ? ORDER BY created",
                (account_id,))
        return [_key(r) for r in rows]

    async def key_by_hash(self, key_hash: str) -> KeyRow | None:
        row = await self.db.fetchone(f"SELECT {_KEY_COLS} FROM api_keys WHERE hash = ?",
                                     (key_hash,))
        return _key(row) if row else None

    async def keys_by_hash(self, hashes: list[str]) -> dict[str, KeyRow]:
        """The keys of these hashes that still exist, by hash."""
        rows = await self._rows_where_in(f"SELECT {_KEY_COLS} FROM api_keys", "hash", hashes)
        return {k.hash: k for k in map(_key, rows)}

    async def accounts_by_id(self, ids: list[str]) -> list[Account]:
        """The accounts of these ids that exist."""
        rows = await self._rows_where_in(f"SELECT {_ACCOUNT_COLS} FROM accounts", "id", ids)
        return [_account(r) for r in rows]

    async def _rows_where_in(self, select: str, column: str, values: list[str]) -> list[Any]:
        """`select` WHERE column IN values, 512 at a time, a short last part padded to a power of
        two (a repeated value changes nothing), so that ten statement texts serve any count."""
        out: list[Any] = []
        for i in range(0, len(values), 512):
            part = values[i:i + 512]
            part += part[-1:] * ((1 << (len(part) - 1).bit_length()) - len(part))
            out += await self.db.fetch(
                f"{select} WHERE {column} IN ({', '.join('?' * len(part))})", part)
        return out

    async def key(self, key_id: str) -> KeyRow | None:
        row = await self.db.fetchone(f"SELECT {_KEY_COLS} FROM api_keys WHERE id = ?", (key_id,))
        return _key(row) if row else None

    async def update_key(self, key_id: str, **fields: Any) -> KeyRow:
        allowed = {"label", "limit_micro", "disabled"}
        sets = [(k, v) for k, v in fields.items() if k in allowed]
        if sets:
            sql = ", ".join(f"{k} = ?" for k, _ in sets)
            args = [int(v) if isinstance(v, bool) else v for _, v in sets]
            counts = await self.db.transaction([(f"UPDATE api_keys SET {sql} WHERE id = ?",
                                                 (*args, key_id))])
            if not counts[0]:
                raise NoEndpoint(f"unknown key {key_id!r}")
        row = await self.key(key_id)
        if row is None:
            raise NoEndpoint(f"unknown key {key_id!r}")
        return row

    async def delete_key(self, key_id: str) -> None:
        counts = await self.db.transaction([("DELETE FROM api_keys WHERE id = ?", (key_id,))])
        if not counts[0]:
            raise NoEndpoint(f"unknown key {key_id!r}")

    # -- BYOK -----------------------------------------------------------------------------------

    async def put_byok(self, account_id: str, provider: str, sealed: str) -> None:
        now = int(time.time())
        await self.db.transaction([
            ("DELETE FROM byok_keys WHERE account_id = ? AND provider = ?", (account_id, provider)),
            ("INSERT INTO byok_keys (account_id, provider, secret, created) VALUES (?, ?, ?, ?)",
             (account_id, provider, sealed, now)),
        ])

    async def reseal_byok(self, account_id: str, provider: str, old: str, new: str) -> bool:
        """Replace a sealed key by the same key sealed anew, unless the row changed meanwhile."""
        counts = await self.db.transaction([(
            "UPDATE byok_keys SET secret = ? WHERE account_id = ? AND provider = ? AND secret = ?",
            (new, account_id, provider, old))])
        return bool(counts[0])

    async def byok_keys(self) -> list[tuple[str, str, str]]:
        rows = await self.db.fetch("SELECT account_id, provider, secret FROM byok_keys")
        return [(r[0], r[1], r[2]) for r in rows]

    async def byok_requests_since(self, account_id: str, since: int) -> int:
        row = await self.db.fetchone(
            "SELECT COUNT(*) FROM generations WHERE account_id = ? AND is_byok = 1 "
            "AND created >= ?", (account_id, since))
        return int(row[0]) if row else 0

    # -- generations ----------------------------------------------------------------------------

    async def write(self, batch: list[GenerationRecord]) -> list[GenerationRecord]:
        """Insert a batch and move its money in one transaction: nothing half-written. Writing
        the same records again (a retry after a commit whose reply was lost, a journal replay)
        inserts none of them twice and charges none twice: only the rows this transaction
        inserted move money. Returns the records it inserted."""
        unique = list({g.id: g for g in batch}.values())
        if not unique:
            return []
        rows = [_row(g) for g in unique]
        first: list[Statement] = []
        at = 0
        for n in _chunks(len(rows)):
            first.append((_insert_new(n), [v for r in rows[at:at + n] for v in r]))
            at += n
        inserted: list[GenerationRecord] = []

        def money(returned: list[list[Row]]) -> list[Statement]:
            new = {r[0] for chunk in returned for r in chunk}
            inserted[:] = [g for g in unique if g.id in new]
            per_account: dict[str, tuple[int, int]] = {}
            per_key: dict[str, int] = {}
            for g in unique:
                if g.id in new:
                    cost, last = per_account.get(g.account_id, (0, 0))
                    per_account[g.account_id] = (cost + g.cost_micro, max(last, g.created))
                    per_key[g.key_id] = per_key.get(g.key_id, 0) + g.cost_micro
            return [
                *[("UPDATE accounts SET usage_micro = usage_micro + ?, last_active = ? "
                   "WHERE id = ?", (cost, last, acct))
                  for acct, (cost, last) in per_account.items()],
                *[("UPDATE api_keys SET usage_micro = usage_micro + ? WHERE id = ?", (cost, key))
                  for key, cost in per_key.items()],
            ]

        await self.db.atomic(first, money)
        return inserted

    async def write_apart(
        self, batch: list[GenerationRecord]
    ) -> tuple[list[GenerationRecord], list[tuple[GenerationRecord, BaseException]]]:
        """Write what the database accepts and set apart the records it refuses for their data
        (found by halving the batch), so one bad record never holds back the others. Returns the
        records inserted and the refused records with their errors. Any other failure (the
        database unreachable or busy) raises: the caller retries the whole batch, which `write`
        makes safe however much of it was already committed."""
        try:
            return await self.write(batch), []
        except self.db.data_errors as exc:
            if len(batch) == 1:
                return [], [(batch[0], exc)]
        mid = len(batch) // 2
        n1, bad1 = await self.write_apart(batch[:mid])
        n2, bad2 = await self.write_apart(batch[mid:])
        return n1 + n2, bad1 + bad2

    async def generation(self, gen_id: str) -> GenerationRecord | None:
        row = await self.db.fetchone(f"SELECT {_GEN_COLS} FROM generations WHERE id = ?",
                                     (gen_id,))
        if row is None:
            return None
        vals = list(row)
        for i, f in enumerate(GenerationRecord.__struct_fields__):
            if f in ("is_byok", "usage_estimated", "streamed", "cancelled"):
                vals[i] = bool(vals[i])
        return GenerationRecord(*vals)

    async def key_usage(self, account_id: str, key_id: str,
                        since: list[int]) -> tuple[list[tuple[int, int]], int]:
        """A key's spend in micro-USD: (charged, BYOK upstream cost) since each of `since` (unix
        seconds, read through the account's time index), and its all-time BYOK upstream cost
        (through the index of BYOK rows)."""
        sums = ", ".join(f"SUM(CASE WHEN created >= ? THEN {col} ELSE 0 END)"
                         for _ in since for col in ("cost_micro", "upstream_cost_micro"))
        row = await self.db.fetchone(
            f"SELECT {sums} FROM generations WHERE account_id = ? AND created >= ? "
            "AND key_id = ?",
            [t for t in since for _ in range(2)] + [account_id, min(since), key_id])
        byok = await self.db.fetchone(
            "SELECT SUM(upstream_cost_micro) FROM generations WHERE key_id = ? AND is_byok = 1",
            (key_id,))
        vals = [int(v or 0) for v in row] if row else [0] * (2 * len(since))
        return ([(vals[2 * i], vals[2 * i + 1]) for i in range(len(since))],
                int(byok[0] or 0) if byok else 0)

    async def count_generations(self) -> int:
        row = await self.db.fetchone("SELECT COUNT(*) FROM generations")
        return int(row[0]) if row else 0
