"""Pure-Python twin of the compiled routing hot path ``edgeproxy._fastroute`` (SPEC §2).

Same API, same results: with the same seed and the same calls both return the same endpoint
order and the same floats, bit for bit. It is the readable reference of the algorithm, the oracle
of the property tests, and a loud fallback when the extension cannot load. The algorithm is
described at the top of ``_fastroute.pyx``; this file follows it step by step, doing every float
operation in the same order as the C code, and every uint64 operation masked to 64 bits.
"""

from __future__ import annotations

import math
from operator import index as _index
from typing import final

__all__ = [
    "FLAG_COLLECTS_DATA",
    "FLAG_ZDR",
    "MAX_ENDPOINTS",
    "REASON_CONTEXT",
    "REASON_DATA_COLLECTION",
    "REASON_MAX_PRICE",
    "REASON_NONE",
    "REASON_PARAMETERS",
    "REASON_PROVIDER",
    "REASON_QUANTIZATION",
    "REASON_ZDR",
    "SORT_DEFAULT",
    "SORT_LATENCY",
    "SORT_PRICE",
    "SORT_THROUGHPUT",
    "Router",
]

MAX_ENDPOINTS = 64

REASON_NONE = 0
REASON_PROVIDER = 1
REASON_DATA_COLLECTION = 2
REASON_ZDR = 3
REASON_QUANTIZATION = 4
REASON_MAX_PRICE = 5
REASON_CONTEXT = 6
REASON_PARAMETERS = 7

SORT_DEFAULT = 0
SORT_PRICE = 1
SORT_THROUGHPUT = 2
SORT_LATENCY = 3

FLAG_COLLECTS_DATA = 1
FLAG_ZDR = 2

# 2**48 micro-USD = $281M per 1M tokens: far above any real price, and it keeps prompt + completion
# and price² finite and well inside int64 and double range.
_PRICE_LIMIT = 1 << 48
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_U64_MAX = (1 << 64) - 1
_TWO_POW_MINUS_53 = 1.0 / 9007199254740992.0


