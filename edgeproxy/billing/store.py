"""The ledger's storage: one schema, two drivers (SQLite for one node, PostgreSQL for many).

SQL is written once with `?` placeholders; the PostgreSQL driver numbers them. Every money column
is an integer count of micro-USD. Migrations are a numbered list applied in order and recorded in
`schema_version`, so a database is brought forward by `migrate()` at start, never edited by hand.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import StartupError

__all__ = ["MIGRATIONS", "Driver", "Many", "PostgresDriver", "SQLiteDriver", "open_driver"]

Row = tuple[Any, ...]


class Many(list[Sequence[Any]]):
    """The argument rows of one statement executed for each row (executemany)."""


Statement = tuple[str, Sequence[Any]]
# Given the rows each of a transaction's first statements returned, the statements that follow.
Then = Callable[[list[list[Row]]], list[Statement]]

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE accounts (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            credits_micro BIGINT NOT NULL DEFAULT 0,
            usage_micro BIGINT NOT NULL DEFAULT 0,
            purchased_micro BIGINT NOT NULL DEFAULT 0,
            expired_micro BIGINT NOT NULL DEFAULT 0,
            last_active BIGINT NOT NULL,
            created BIGINT NOT NULL)""",
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts(id),
            hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            label TEXT NOT NULL,
            limit_micro BIGINT,
            usage_micro BIGINT NOT NULL DEFAULT 0,
            disabled INTEGER NOT NULL DEFAULT 0,
            log_prompts INTEGER NOT NULL DEFAULT 0,
            created BIGINT NOT NULL)""",
        """CREATE TABLE topups (
            id TEXT PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts(id),
            credits_micro BIGINT NOT NULL,
            fee_micro BIGINT NOT NULL,
            method TEXT NOT NULL,
            created BIGINT NOT NULL)""",
        """CREATE TABLE generations (
            id TEXT PRIMARY KEY,
            account_id TEXT NOT NULL,
            key_id TEXT NOT NULL,
            model TEXT NOT NULL,
            provider TEXT NOT NULL,
            prompt_tokens BIGINT NOT NULL,
            completion_tokens BIGINT NOT NULL,
            reasoning_tokens BIGINT NOT NULL,
            cached_tokens BIGINT NOT NULL,
            cost_micro BIGINT NOT NULL,
            is_byok INTEGER NOT NULL,
            usage_estimated INTEGER NOT NULL,
            latency_ms BIGINT NOT NULL,
            ttft_ms BIGINT NOT NULL,
            generation_ms BIGINT NOT NULL,
            streamed INTEGER NOT NULL,
            cancelled INTEGER NOT NULL,
            finish_reason TEXT,
            native_finish_reason TEXT,
            app TEXT,
            route TEXT,
            created BIGINT NOT NULL)""",
        "CREATE INDEX generations_account_created ON generations (account_id, created)",
        """CREATE TABLE byok_keys (
            account_id TEXT NOT NULL REFERENCES accounts(id),
            provider TEXT NOT NULL,
            secret TEXT NOT NULL,
            created BIGINT NOT NULL,
            PRIMARY KEY (account_id, provider))""",
    ],
    [
        # Prompt caching priced right (SPEC §5.3): the writes next to the reads, and the discount.
        "ALTER TABLE generations ADD COLUMN cache_write_tokens BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE generations ADD COLUMN cache_discount_micro BIGINT NOT NULL DEFAULT 0",
    ],
    [
        # OpenRouter's /generation `upstream_id` and /key `byok_usage` (SPEC §1.1): the provider's
        # id of the answer, and what a BYOK generation cost the account's own key; its index
        # holds only BYOK rows, for a key's all-time BYOK usage.
        "ALTER TABLE generations ADD COLUMN upstream_id TEXT",
        "ALTER TABLE generations ADD COLUMN upstream_cost_micro BIGINT NOT NULL DEFAULT 0",
        "CREATE INDEX generations_key_byok ON generations (key_id) WHERE is_byok = 1",
    ],
]


class Driver:
    """The few operations the ledger needs, the same on every database."""

    name = ""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        raise NotImplementedError

    # Errors that mean a statement's data can never be written (a bad value, a constraint), as
    # opposed to the database being unreachable or busy, which a retry may cure.
    data_errors: tuple[type[BaseException], ...] = ()

    async def transaction(self, statements: list[Statement]) -> list[int]:
        """Run statements atomically; returns each one's affected row count. Arguments wrapped
        in Many run the statement once per row."""
        return await self.atomic([], lambda _: statements)

    async def atomic(self, first: list[Statement], then: Then) -> list[int]:
        """One transaction: run `first`, keeping the rows each returns (RETURNING), then the
        statements `then` computes from those rows; returns the latter's affected row counts.
        The decision between the two is plain Python, so it is the same on every database."""
        raise NotImplementedError

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetch(sql, args)
        return rows[0] if rows else None

    async def migrate(self) -> int:
        """Apply the migrations not yet applied, under a lock (several workers or nodes may
        start at once); returns the schema version."""
        raise NotImplementedError

    def refused(self, exc: Exception) -> StartupError | None:
        """What `exc`, raised by open() or migrate(), means for the operator (cause and fix);
        None when it says nothing about the database (a bug: its traceback is kept)."""
        return None


class SQLiteDriver(Driver):
    """stdlib sqlite3 on one dedicated thread (sqlite3 blocks); WAL so readers never wait."""

    name = "sqlite"
    data_errors = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError,
                   OverflowError, UnicodeEncodeError)

    def __init__(self, path: str) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeproxy-sqlite")
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._conn = conn
        return self._conn

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self) -> None:
        await self._run(self._connect)

    async def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._run(shut)
        self._pool.shutdown(wait=True)

    async def migrate(self) -> int:
        def go() -> int:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")  # the database's write lock: one migrator at a time
            try:
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT)")
                have = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
                for version, stmts in enumerate(MIGRATIONS[have:], start=have + 1):
                    for stmt in stmts:
                        conn.execute(stmt)
                    conn.execute("INSERT INTO schema_version VALUES (?)", (version,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return len(MIGRATIONS)

        return await self._run(go)

    def refused(self, exc: Exception) -> StartupError | None:
        where = os.path.abspath(self.path)
        if isinstance(exc, sqlite3.OperationalError):  # no such directory, not writable, locked
            return StartupError(
                f"cannot use the SQLite ledger {where} ({exc})",
                f"make {os.path.dirname(where)} exist and writable by this user (SQLite writes "
                "its -wal file beside the database), or set [storage] ledger to another path",
            )
        if isinstance(exc, sqlite3.DatabaseError):
            return StartupError(f"{where} is not a usable SQLite ledger ({exc})",
                                "restore it from a backup, or set [storage] ledger to a new path")
        return None

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        def go() -> list[Row]:
            return self._connect().execute(sql, tuple(args)).fetchall()

        return await self._run(go)

    async def atomic(self, first: list[Statement], then: Then) -> list[int]:
        def go() -> list[int]:
            conn = self._connect()
            counts = []
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = [conn.execute(sql, tuple(args)).fetchall() for sql, args in first]
                for sql, args in then(rows):
                    if isinstance(args, Many):
                        cur = conn.executemany(sql, args)
                    else:
                        cur = conn.execute(sql, tuple(args))
                    counts.append(cur.rowcount)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return counts

        return await self._run(go)


_QMARK = re.compile(r"\?")


def _numbered(sql: str) -> str:
    n = 0

    def repl(_: re.Match[str]) -> str:
        nonlocal n
        n += 1
        return f"${n}"

    return _QMARK.sub(repl, sql)


class PostgresDriver(Driver):
    """asyncpg with a small pool; the same SQL as SQLite, placeholders numbered. No floor of
    idle connections (min_size 0): asyncpg restores a floor in the background and logs a
    traceback at each try while the database is down; connections open as queries need them."""

    name = "postgresql"

    def __init__(self, dsn: str, min_size: int = 0, max_size: int = 8) -> None:
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self._pool: Any = None
        self._sql: dict[str, str] = {}

    def _q(self, sql: str) -> str:
        q = self._sql.get(sql)
        if q is None:
            q = self._sql[sql] = _numbered(sql)
        return q

    async def open(self) -> None:
        import asyncpg  # the `postgres` extra: a missing one is refused()

        # (asyncpg reports an argument it cannot encode as a DataError too)
        self.data_errors = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
        self._pool = await asyncpg.create_pool(self.dsn, min_size=self.min_size,
                                               max_size=self.max_size)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def migrate(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            # DDL is transactional in PostgreSQL; the advisory lock orders concurrent migrators.
            await conn.execute("SELECT pg_advisory_xact_lock(7263540001)")
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT)")
            have = await conn.fetchval("SELECT MAX(version) FROM schema_version") or 0
            for version, stmts in enumerate(MIGRATIONS[have:], start=have + 1):
                for stmt in stmts:
                    await conn.execute(stmt)
                await conn.execute("INSERT INTO schema_version VALUES ($1)", version)
        return len(MIGRATIONS)

    def refused(self, exc: Exception) -> StartupError | None:
        if isinstance(exc, ModuleNotFoundError) and exc.name == "asyncpg":
            return StartupError("the PostgreSQL ledger needs asyncpg, which is not installed",
                                "pip install 'edgeproxy[postgres]'")
        import asyncpg

        parts = urlsplit(self.dsn)  # named without its user and password: errors are logged
        where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
        if isinstance(exc, (asyncpg.InvalidPasswordError,
                            asyncpg.InvalidAuthorizationSpecificationError)):
            return StartupError(f"the PostgreSQL ledger at {where} refused the login ({exc})",
                                "check the user and password in [storage] ledger and pg_hba.conf")
        if isinstance(exc, asyncpg.InvalidCatalogNameError):
            return StartupError(f"the PostgreSQL ledger at {where} has no such database ({exc})",
                                f"create it (CREATE DATABASE {parts.path.lstrip('/')}), or set "
                                "[storage] ledger to an existing one")
        if isinstance(exc, asyncpg.PostgresError):
            return StartupError(f"the PostgreSQL ledger at {where} refused the schema ({exc})",
                                "give this user the right to create tables in that database")
        if isinstance(exc, (OSError, TimeoutError, asyncpg.InterfaceError)):
            return StartupError(f"cannot connect to the PostgreSQL ledger at {where} ({exc})",
                                "start PostgreSQL there, or set [storage] ledger to a server "
                                "that runs")
        return None

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        rows = await self._pool.fetch(self._q(sql), *args)
        return [tuple(r) for r in rows]

    async def atomic(self, first: list[Statement], then: Then) -> list[int]:
        counts = []
        async with self._pool.acquire() as conn, conn.transaction():
            rows = [[tuple(r) for r in await conn.fetch(self._q(sql), *args)]
                    for sql, args in first]
            for sql, args in then(rows):
                if isinstance(args, Many):
                    await conn.executemany(self._q(sql), args)
                    counts.append(len(args))
                else:
                    status = await conn.execute(self._q(sql), *args)
                    tail = status.rsplit(" ", 1)[-1]
                    counts.append(int(tail) if tail.isdigit() else 0)
        return counts


def open_driver(url: str) -> Driver:
    """`sqlite:///relative.db`, `sqlite:////abs/path.db`, `sqlite://:memory:`, `postgresql://…`."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = unquote(url[len("sqlite://"):])
        if path.startswith("/"):
            path = path[1:]  # sqlite:///x.db is x.db, sqlite:////abs is /abs
        return SQLiteDriver(path or ":memory:")
    if parts.scheme in ("postgresql", "postgres"):
        return PostgresDriver(url)
    raise ValueError(f"unsupported ledger URL {url!r}")
