"""Accounts, keys, top-ups and generation records on top of a storage Driver (SPEC §5).

Keys are random, shown once, and stored only as a SHA-256 hash: they carry 256 bits of entropy, so
a fast hash is enough (no password-style KDF is needed). Every write that moves money is one
transaction.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

import msgspec

from ..errors import BadRequest, NoEndpoint
from .fees import EXPIRY_DAYS, topup_fee
from .store import Driver, Many

__all__ = ["Account", "GenerationRecord", "KeyRow", "Ledger", "hash_key", "new_key"]

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
    """One row of `generations`; field order is the column order."""

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


_ACCOUNT_COLS = "id, name, credits_micro, usage_micro, purchased_micro, expired_micro, last_active, created"
_KEY_COLS = "id, account_id, hash, prefix, label, limit_micro, usage_micro, disabled, log_prompts, created"
_GEN_COLS = ", ".join(GenerationRecord.__struct_fields__)
_GEN_INSERT = (
    f"INSERT INTO generations ({_GEN_COLS}) VALUES "
    f"({', '.join('?' for _ in GenerationRecord.__struct_fields__)})"
)


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
        await self.db.open()
        await self.db.migrate()

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

    async def byok_keys(self) -> list[tuple[str, str, str]]:
        rows = await self.db.fetch("SELECT account_id, provider, secret FROM byok_keys")
        return [(r[0], r[1], r[2]) for r in rows]

    async def byok_requests_since(self, account_id: str, since: int) -> int:
        row = await self.db.fetchone(
            "SELECT COUNT(*) FROM generations WHERE account_id = ? AND is_byok = 1 "
            "AND created >= ?", (account_id, since))
        return int(row[0]) if row else 0

    # -- generations ----------------------------------------------------------------------------

    async def write(self, batch: list[GenerationRecord]) -> None:
        """Insert a batch and move its money in one transaction: nothing half-written."""
        if not batch:
            return
        per_account: dict[str, tuple[int, int]] = {}
        per_key: dict[str, int] = {}
        for g in batch:
            cost, last = per_account.get(g.account_id, (0, 0))
            per_account[g.account_id] = (cost + g.cost_micro, max(last, g.created))
            per_key[g.key_id] = per_key.get(g.key_id, 0) + g.cost_micro
        rows = [tuple(int(v) if isinstance(v, bool) else v for v in msgspec.structs.astuple(g))
                for g in batch]
        await self.db.transaction([(_GEN_INSERT, Many(rows)), *[
            ("UPDATE accounts SET usage_micro = usage_micro + ?, last_active = ? WHERE id = ?",
             (cost, last, acct)) for acct, (cost, last) in per_account.items()
        ], *[
            ("UPDATE api_keys SET usage_micro = usage_micro + ? WHERE id = ?", (cost, key))
            for key, cost in per_key.items()
        ]])

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

    async def count_generations(self) -> int:
        row = await self.db.fetchone("SELECT COUNT(*) FROM generations")
        return int(row[0]) if row else 0