def _int_arg(name: str, value: int, lo: int, hi: int) -> int:
    value = _index(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def _float_arg(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def _c_int(value: int, lo: int, hi: int) -> int:
    # What the compiled module's typed arguments do: an int that does not fit is an OverflowError.
    value = _index(value)
    if not lo <= value <= hi:
        raise OverflowError(f"{value} does not fit in a C integer")
    return value


def _meets(e: _Endpoint, max_ttft_ms: float, min_tps: float) -> bool:
    # A preference <= 0 (or NaN) is unset. An endpoint with no figure (0: neither declared nor
    # measured) does not meet a preference on it.
    if max_ttft_ms > 0.0 and not (0.0 < e.ttft <= max_ttft_ms):
        return False
    return not (min_tps > 0.0 and not e.tps >= min_tps)


class _Endpoint:
    __slots__ = (
        "blended",
        "completion_price",
        "context_length",
        "cool_until",
        "fail_run",
        "flags",
        "last_fail_stamp",
        "params_mask",
        "prompt_price",
        "quant_id",
        "request_price",
        "tps",
        "tps_measured",
        "ttft",
        "ttft_measured",
    )

    def __init__(self) -> None:
        self.prompt_price = 0
        self.completion_price = 0
        self.request_price = 0
        self.blended = 0
        self.context_length = 0
        self.quant_id = 0
        self.params_mask = 0
        self.flags = 0
        self.tps = 0.0
        self.ttft = 0.0
        self.tps_measured = False
        self.ttft_measured = False
        self.cool_until = 0
        self.last_fail_stamp = _I64_MIN
        self.fail_run = 0


@final
class Router:
    """The route table of all models, with health windows, EWMAs and a seeded PRNG.

    Endpoints are global indices 0..n_endpoints-1; a model is a range start..end-1 of at most
    MAX_ENDPOINTS of them. Time is always an argument (now_ms >= 0, any monotonic millisecond
    clock); the router never reads a clock.
    """

    __slots__ = (
        "_alpha",
        "_bucket_ms",
        "_buckets",
        "_consecutive_failures",
        "_endpoints",
        "_failure_pct",
        "_min_failures",
        "_n",
        "_one_minus_alpha",
        "_reason",
        "_rng",
        "_window_buckets",
    )

    def __init__(
        self,
        n_endpoints: int,
        seed: int = 0,
        window_buckets: int = 30,
        bucket_ms: int = 1000,
        min_failures: int = 3,
        failure_pct: int = 25,
        ewma_alpha: float = 0.3,
        consecutive_failures: int = 5,
    ) -> None:
        n = _int_arg("n_endpoints", n_endpoints, 0, 1 << 24)
        w = _int_arg("window_buckets", window_buckets, 1, 1 << 16)
        b_ms = _int_arg("bucket_ms", bucket_ms, 1, _I64_MAX)
        min_f = _int_arg("min_failures", min_failures, 1, 1 << 32)
        pct = _int_arg("failure_pct", failure_pct, 0, 100)
        alpha = float(ewma_alpha)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"ewma_alpha must be in (0, 1], got {alpha}")
        run = _int_arg("consecutive_failures", consecutive_failures, 1, 1 << 32)
        self._rng = _index(seed) & _U64_MAX
        self._n = n
        self._window_buckets = w
        self._bucket_ms = b_ms
        self._min_failures = min_f
        self._failure_pct = pct
        self._consecutive_failures = run
        self._alpha = alpha
        self._one_minus_alpha = 1.0 - alpha
        self._reason = REASON_NONE
        self._endpoints = [_Endpoint() for _ in range(n)]
        # Per endpoint a ring of [stamp, successes, failures]; stamp -1 matches no real stamp.
        self._buckets = [[[-1, 0, 0] for _ in range(w)] for _ in range(n)]

    def _check_index(self, i: int) -> int:
        i = _c_int(i, _I64_MIN, _I64_MAX)
        if not 0 <= i < self._n:
            raise IndexError(f"endpoint index {i} out of range [0, {self._n})")
        return i

    def _check_index_now(self, i: int, now_ms: int) -> tuple[int, int]:
        # Converted together first, as the compiled module's typed arguments are.
        i = _c_int(i, _I64_MIN, _I64_MAX)
        now_ms = _c_int(now_ms, _I64_MIN, _I64_MAX)
        self._check_index(i)
        if now_ms < 0:
            raise ValueError("now_ms must be >= 0")
        return i, now_ms

    def _uniform(self) -> float:
        # splitmix64 step, then the top 53 bits mapped onto (0, 1]: never 0, so log() is finite.
        self._rng = (self._rng + 0x9E3779B97F4A7C15) & _U64_MAX
        z = self._rng
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64_MAX
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64_MAX
        z = z ^ (z >> 31)
        return ((z >> 11) + 1) * _TWO_POW_MINUS_53

    def _bucket(self, i: int, now_ms: int) -> list[int]:
        stamp = now_ms // self._bucket_ms
        b = self._buckets[i][stamp % self._window_buckets]
        if b[0] != stamp:  # the slot last held an older (or newer) bucket: reuse it
            b[0] = stamp
            b[1] = 0
            b[2] = 0
        return b

    def _count(self, i: int, now_ms: int) -> tuple[int, int]:
        now_stamp = now_ms // self._bucket_ms
        oldest = now_stamp - self._window_buckets  # stamps <= oldest have slid out
        s = f = 0
        for stamp, successes, failures in self._buckets[i]:
            if oldest < stamp <= now_stamp:
                s += successes
                f += failures
        return s, f

    def _degraded(self, i: int, now_ms: int) -> bool:
        e = self._endpoints[i]
        if now_ms < e.cool_until:
            return True
        # No failure in the window: healthy without scanning (min_failures >= 1).
        if e.last_fail_stamp <= now_ms // self._bucket_ms - self._window_buckets:
            return False
        if e.fail_run >= self._consecutive_failures:
            return True
        s, f = self._count(i, now_ms)
        return f >= self._min_failures and f * 100 >= self._failure_pct * (s + f)

    def _rank(self, start: int, items: list[int], mode: int) -> list[int]:
        # items: positions in ascending order, so the last key component is "ties by index".
        eps = self._endpoints
        keys = []
        for p in items:
            e = eps[start + p]
            if mode == SORT_DEFAULT:
                if e.blended == 0:
                    keys.append((0, -math.log(self._uniform()), 0, p))
                else:
                    price = float(e.blended)
                    weight = 1.0 / (price * price)
                    keys.append((1, -math.log(self._uniform()) / weight, 0, p))
            elif mode == SORT_PRICE:
                keys.append((e.blended, 0.0, 0, p))
            elif mode == SORT_THROUGHPUT:
                known = e.tps > 0.0
                keys.append((0 if known else 1, -e.tps if known else 0.0, e.blended, p))
            else:
                known = e.ttft > 0.0
                keys.append((0 if known else 1, e.ttft if known else 0.0, e.blended, p))
        keys.sort()
        return [k[3] for k in keys]

    def set_endpoint(
        self,
        i: int,
        prompt_price: int,
        completion_price: int,
        request_price: int,
        context_length: int,
        quant_id: int,
        params_mask: int,
        flags: int,
        declared_tps: float,
        declared_ttft_ms: float,
    ) -> None:
        """Set the static data of endpoint i; declared speeds seed the EWMAs until measured.

        Prices are integers in micro-USD per 1M tokens (request_price: per request); quant_id is
        0..63 (0 = unknown); params_mask has a bit per supported request parameter; flags are
        FLAG_* bits. Values are validated (ValueError) before anything changes.
        """
        i = self._check_index(i)
        pp = _int_arg("prompt_price", prompt_price, 0, _PRICE_LIMIT)
        cp = _int_arg("completion_price", completion_price, 0, _PRICE_LIMIT)
        rp = _int_arg("request_price", request_price, 0, _PRICE_LIMIT)
        ctx = _int_arg("context_length", context_length, 0, _I64_MAX)
        q = _int_arg("quant_id", quant_id, 0, 63)
        pm = _int_arg("params_mask", params_mask, 0, _U64_MAX)
        fl = _int_arg("flags", flags, 0, _U64_MAX)
        tps = _float_arg("declared_tps", declared_tps)
        ttft = _float_arg("declared_ttft_ms", declared_ttft_ms)
        e = self._endpoints[i]
        e.prompt_price = pp
        e.completion_price = cp
        e.request_price = rp
        e.blended = pp + cp
        e.context_length = ctx
        e.quant_id = q
        e.params_mask = pm
        e.flags = fl
        if not e.tps_measured:
            e.tps = tps
        if not e.ttft_measured:
            e.ttft = ttft

    def record_success(self, i: int, now_ms: int) -> None:
        """Count a successful attempt on endpoint i at now_ms; it ends a run of failures."""
        i, now_ms = self._check_index_now(i, now_ms)
        self._bucket(i, now_ms)[1] += 1
        self._endpoints[i].fail_run = 0

    def record_failure(self, i: int, now_ms: int) -> None:
        """Count a failed attempt (connection error, timeout, 5xx, 429) on endpoint i at now_ms."""
        i, now_ms = self._check_index_now(i, now_ms)
        self._bucket(i, now_ms)[2] += 1
        stamp = now_ms // self._bucket_ms
        e = self._endpoints[i]
        if stamp > e.last_fail_stamp:
            e.last_fail_stamp = stamp
        e.fail_run += 1

    def cool_down(self, i: int, until_ms: int) -> None:
        """Degrade endpoint i until until_ms (a 429's Retry-After); a shorter one never cuts it."""
        i = _c_int(i, _I64_MIN, _I64_MAX)
        until_ms = _c_int(until_ms, _I64_MIN, _I64_MAX)
        self._check_index(i)
        e = self._endpoints[i]
        if until_ms > e.cool_until:
            e.cool_until = until_ms

    def observe(self, i: int, ttft_ms: float, tokens_per_s: float) -> None:
        """Feed one completion's measured TTFT (ms) and tokens/s into the EWMAs of endpoint i.

        A value that is not a finite number > 0 means "not measured" and leaves its EWMA alone;
        the first measured value replaces the declared seed outright.
        """
        i = _c_int(i, _I64_MIN, _I64_MAX)
        ttft_ms = float(ttft_ms)
        tokens_per_s = float(tokens_per_s)
        self._check_index(i)
        e = self._endpoints[i]
        if 0.0 < ttft_ms < math.inf:
            if e.ttft_measured:
                e.ttft = self._alpha * ttft_ms + self._one_minus_alpha * e.ttft
            else:
                e.ttft = ttft_ms
                e.ttft_measured = True
        if 0.0 < tokens_per_s < math.inf:
            if e.tps_measured:
                e.tps = self._alpha * tokens_per_s + self._one_minus_alpha * e.tps
            else:
                e.tps = tokens_per_s
                e.tps_measured = True

    def window(self, i: int, now_ms: int) -> tuple[int, int]:
        """Return (successes, failures) of endpoint i in the window that ends at now_ms."""
        i, now_ms = self._check_index_now(i, now_ms)
        return self._count(i, now_ms)

    def is_degraded(self, i: int, now_ms: int) -> bool:
        """Whether endpoint i is degraded at now_ms (bad window or cooling down)."""
        i, now_ms = self._check_index_now(i, now_ms)
        return self._degraded(i, now_ms)

    def throughput(self, i: int) -> float:
        """EWMA tokens/s of endpoint i (the declared value until the first observation)."""
        return self._endpoints[self._check_index(i)].tps

    def latency(self, i: int) -> float:
        """EWMA time to first token in ms of endpoint i (declared until the first observation)."""
        return self._endpoints[self._check_index(i)].ttft

    def meets_preferences(self, i: int, max_ttft_ms: float, min_tps: float) -> bool:
        """Whether endpoint i's EWMAs meet max_ttft_ms and min_tps (each <= 0: unset), as
        select() ranks it."""
        i = _c_int(i, _I64_MIN, _I64_MAX)
        max_ttft_ms, min_tps = float(max_ttft_ms), float(min_tps)
        return _meets(self._endpoints[self._check_index(i)], max_ttft_ms, min_tps)

    @property
    def empty_reason(self) -> int:
        """REASON_* code of the filter that emptied the last select(); REASON_NONE otherwise."""
        return self._reason

    def select(
        self,
        start: int,
        end: int,
        now_ms: int,
        allow_mask: int,
        deny_data_collection: bool,
        require_zdr: bool,
        quant_mask: int,
        max_prompt_price: int,
        max_completion_price: int,
        need_tokens: int,
        required_params: int,
        sort: int,
        order: tuple[int, ...],
        allow_fallbacks: bool,
        max_ttft_ms: float = 0.0,
        min_tps: float = 0.0,
    ) -> list[int]:
        """Return the global indices of model range start..end-1 to attempt, in order.

        Filters: allow_mask (bit p keeps position p = i - start), deny_data_collection,
        require_zdr, quant_mask (0 = any; else bit quant_id), max prices (< 0 = no limit),
        need_tokens (context length), required_params (all bits). The first filter that leaves
        nothing sets empty_reason and [] is returned. Stable endpoints come before degraded ones;
        within each, the positions named in `order` first, then the others by `sort` (SORT_*),
        those whose EWMAs meet max_ttft_ms and min_tps (each <= 0: unset) before those that miss
        them. With allow_fallbacks false only the named positions are candidates; when none is
        named, only the first endpoint is returned.
        """
        # The compiled module's typed arguments, in their order: int64, int64, int64, uint64, ...
        for v, lo, hi in (
            (start, _I64_MIN, _I64_MAX),
            (end, _I64_MIN, _I64_MAX),
            (now_ms, _I64_MIN, _I64_MAX),
            (allow_mask, 0, _U64_MAX),
            (quant_mask, 0, _U64_MAX),
            (max_prompt_price, _I64_MIN, _I64_MAX),
            (max_completion_price, _I64_MIN, _I64_MAX),
            (need_tokens, _I64_MIN, _I64_MAX),
            (required_params, 0, _U64_MAX),
            (sort, _I64_MIN, _I64_MAX),
        ):
            _c_int(v, lo, hi)
        max_ttft_ms, min_tps = float(max_ttft_ms), float(min_tps)
        if not 0 <= start <= end <= self._n:
            raise IndexError(f"endpoint range [{start}, {end}) out of [0, {self._n})")
        if end - start > MAX_ENDPOINTS:
            raise ValueError(f"a model has at most {MAX_ENDPOINTS} endpoints, got {end - start}")
        if now_ms < 0:
            raise ValueError("now_ms must be >= 0")
        if not SORT_DEFAULT <= sort <= SORT_LATENCY:
            raise ValueError(f"unknown sort {sort}")
        m = end - start
        # provider.order without out-of-range and repeated positions.
        named: list[int] = []
        for x in order:
            p = _c_int(x, _I64_MIN, _I64_MAX)
            if 0 <= p < m and p not in named:
                named.append(p)
        named_set = set(named)

        # 1. Filters, each as the set of positions it keeps (SPEC §2.1).
        eps = self._endpoints[start:end]
        cand = [p for p in range(m) if (allow_mask >> p) & 1]
        if not allow_fallbacks and named:
            # "only the providers in order, or their error" (SPEC §2.5)
            cand = [p for p in cand if p in named_set]
        if not cand:
            self._reason = REASON_PROVIDER
            return []
        filters = (
            lambda e: not (deny_data_collection and e.flags & FLAG_COLLECTS_DATA),
            lambda e: not require_zdr or e.flags & FLAG_ZDR,
            lambda e: quant_mask == 0 or (quant_mask >> e.quant_id) & 1,
            lambda e: (
                (max_prompt_price < 0 or e.prompt_price <= max_prompt_price)
                and (max_completion_price < 0 or e.completion_price <= max_completion_price)
            ),
            lambda e: e.context_length >= need_tokens,
            lambda e: (e.params_mask & required_params) == required_params,
        )
        for reason, keep in enumerate(filters, REASON_DATA_COLLECTION):
            cand = [p for p in cand if keep(eps[p])]
            if not cand:
                self._reason = reason
                return []

        # 2. Health (SPEC §2.2).
        is_stable = {p: not self._degraded(start + p, now_ms) for p in cand}
        stable = [p for p in cand if is_stable[p]]
        degraded = [p for p in cand if not is_stable[p]]

        # 3. Order (SPEC §2.3): named stable, other stable, named degraded, other degraded; the
        # others of each group that meet the performance preferences before those that miss them.
        if max_ttft_ms > 0.0 or min_tps > 0.0:
            pref = {p for p in cand if _meets(eps[p], max_ttft_ms, min_tps)}
        else:
            pref = set(cand)
        degraded_mode = SORT_PRICE if sort == SORT_DEFAULT else sort
        out = [p for p in named if is_stable.get(p) is True]
        rest = [p for p in stable if p not in named_set]
        out += self._rank(start, [p for p in rest if p in pref], sort)
        out += self._rank(start, [p for p in rest if p not in pref], sort)
        out += [p for p in named if is_stable.get(p) is False]
        rest = [p for p in degraded if p not in named_set]
        out += self._rank(start, [p for p in rest if p in pref], degraded_mode)
        out += self._rank(start, [p for p in rest if p not in pref], degraded_mode)

        self._reason = REASON_NONE
        if not allow_fallbacks and not named:
            del out[1:]
        return [start + p for p in out]
