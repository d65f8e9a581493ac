"""Shared state on Redis for many workers and nodes (SPEC §8): rate-limit counters, credit
leases, and endpoint health, each with an atomic script so that nodes never double-spend.

Money: nodes lease slices of an account's credits (and of a key's spend limit) and spend them
locally, so the request path meets Redis only when a node's slice runs out, and an outage can
spend only what was leased (billing.service explains the node's side). Per account:
    ep:acct:{id}   credits (from the ledger) and usage (charges written to the ledger: read from
                   it when Redis does not hold it, then advanced with every batch a node writes)
    ep:lease:{id}  node -> micro-USD leased to it and not yet written to the ledger
and the same per key with a limit (`ep:key:`, `ep:klease:`). Free = credits − usage − Σ leases, in
one script. A node's lease lives while its `ep:alive:{node}` key does (renewed every beat), so a
dead node's slice returns to its account within seconds. When Redis restarts empty, `ep:epoch`
is new: no lease is granted until every live node has had a beat to write its leases back.

Health: every node adds its attempt outcomes to per-second hashes (`ep:health:{second}`, fields
`{endpoint}|{node}|{name}`: ok and fail counts, and integer sums with counts of TTFT and tokens/s)
and reads the others' back every `sync_s`, replaying them into its local router, so a provider
failing on one node is demoted on all within a second while routing itself never waits on Redis.

Sticky routing: `ep:pin:{s|h}:{account}|{model}|{session}` holds the endpoint a conversation is
pinned to, expiring with the pin (sticky.Pins).
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

from ..errors import StartupError

log = logging.getLogger("edgeproxy.state")

#: A grant takes at most this share of what is free, so the other nodes find some left.
LEASE_SPLIT = 4

__all__ = ["RedisState"]

# A node asks for a lease: `need` micro-USD at least, up to a slice of what is free. Free =
# credits − usage − every live node's lease; a lease of a node whose `alive` key expired (the node
# died) is dropped here and so returns to the account. Returns {1, account grant, key grant} or
# {0, account free, key free} (refused), {-1, ms} while the state is new (wait for the nodes to
# re-assert their leases after a Redis restart), {-2} when usage must first be read from the ledger.
_GRANT = """
local node = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local born = redis.call('GET', KEYS[5])
if not born then
  redis.call('SET', KEYS[5], now)
  born = now
end
local wait = tonumber(born) + tonumber(ARGV[10]) - now
if wait > 0 then return {-1, wait} end
local function free(hash, leases, cap, usage)
  if redis.call('HEXISTS', hash, 'usage') == 0 then
    if usage == '' then return nil end
    redis.call('HSET', hash, 'usage', usage)
  end
  local held = 0
  local f = redis.call('HGETALL', leases)
  for i = 1, #f, 2 do
    if f[i] == node or redis.call('EXISTS', ARGV[9] .. f[i]) == 1 then
      held = held + tonumber(f[i + 1])
    else
      redis.call('HDEL', leases, f[i])
    end
  end
  return cap - tonumber(redis.call('HGET', hash, 'usage')) - held
end
local function slice(need, want, avail)
  if need <= 0 then return 0 end
  return math.max(need, math.min(want, math.floor(avail / tonumber(ARGV[11]))))
end
redis.call('HSET', KEYS[1], 'credits', ARGV[4])
local fa = free(KEYS[1], KEYS[2], tonumber(ARGV[4]), ARGV[5])
if not fa then return {-2} end
local needa, needk = tonumber(ARGV[2]), tonumber(ARGV[6])
local fk = -1
if ARGV[7] ~= '-1' then
  fk = free(KEYS[3], KEYS[4], tonumber(ARGV[7]), ARGV[8])
  if not fk then return {-2} end
