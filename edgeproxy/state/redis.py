"""Shared state on Redis for many workers and nodes (SPEC §8): rate-limit counters, credit
reservations, and endpoint health, each with an atomic script so that nodes never double-spend.

Money per account (hash `ep:acct:{id}`, and the same per key in `ep:key:{id}`):
    credits   copied from the ledger by every node's refresh (top-ups happen in the ledger)
    usage     charges already written to the ledger; first loaded from it, then advanced by the
              node that writes each batch, in the same step that lowers `held`
    held      reservations of requests in flight plus charges not yet written, on all nodes
so room = credits − usage − held is one consistent read inside one script. If Redis restarts,
`usage` is reloaded from the ledger and `held` starts again from zero (clamped, never negative):
the in-flight work of that moment is the only thing not counted, and only until it settles.

Health: every node adds its attempt outcomes to per-second hashes (`ep:health:{second}`, fields
`{endpoint}|{node}|ok|fail|ttft|tps…`) and reads the others' back every `sync_s`, replaying
them into its local router, so a provider failing on one node is demoted on all within a second
while routing itself never waits on Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("edgeproxy.state")

__all__ = ["RedisState"]

_RESERVE = """
local acct, key = KEYS[1], KEYS[2]
local amount = tonumber(ARGV[1])
-- first touch (or after a Redis restart): usage comes from the ledger, nothing is held yet
redis.call('HSETNX', acct, 'usage', ARGV[3])
redis.call('HSETNX', acct, 'held', 0)
redis.call('HSET', acct, 'credits', ARGV[2])
redis.call('HSETNX', key, 'usage', ARGV[5])
redis.call('HSETNX', key, 'held', 0)
local room = tonumber(redis.call('HGET', acct, 'credits')) - tonumber(redis.call('HGET', acct, 'usage'))
  - tonumber(redis.call('HGET', acct, 'held'))
if ARGV[6] == '0' and amount > room then return {0, room, 0} end
local kroom = -1
if ARGV[4] ~= '-1' then
  kroom = tonumber(ARGV[4]) - tonumber(redis.call('HGET', key, 'usage')) - tonumber(redis.call('HGET', key, 'held'))
  if amount > kroom then return {0, room, kroom} end
end
redis.call('HINCRBY', acct, 'held', amount)
redis.call('HINCRBY', key, 'held', amount)
return {1, room, kroom}
"""

# held += delta, never below zero (after a Redis restart a release may find nothing to release)
_HELD = """
for i = 1, #KEYS do
  local v = redis.call('HINCRBY', KEYS[i], 'held', ARGV[1])
  if v < 0 then redis.call('HSET', KEYS[i], 'held', 0) end