end
if needa > fa or (needk > 0 and needk > fk) then return {0, fa, fk} end
local ga = slice(needa, tonumber(ARGV[3]), fa)
local gk = 0
if needk > 0 then gk = slice(needk, tonumber(ARGV[3]), fk) end
if ga > 0 then redis.call('HINCRBY', KEYS[2], node, ga) end
if gk > 0 then redis.call('HINCRBY', KEYS[4], node, gk) end
return {1, ga, gk}
"""

# Apply one batch of a node's deltas once (KEYS[1] marks the batch as applied): for each
# (money hash, lease hash) pair, usage += spent and the node's lease −= spent + given back
# (never below zero). A hash whose usage Redis does not hold (a restart) only has the lease
# lowered: its usage is re-read from the ledger, which already holds the spent part.
_DELTAS = """
if redis.call('SET', KEYS[1], 1, 'NX', 'EX', 3600) == false then return 0 end
local node = ARGV[1]
for i = 2, #KEYS, 2 do
  local spent, back = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  if spent ~= 0 and redis.call('HEXISTS', KEYS[i], 'usage') == 1 then
    redis.call('HINCRBY', KEYS[i], 'usage', spent)
  end
  if spent + back ~= 0 then  -- (HINCRBY refuses Lua's -0)
    local left = redis.call('HINCRBY', KEYS[i + 1], node, -(spent + back))
    if left <= 0 then redis.call('HDEL', KEYS[i + 1], node) end
  end
end
return 1
"""

# Heartbeat: this node is alive; returns the state's epoch (created when missing: Redis started
# empty). A changed epoch makes the node re-assert its leases (_REASSERT: lease hash -> amount).
_BEAT = """
redis.call('SET', KEYS[1], 1, 'PX', ARGV[1])
local t = redis.call('TIME')
local born = redis.call('GET', KEYS[2])
if not born then
  born = tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  redis.call('SET', KEYS[2], born)
end
return born
"""

_REASSERT = """
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], ARGV[1], ARGV[i + 1])
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
        try:
            import redis.asyncio as aioredis
        except ModuleNotFoundError as exc:  # the `redis` extra is not installed
            raise StartupError(
                f"[storage] state = {_safe(url)} needs the redis package, which is not installed",
                "pip install 'edgeproxy[redis]', or set state = \"memory://\" (one process only)",
            ) from exc
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        self.url = url
        self.node = node or f"{os.uname().nodename}-{os.getpid()}-{secrets.token_hex(3)}"
        self.sync_s = sync_s
        # No beat for a few sync periods: the node is taken for dead and its leases return.
        self.alive_ms = max(3000, int(sync_s * 12_000))
        # After Redis restarts empty, no lease is granted until every node has beaten again.
        self.grace_ms = max(750, int(sync_s * 3000))
        # A burst waits for a connection instead of failing (redis-py's default pool raises when
        # it runs out, which used to read as an outage); a connection found dead (Redis
        # restarted) is retried once on a new one.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=64, timeout=2.0, socket_timeout=0.5, socket_connect_timeout=0.5,
            health_check_interval=0, retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError])
        self.r = aioredis.Redis.from_pool(pool)
        self.up = False
        self.last_error = ""
        self._grant = self.r.register_script(_GRANT)
        self._deltas = self.r.register_script(_DELTAS)
        self._beat = self.r.register_script(_BEAT)
        self._reassert = self.r.register_script(_REASSERT)
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

    async def count(self, key: str, window_s: int, now: float) -> int | None:
        """How many events `hit` counted in the current window; None when Redis is down."""
        if not self.up:
            return None
        try:
            n = await self.r.get(f"ep:rl:{key}:{int(now) - int(now) % window_s}")
        except Exception as exc:
            self._down(exc)
            return None
        return int(n or 0)

    # -- money ---------------------------------------------------------------------------------

    async def grant(
        self, account: str, key: str, need: int, key_need: int, want: int, credits: int,
        usage: int | None, key_limit: int | None, key_usage: int | None,
    ) -> tuple[int, int, int] | None:
        """Lease at least `need` more of the account's credits (and `key_need` of the key's limit)
        to this node: (1, account grant, key grant), (0, account free, key free) when refused,
        (-1, ms to wait, 0) while a restarted Redis waits for the leases to be re-asserted,
        (-2, 0, 0) when usage must be read from the ledger first; None when Redis is down."""
        if not self.up:
            return None
        try:
            res = await self._grant(
                keys=[f"ep:acct:{account}", f"ep:lease:{account}", f"ep:key:{key}",
                      f"ep:klease:{key}", "ep:epoch"],
                args=[self.node, need, want, credits, "" if usage is None else usage, key_need,
                      -1 if key_limit is None else key_limit,
                      "" if key_usage is None else key_usage, "ep:alive:", self.grace_ms,
                      LEASE_SPLIT])
        except Exception as exc:
            self._down(exc)
            return None
        return int(res[0]), int(res[1]) if len(res) > 1 else 0, int(res[2]) if len(res) > 2 else 0

    async def apply(self, batch: str, accounts: dict[str, tuple[int, int]],
                    keys: dict[str, tuple[int, int]]) -> bool:
        """Apply one batch of (spent, given back) per account and key, exactly once however often
        it is sent (an answer lost after Redis ran it is retried under the same `batch` id)."""
        if not self.up:
            return False
        names = [f"ep:done:{self.node}:{batch}"]
        args: list[Any] = [self.node]
        for prefix, lease, items in (("acct", "lease", accounts), ("key", "klease", keys)):
            for ident, (spent, back) in items.items():
                names += [f"ep:{prefix}:{ident}", f"ep:{lease}:{ident}"]
                args += [spent, back]
        try:
            await self._deltas(keys=names, args=args)
        except Exception as exc:
            self._down(exc)
            return False
        return True

    async def beat(self, ttl_ms: int) -> str | None:
        """Say this node is alive; the state's epoch (None when Redis is down)."""
        if not self.up:
            return None
        try:
            born = await self._beat(keys=[f"ep:alive:{self.node}", "ep:epoch"], args=[ttl_ms])
        except Exception as exc:
            self._down(exc)
            return None
        return born.decode() if isinstance(born, bytes) else str(born)

    async def reassert(self, accounts: dict[str, int], keys: dict[str, int]) -> bool:
        """Write this node's leases back after Redis restarted empty."""
        names = [f"ep:lease:{a}" for a in accounts] + [f"ep:klease:{k}" for k in keys]
        if not names:
            return True
        try:
            await self._reassert(keys=names, args=[self.node, *accounts.values(), *keys.values()])
        except Exception as exc:
            self._down(exc)
            return False
        return True

    # -- health --------------------------------------------------------------------------------

    async def sync_health(
        self,
        pending: dict[tuple[int, str], list[float]],
        cooldowns: dict[str, int],
        apply: Callable[[str, int, int, int, float, int, float, int], None],
        apply_cooldown: Callable[[str, int], None],
        window_s: int,
        endpoint_ids: list[str],
        applied: dict[tuple[int, str, str], tuple[int, ...]],
    ) -> bool:
        """Push this node's outcomes, pull the others'. `pending[(second, endpoint)]` holds
        [ok, fail, ttft_ms_sum, ttft_n, tps_sum, tps_n]; `apply(endpoint, second, ok, fail,
        ttft_ms_sum, ttft_n, tps_sum, tps_n)` replays what another node added since the last
        pull. Sums go to Redis as integers (µs, milli-tokens/s) beside their counts, so a mean
        is exact however many pushes of however many nodes made up a second."""
        if not self.up:
            return False
        now = int(time.time())
        # What is pushed leaves `pending` before the await: outcomes recorded meanwhile go to new
        # entries, where clearing after the push used to drop them.
        batch, cool = dict(pending), dict(cooldowns)
        pending.clear()
        cooldowns.clear()
        try:
            async with self.r.pipeline(transaction=False) as p:
                for (sec, ep), v in batch.items():
                    h = f"ep:health:{sec}"
                    base = f"{ep}|{self.node}|"
                    for name, val in zip(_HEALTH_FIELDS, _health_ints(v), strict=True):
                        if val:
                            p.hincrby(h, base + name, val)
                    p.expire(h, window_s + 30)
                for ep, until in cool.items():
                    p.set(f"ep:cool:{ep}", until, px=max(1, until - int(time.time() * 1000)))
                for sec in range(now - window_s + 1, now + 1):
                    p.hgetall(f"ep:health:{sec}")
                if endpoint_ids:
                    p.mget([f"ep:cool:{e}" for e in endpoint_ids])
                res = await p.execute()
        except Exception as exc:
            self._down(exc)
            for second_ep, v in batch.items():  # pushed again with the next sync
                cur = pending.setdefault(second_ep, [0, 0, 0.0, 0, 0.0, 0])
                for j, x in enumerate(v):
                    cur[j] += x
            for ep, until in cool.items():
                cooldowns[ep] = max(until, cooldowns.get(ep, 0))
            return False
        n_cool = 1 if endpoint_ids else 0
        windows = res[len(res) - window_s - n_cool:len(res) - n_cool]
        for sec, fields in zip(range(now - window_s + 1, now + 1), windows, strict=True):
            seen: dict[tuple[str, str], list[int]] = {}
            for f, v in fields.items():
                ep, node, name = f.decode().rsplit("|", 2)
                at = _HEALTH_AT.get(name)
                if node == self.node or at is None:
                    continue
                seen.setdefault((ep, node), [0] * len(_HEALTH_FIELDS))[at] = int(v)
            for (ep, node), vals in seen.items():
                now_vals = tuple(vals)
                prev = applied.get((sec, ep, node), _NO_HEALTH)
                if now_vals != prev:
                    applied[(sec, ep, node)] = now_vals
                    d = [a - b for a, b in zip(now_vals, prev, strict=True)]
                    apply(ep, sec, d[0], d[1], d[2] / 1000.0, d[3], d[4] / 1000.0, d[5])
        if endpoint_ids:
            for ep, until in zip(endpoint_ids, res[-1], strict=True):
                if until is not None:
                    apply_cooldown(ep, int(until))
        cutoff = now - window_s - 5
        for k in [k for k in applied if k[0] < cutoff]:
            del applied[k]
        return True

    # -- sticky routing (sticky.Pins) ---------------------------------------------------------

    async def get_pin(self, key: str) -> tuple[str, int] | None:
        """A pin's endpoint and its ms to live; None when none (or Redis is down)."""
        if not self.up:
            return None
        try:
            async with self.r.pipeline(transaction=False) as p:
                p.get(f"ep:pin:{key}")
                p.pttl(f"ep:pin:{key}")
                value, ttl = await p.execute()
        except Exception as exc:
            self._down(exc)
            return None
        if value is None or not isinstance(ttl, int) or ttl <= 0:
            return None
        return (value.decode() if isinstance(value, bytes) else str(value)), ttl

    async def set_pin(self, key: str, endpoint: str, ttl_ms: int) -> None:
        try:
            await self.r.set(f"ep:pin:{key}", endpoint, px=ttl_ms)
        except Exception as exc:
            self._down(exc)

    # -- BYOK allowance ------------------------------------------------------------------------

    async def byok_count(self, name: str, delta: int, seed: int) -> int | None:
        """An account's BYOK count of one month (`name`) after adding `delta`; a counter Redis
        does not have (the month's first use, or Redis restarted empty) starts at `seed`, the
        ledger's count. None when Redis is down."""
        if not self.up:
            return None
        key = f"ep:byok:{name}"
        try:
            async with self.r.pipeline(transaction=True) as p:
                p.set(key, seed, nx=True, ex=_BYOK_TTL_S)
                p.incrby(key, delta)
                _, total = await p.execute()
        except Exception as exc:
            self._down(exc)
            return None
        return int(total)


# Per endpoint, node and second: outcome counts, and TTFT (µs) and tokens/s (thousandths) as
# integer sums beside their counts.
_HEALTH_FIELDS = ("ok", "fail", "ttft_us", "ttft_n", "tps_milli", "tps_n")
_HEALTH_AT = {name: i for i, name in enumerate(_HEALTH_FIELDS)}
_NO_HEALTH = (0,) * len(_HEALTH_FIELDS)


def _health_ints(v: list[float]) -> tuple[int, ...]:
    """[ok, fail, ttft_ms_sum, ttft_n, tps_sum, tps_n] -> the integers of _HEALTH_FIELDS."""
    return (int(v[0]), int(v[1]), round(v[2] * 1000), int(v[3]), round(v[4] * 1000), int(v[5]))


# A month's BYOK counter outlives its month by a few days (its last requests settle late).
_BYOK_TTL_S = 40 * 86400


def _safe(url: str) -> str:
    """A Redis URL without its password, for the log."""
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