end
return 1
"""

# a batch was written to the ledger: usage += cost, held -= cost (clamped)
_FLUSHED = """
-- (an account whose usage Redis never loaded is skipped: its first reserve reads the ledger,
-- which already holds this batch)
for i = 1, #KEYS do
  local c = tonumber(ARGV[i])
  -- (c == 0 is skipped: -c would be Lua's -0, which HINCRBY refuses)
  if c ~= 0 and redis.call('HEXISTS', KEYS[i], 'usage') == 1 then
    redis.call('HINCRBY', KEYS[i], 'usage', c)
    local v = redis.call('HINCRBY', KEYS[i], 'held', -c)
    if v < 0 then redis.call('HSET', KEYS[i], 'held', 0) end
  end
end
return 1
"""

_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return {0, redis.call('TTL', KEYS[1])}
end
return {1, redis.call('TTL', KEYS[1])}
"""


class RedisState:
    """A connection to Redis that reports, never raises: callers fall back to local state."""

    def __init__(self, url: str, node: str | None = None, sync_s: float = 0.25) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.node = node or f"{os.uname().nodename}-{os.getpid()}-{secrets.token_hex(3)}"
        self.sync_s = sync_s
        self.r = aioredis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5,
                                   health_check_interval=0)
        self.up = False
        self.last_error = ""
        self._reserve = self.r.register_script(_RESERVE)
        self._held = self.r.register_script(_HELD)
        self._flushed = self.r.register_script(_FLUSHED)
        self._hit = self.r.register_script(_HIT)
        self._bg: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        await self.ping()

    async def close(self) -> None:
        for t in list(self._bg):
            with contextlib.suppress(Exception):
                await t
        await self.r.aclose()

    async def ping(self) -> bool:
        try:
            await self.r.ping()
            if not self.up:
                log.info("redis %s reachable: shared state on", _safe(self.url))
            self.up = True
        except Exception as exc:
            self._down(exc)
        return self.up

    def _down(self, exc: BaseException) -> None:
        if self.up or not self.last_error:
            log.warning("redis unreachable (%s: %s): serving with local state until it returns",
                        type(exc).__name__, str(exc)[:200])
        self.up = False
        self.last_error = type(exc).__name__

    def background(self, coro: Any) -> None:
        """Run a state update off the request path (it must survive the request's cancel)."""
        t = asyncio.ensure_future(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    # -- counters ------------------------------------------------------------------------------

    async def hit(self, key: str, window_s: int, limit: int, now: float) -> tuple[bool, int] | None:
        """Fixed-window counter shared by all nodes; None when Redis is down."""
        if not self.up:
            return None
        start = int(now) - int(now) % window_s
        try:
            ok, ttl = await self._hit(keys=[f"ep:rl:{key}:{start}"], args=[limit, window_s + 5])
        except Exception as exc:
            self._down(exc)
            return None
        retry = start + window_s - int(now)
        return bool(ok), max(1, retry if ttl is None or ttl < 0 else min(retry, int(ttl)))

    # -- money ---------------------------------------------------------------------------------

    async def reserve(
        self, account: str, key: str, amount: int, credits: int, usage: int,
        key_limit: int | None, key_usage: int, unlimited: bool,
    ) -> tuple[bool, int, int] | None:
        """(granted, account room, key room) — None when Redis is down."""
        if not self.up:
            return None
        try:
            ok, room, kroom = await self._reserve(
                keys=[f"ep:acct:{account}", f"ep:key:{key}"],
                args=[amount, credits, usage, -1 if key_limit is None else key_limit, key_usage,
                      1 if unlimited else 0],
            )
        except Exception as exc:
            self._down(exc)
            return None
        return bool(ok), int(room), int(kroom)

    async def add_held(self, account: str, key: str, delta: int) -> None:
        if not self.up or not delta:
            return
        try:
            await self._held(keys=[f"ep:acct:{account}", f"ep:key:{key}"], args=[delta])
        except Exception as exc:
            self._down(exc)

    async def flushed(self, by_account: dict[str, int], by_key: dict[str, int]) -> None:
        if not self.up:
            return
        keys = [f"ep:acct:{a}" for a in by_account] + [f"ep:key:{k}" for k in by_key]
        args = list(by_account.values()) + list(by_key.values())
        if not keys:
            return
        try:
            await self._flushed(keys=keys, args=args)
        except Exception as exc:
            self._down(exc)

    async def set_credits(self, credits: dict[str, int]) -> None:
        if not self.up or not credits:
            return
        try:
            async with self.r.pipeline(transaction=False) as p:
                for acct, c in credits.items():
                    p.hset(f"ep:acct:{acct}", "credits", c)
                await p.execute()
        except Exception as exc:
            self._down(exc)

    async def forget(self, accounts: list[str]) -> None:
        """Drop cached money of accounts (their ledger rows changed under us, e.g. expiry)."""
        if self.up and accounts:
            with contextlib.suppress(Exception):
                await self.r.delete(*[f"ep:acct:{a}" for a in accounts])

    # -- health --------------------------------------------------------------------------------

    async def sync_health(
        self,
        pending: dict[tuple[int, str], list[float]],
        cooldowns: dict[str, int],
        apply: Callable[[str, int, int, int, float, float], None],
        apply_cooldown: Callable[[str, int], None],
        window_s: int,
        endpoint_ids: list[str],
        applied: dict[tuple[int, str, str], tuple[int, int]],
    ) -> bool:
        """Push this node's outcomes, pull the others'. `pending[(second, endpoint)]` holds
        [ok, fail, ttft_sum, ttft_n, tps_sum, tps_n]; `apply(endpoint, second, new_ok,
        new_fail, ttft, tps)` replays another node's new outcomes locally."""
        if not self.up:
            return False
        now = int(time.time())
        try:
            async with self.r.pipeline(transaction=False) as p:
                for (sec, ep), v in pending.items():
                    h = f"ep:health:{sec}"
                    base = f"{ep}|{self.node}|"
                    for name, val in zip(("ok", "fail"), v[:2], strict=True):
                        if val:
                            p.hincrby(h, base + name, int(val))
                    if v[3]:
                        p.hincrbyfloat(h, base + "ttft", v[2] / v[3])
                    if v[5]:
                        p.hincrbyfloat(h, base + "tps", v[4] / v[5])
                    p.expire(h, window_s + 30)
                for ep, until in cooldowns.items():
                    p.set(f"ep:cool:{ep}", until, px=max(1, until - int(time.time() * 1000)))
                for sec in range(now - window_s + 1, now + 1):
                    p.hgetall(f"ep:health:{sec}")
                if endpoint_ids:
                    p.mget([f"ep:cool:{e}" for e in endpoint_ids])
                res = await p.execute()
        except Exception as exc:
            self._down(exc)
            return False
        pending.clear()
        cooldowns.clear()
        n_cool = 1 if endpoint_ids else 0
        windows = res[len(res) - window_s - n_cool:len(res) - n_cool]
        for sec, fields in zip(range(now - window_s + 1, now + 1), windows, strict=True):
            seen: dict[tuple[str, str], dict[str, float]] = {}
            for f, v in fields.items():
                ep, node, name = f.decode().rsplit("|", 2)
                if node == self.node:
                    continue
                seen.setdefault((ep, node), {})[name] = float(v)
            for (ep, node), vals in seen.items():
                ok, fail = int(vals.get("ok", 0)), int(vals.get("fail", 0))
                prev = applied.get((sec, ep, node), (0, 0))
                if (ok, fail) != prev:
                    applied[(sec, ep, node)] = (ok, fail)
                    apply(ep, sec, ok - prev[0], fail - prev[1], vals.get("ttft", 0.0),
                          vals.get("tps", 0.0))
        if endpoint_ids:
            for ep, until in zip(endpoint_ids, res[-1], strict=True):
                if until is not None:
                    apply_cooldown(ep, int(until))
        cutoff = now - window_s - 5
        for k in [k for k in applied if k[0] < cutoff]:
            del applied[k]
        return True


def _safe(url: str) -> str:
    """A Redis URL without its password, for the log."""
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
