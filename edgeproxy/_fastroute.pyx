# The routing hot path (SPEC §2): numbers, indices and bitmasks in, endpoint indices out.
#
# One Router holds the route table of every model. Endpoint i (a global index) has static data
# (prices, context length, quantization, supported parameters, flags) and live state (a health
# window, EWMAs of throughput and time to first token, a 429 cool-down). A model owns a contiguous
# range start..end-1 of at most 64 endpoints, so a set of candidates is one uint64_t mask with bit p
# for position p = i - start.
#
# select() is four steps over at most 64 positions, touching no Python object between copying the
# `order` argument in and building the result list out:
#
#   1. Filters (SPEC §2.1). One pass computes, per filter, the mask of positions it keeps; the masks
#      are then ANDed in a fixed order and the first one that leaves nothing is reported as
#      empty_reason, so the caller can say which requirement emptied the list (a 503 that names it).
#   2. Health (SPEC §2.2). Per endpoint a ring of window_buckets buckets of bucket_ms each. A bucket
#      is stamped with now_ms // bucket_ms; one whose stamp has slid out of the window counts zero
#      and is reset when its slot is reused, so recovery needs no timer. Degraded = at least
#      min_failures failures making at least failure_pct % of the window's events, or a running
#      429 cool-down, or a run of consecutive_failures failures with no success between them while
#      the last of them is in the window (Envoy's consecutive-5xx outlier detection: a provider
#      that went down or hangs is demoted at once, however many successes the window holds from
#      before). last_fail_stamp lets an endpoint with no recent failure skip the scan.
#   3. Order (SPEC §2.3). Named positions (provider.order) first, then the rest by the sort key, or
#      by default weighted random sampling without replacement with weight 1/price², run as an
#      exponential race (Efraimidis & Spirakis, "Weighted random sampling with a reservoir", 2006):
#      each candidate draws key = -ln(u)/w and ascending keys are such a sample, the first one
#      being candidate j with probability w_j / Σw. Free endpoints race among themselves first.
#      Stable endpoints always precede degraded ones; degraded ones in the default mode go by price
#      so that fallbacks onto them are deterministic. Among the unnamed ones of each health group,
#      those that meet the request's performance preferences (OpenRouter's preferred_max_latency
#      and preferred_min_throughput, compared with the EWMAs) are ranked before those that miss
#      them: deprioritised, never excluded. With allow_fallbacks false only the named positions
#      are candidates (or, when none is named, only the first endpoint of the order is returned).
#   4. PRNG. splitmix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number generators",
#      2014): integer-only, so the pure-Python twin _fastroute_py.py draws the same numbers and,
#      doing the same float operations in the same order, computes the same keys bit for bit.

# cython: autotestdict=False

cimport cython
from libc.math cimport INFINITY, log
from libc.stdint cimport INT64_MIN, int64_t, uint64_t
from libc.stdlib cimport calloc, free

from operator import index as _index

MAX_ENDPOINTS = MAX_N

REASON_NONE = R_NONE
REASON_PROVIDER = R_PROVIDER
REASON_DATA_COLLECTION = R_DATA_COLLECTION
REASON_ZDR = R_ZDR
REASON_QUANTIZATION = R_QUANTIZATION
REASON_MAX_PRICE = R_MAX_PRICE
REASON_CONTEXT = R_CONTEXT
REASON_PARAMETERS = R_PARAMETERS

SORT_DEFAULT = MODE_DEFAULT
SORT_PRICE = MODE_PRICE
SORT_THROUGHPUT = MODE_THROUGHPUT
SORT_LATENCY = MODE_LATENCY

FLAG_COLLECTS_DATA = F_COLLECTS_DATA
FLAG_ZDR = F_ZDR

# 2**48 micro-USD = $281M per 1M tokens: far above any real price, and it keeps prompt + completion
# and price² finite and well inside int64 and double range.
_PRICE_LIMIT = 1 << 48
_I64_MAX = (1 << 63) - 1
_U64_MAX = (1 << 64) - 1

cdef extern from *:
    """
    /* alpha*x + (1-alpha)*old with each product rounded on its own. A compiler may otherwise fuse
       them into one fma (GCC does by default where the CPU has it, e.g. aarch64), which would
       break bit-equality with the pure-Python twin. */
    static double edgeproxy_ewma(double alpha, double x, double one_minus, double old) {
        volatile double a = alpha * x;
        volatile double b = one_minus * old;
        return a + b;
    }
    """
    double edgeproxy_ewma(double alpha, double x, double one_minus, double old) noexcept nogil


def _int_arg(name, value, lo, hi):
    value = _index(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def _float_arg(name, value):
    value = float(value)
    if not 0.0 <= value < INFINITY:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


cdef inline bint _meets(Endpoint* e, double max_ttft_ms, double min_tps) noexcept:
    # A preference <= 0 (or NaN) is unset. An endpoint with no figure (0: neither declared nor
    # measured) does not meet a preference on it.
    if max_ttft_ms > 0.0 and not (0.0 < e.ttft <= max_ttft_ms):
        return False
    if min_tps > 0.0 and not e.tps >= min_tps:
        return False
    return True


cdef inline bint _before(int a, int b, int64_t* ka, double* kb, int64_t* kc) noexcept:
    # Lexicographic (ka, kb, kc, slot); slots are in ascending position order, so the last
    # component is the "ties by index" rule.
    if ka[a] != ka[b]:
        return ka[a] < ka[b]
    if kb[a] != kb[b]:
        return kb[a] < kb[b]
    if kc[a] != kc[b]:
        return kc[a] < kc[b]
    return a < b


@cython.final
@cython.auto_pickle(False)  # C pointers inside: a Router is rebuilt, never pickled
cdef class Router:
    """The route table of all models, with health windows, EWMAs and a seeded PRNG.

    Endpoints are global indices 0..n_endpoints-1; a model is a range start..end-1 of at most
    MAX_ENDPOINTS of them. Time is always an argument (now_ms >= 0, any monotonic millisecond
    clock); the router never reads a clock.
    """

    def __cinit__(self, n_endpoints, seed=0, window_buckets=30, bucket_ms=1000, min_failures=3,
                  failure_pct=25, ewma_alpha=0.3, consecutive_failures=5):
        cdef Py_ssize_t i
        n = _int_arg("n_endpoints", n_endpoints, 0, 1 << 24)
        w = _int_arg("window_buckets", window_buckets, 1, 1 << 16)
        b_ms = _int_arg("bucket_ms", bucket_ms, 1, _I64_MAX)
        min_f = _int_arg("min_failures", min_failures, 1, 1 << 32)
        pct = _int_arg("failure_pct", failure_pct, 0, 100)
        alpha = float(ewma_alpha)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"ewma_alpha must be in (0, 1], got {alpha}")
        run = _int_arg("consecutive_failures", consecutive_failures, 1, 1 << 32)
        self.rng = _index(seed) & _U64_MAX
        self.n = n
        self.window_buckets = w
        self.bucket_ms = b_ms
        self.min_failures = min_f
        self.failure_pct = pct
        self.consecutive_failures = run
        self.alpha = alpha
        self.one_minus_alpha = 1.0 - alpha
        self.reason = R_NONE
        # calloc(0) may return NULL: allocate at least one element.
        self.endpoints = <Endpoint*>calloc(n if n > 0 else 1, sizeof(Endpoint))
        self.buckets = <Bucket*>calloc(n * w if n > 0 else 1, sizeof(Bucket))
        if self.endpoints == NULL or self.buckets == NULL:
            raise MemoryError()
        for i in range(n):
            self.endpoints[i].last_fail_stamp = INT64_MIN
        for i in range(n * w):
            self.buckets[i].stamp = -1  # matches no real stamp (now_ms >= 0)

    def __init__(self, n_endpoints, seed=0, window_buckets=30, bucket_ms=1000, min_failures=3,
                 failure_pct=25, ewma_alpha=0.3, consecutive_failures=5):
        # All the work is done in __cinit__; this gives Python the constructor's signature.
        pass

    def __dealloc__(self):
        free(self.endpoints)
        free(self.buckets)

    cdef int _check_index(self, Py_ssize_t i) except -1:
        if not 0 <= i < self.n:
            raise IndexError(f"endpoint index {i} out of range [0, {self.n})")
        return 0

    cdef double _uniform(self) noexcept:
        # splitmix64 step, then the top 53 bits mapped onto (0, 1]: never 0, so log() is finite.
        cdef uint64_t z
        self.rng += 0x9E3779B97F4A7C15ULL
        z = self.rng
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
        z = z ^ (z >> 31)
        return <double>((z >> 11) + 1) * (1.0 / 9007199254740992.0)

    cdef Bucket* _bucket(self, Py_ssize_t i, int64_t now_ms) noexcept:
        cdef int64_t stamp = now_ms // self.bucket_ms
        cdef Bucket* b = &self.buckets[i * self.window_buckets + stamp % self.window_buckets]
        if b.stamp != stamp:  # the slot last held an older (or newer) bucket: reuse it
            b.stamp = stamp
            b.successes = 0
            b.failures = 0
        return b

    cdef void _count(self, Py_ssize_t i, int64_t now_ms, int64_t* successes,
                     int64_t* failures) noexcept:
        cdef int64_t now_stamp = now_ms // self.bucket_ms
        cdef int64_t oldest = now_stamp - self.window_buckets  # stamps <= oldest have slid out
        cdef Bucket* b = &self.buckets[i * self.window_buckets]
        cdef int64_t k, s = 0, f = 0
        for k in range(self.window_buckets):
            if oldest < b[k].stamp <= now_stamp:
                s += b[k].successes
                f += b[k].failures
        successes[0] = s
        failures[0] = f

    cdef bint _degraded(self, Py_ssize_t i, int64_t now_ms) noexcept:
        cdef Endpoint* e = &self.endpoints[i]
        cdef int64_t s, f
        if now_ms < e.cool_until:
            return True
        # No failure in the window: healthy without scanning (min_failures >= 1).
        if e.last_fail_stamp <= now_ms // self.bucket_ms - self.window_buckets:
            return False
        if e.fail_run >= self.consecutive_failures:
            return True
        self._count(i, now_ms, &s, &f)
        return f >= self.min_failures and f * 100 >= self.failure_pct * (s + f)

    cdef int _rank(self, Endpoint* ep, int* items, int count, int64_t mode, int* out) noexcept:
        # Writes items (positions, ascending) to out in the order of `mode`; returns count.
        cdef int64_t ka[MAX_N]
        cdef double kb[MAX_N]
        cdef int64_t kc[MAX_N]
        cdef int slot[MAX_N]
        cdef int j, h, cur
        cdef double price, weight
        cdef Endpoint* e
        for j in range(count):
            e = &ep[items[j]]
            slot[j] = j
            kc[j] = 0
            if mode == MODE_DEFAULT:
                if e.blended == 0:
                    ka[j] = 0
                    kb[j] = -log(self._uniform())
                else:
                    ka[j] = 1
                    price = <double>e.blended
                    weight = 1.0 / (price * price)
                    kb[j] = -log(self._uniform()) / weight
            elif mode == MODE_PRICE:
                ka[j] = e.blended
                kb[j] = 0.0
            elif mode == MODE_THROUGHPUT:
                ka[j] = 0 if e.tps > 0.0 else 1
                kb[j] = -e.tps if e.tps > 0.0 else 0.0
                kc[j] = e.blended
            else:
                ka[j] = 0 if e.ttft > 0.0 else 1
                kb[j] = e.ttft if e.ttft > 0.0 else 0.0
                kc[j] = e.blended
        for j in range(1, count):  # insertion sort: at most 64 items
            cur = slot[j]
            h = j
            while h > 0 and _before(cur, slot[h - 1], ka, kb, kc):
                slot[h] = slot[h - 1]
                h -= 1
            slot[h] = cur
        for j in range(count):
            out[j] = items[slot[j]]
        return count

    cdef int _rank_mask(self, Endpoint* ep, int m, uint64_t mask, int64_t mode,
                        int* out) noexcept:
        # The positions of mask (below m) ranked by `mode` into out; returns their count.
        cdef int items[MAX_N]
        cdef int p, count = 0
        for p in range(m):
            if (mask >> p) & 1:
                items[count] = p
                count += 1
        return self._rank(ep, items, count, mode, out)

    def set_endpoint(self, Py_ssize_t i, prompt_price, completion_price, request_price,
                     context_length, quant_id, params_mask, flags, declared_tps,
                     declared_ttft_ms):
        """Set the static data of endpoint i; declared speeds seed the EWMAs until measured.

        Prices are integers in micro-USD per 1M tokens (request_price: per request); quant_id is
        0..63 (0 = unknown); params_mask has a bit per supported request parameter; flags are
        FLAG_* bits. Values are validated (ValueError) before anything changes.
        """
        self._check_index(i)
        pp = _int_arg("prompt_price", prompt_price, 0, _PRICE_LIMIT)
        cp = _int_arg("completion_price", completion_price, 0, _PRICE_LIMIT)
        rp = _int_arg("request_price", request_price, 0, _PRICE_LIMIT)
        ctx = _int_arg("context_length", context_length, 0, _I64_MAX)
        q = _int_arg("quant_id", quant_id, 0, 63)
        pm = _int_arg("params_mask", params_mask, 0, _U64_MAX)
        fl = _int_arg("flags", flags, 0, _U64_MAX)
        tps = _float_arg("declared_tps", declared_tps)
        ttft = _float_arg("declared_ttft_ms", declared_ttft_ms)
        cdef Endpoint* e = &self.endpoints[i]
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

    def record_success(self, Py_ssize_t i, int64_t now_ms):
        """Count a successful attempt on endpoint i at now_ms; it ends a run of failures."""
        self._check_index(i)
        if now_ms < 0:
            raise ValueError("now_ms must be >= 0")
        self._bucket(i, now_ms).successes += 1
        self.endpoints[i].fail_run = 0

    def record_failure(self, Py_ssize_t i, int64_t now_ms):
        """Count a failed attempt (connection error, timeout, 5xx, 429) on endpoint i at now_ms."""
        self._check_index(i)
        if now_ms < 0:
            raise ValueError("now_ms must be >= 0")
        self._bucket(i, now_ms).failures += 1
        cdef int64_t stamp = now_ms // self.bucket_ms
        cdef Endpoint* e = &self.endpoints[i]
        if stamp > e.last_fail_stamp:
            e.last_fail_stamp = stamp
        e.fail_run += 1

    def cool_down(self, Py_ssize_t i, int64_t until_ms):
        """Degrade endpoint i until until_ms (a 429's Retry-After); a shorter one never cuts it."""
        self._check_index(i)
        if until_ms > self.endpoints[i].cool_until:
            self.endpoints[i].cool_until = until_ms

    def observe(self, Py_ssize_t i, double ttft_ms, double tokens_per_s):
        """Feed one completion's measured TTFT (ms) and tokens/s into the EWMAs of endpoint i.

        A value that is not a finite number > 0 means "not measured" and leaves its EWMA alone;
        the first measured value replaces the declared seed outright.
        """
        self._check_index(i)
        cdef Endpoint* e = &self.endpoints[i]
        if 0.0 < ttft_ms < INFINITY:
            if e.ttft_measured:
                e.ttft = edgeproxy_ewma(self.alpha, ttft_ms, self.one_minus_alpha, e.ttft)
            else:
                e.ttft = ttft_ms
                e.ttft_measured = True
        if 0.0 < tokens_per_s < INFINITY:
            if e.tps_measured:
                e.tps = edgeproxy_ewma(self.alpha, tokens_per_s, self.one_minus_alpha, e.tps)
            else:
                e.tps = tokens_per_s
                e.tps_measured = True

    def window(self, Py_ssize_t i, int64_t now_ms):
        """Return (successes, failures) of endpoint i in the window that ends at now_ms."""
        cdef int64_t s, f
        self._check_index(i)
        if now_ms < 0:
            raise ValueError("now_ms must be >= 0")
        self._count(i, now_ms, &s, &f)
        return (s, f)

    def is_degraded(self, Py_ssize_t i, int64_t now_ms):
        """Whether endpoint i is degraded at now_ms (bad window or cooling down)."""
        self._check_index(i)
        if now_ms < 0:
            raise ValueError("now_ms must be >= 0")
        return self._degraded(i, now_ms)

    def throughput(self, Py_ssize_t i):
        """EWMA tokens/s of endpoint i (the declared value until the first observation)."""
        self._check_index(i)
        return self.endpoints[i].tps

    def latency(self, Py_ssize_t i):
        """EWMA time to first token in ms of endpoint i (declared until the first observation)."""
        self._check_index(i)
        return self.endpoints[i].ttft

    def meets_preferences(self, Py_ssize_t i, double max_ttft_ms, double min_tps):
        """Whether endpoint i's EWMAs meet max_ttft_ms and min_tps (each <= 0: unset), as
        select() ranks it."""
        self._check_index(i)
        return _meets(&self.endpoints[i], max_ttft_ms, min_tps)

    @property
    def empty_reason(self):
        """REASON_* code of the filter that emptied the last select(); REASON_NONE otherwise."""
        return self.reason

    def select(self, Py_ssize_t start, Py_ssize_t end, int64_t now_ms, uint64_t allow_mask,
               bint deny_data_collection, bint require_zdr, uint64_t quant_mask,
               int64_t max_prompt_price, int64_t max_completion_price, int64_t need_tokens,
               uint64_t required_params, int64_t sort, object order, bint allow_fallbacks,
               double max_ttft_ms=0.0, double min_tps=0.0):
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
        cdef int named[MAX_N]
        cdef int out[MAX_N]
        cdef uint64_t keep[6]
        cdef uint64_t seen = 0, cand, bit, stable = 0, degraded, taken = 0, pref
        cdef int n_named = 0, m, p, j, k = 0
        cdef int64_t degraded_mode = MODE_PRICE if sort == MODE_DEFAULT else sort
        cdef int64_t pos
        cdef Endpoint* ep
        cdef Endpoint* e

        if not 0 <= start <= end <= self.n:
            raise IndexError(f"endpoint range [{start}, {end}) out of [0, {self.n})")
        if end - start > MAX_N:
            raise ValueError(f"a model has at most {MAX_N} endpoints, got {end - start}")
        if now_ms < 0:
            raise ValueError("now_ms must be >= 0")
        if not MODE_DEFAULT <= sort <= MODE_LATENCY:
            raise ValueError(f"unknown sort {sort}")
        m = <int>(end - start)
        # Copy provider.order once, dropping out-of-range and repeated positions.
        for x in order:
            pos = x
            if 0 <= pos < m and not (seen >> pos) & 1:
                seen |= (<uint64_t>1) << pos
                named[n_named] = <int>pos
                n_named += 1

        # 1. Filters, each as the mask of positions it keeps (SPEC §2.1).
        ep = self.endpoints + start
        cand = allow_mask if m == MAX_N else allow_mask & (((<uint64_t>1) << m) - 1)
        if not allow_fallbacks and n_named:
            cand &= seen  # "only the providers in order, or their error" (SPEC §2.5)
        if cand == 0:
            self.reason = R_PROVIDER
            return []
        for j in range(6):
            keep[j] = 0
        for p in range(m):
            e = &ep[p]
            bit = (<uint64_t>1) << p
            if not (deny_data_collection and e.flags & F_COLLECTS_DATA):
                keep[0] |= bit
            if not require_zdr or e.flags & F_ZDR:
                keep[1] |= bit
            if quant_mask == 0 or (quant_mask >> e.quant_id) & 1:
                keep[2] |= bit
            if ((max_prompt_price < 0 or e.prompt_price <= max_prompt_price)
                    and (max_completion_price < 0 or e.completion_price <= max_completion_price)):
                keep[3] |= bit
            if e.context_length >= need_tokens:
                keep[4] |= bit
            if (e.params_mask & required_params) == required_params:
                keep[5] |= bit
        for j in range(6):  # keep[j] reports R_DATA_COLLECTION + j
            cand &= keep[j]
            if cand == 0:
                self.reason = R_DATA_COLLECTION + j
                return []

        # 2. Health (SPEC §2.2).
        for p in range(m):
            if (cand >> p) & 1 and not self._degraded(start + p, now_ms):
                stable |= (<uint64_t>1) << p
        degraded = cand & ~stable

        # 3. Order (SPEC §2.3): named stable, other stable, named degraded, other degraded; the
        # others of each group that meet the performance preferences before those that miss them.
        pref = cand
        if max_ttft_ms > 0.0 or min_tps > 0.0:
            pref = 0
            for p in range(m):
                if (cand >> p) & 1 and _meets(&ep[p], max_ttft_ms, min_tps):
                    pref |= (<uint64_t>1) << p
        for j in range(n_named):
            p = named[j]
            if (stable >> p) & 1:
                out[k] = p
                k += 1
                taken |= (<uint64_t>1) << p
        k += self._rank_mask(ep, m, stable & ~taken & pref, sort, out + k)
        k += self._rank_mask(ep, m, stable & ~taken & ~pref, sort, out + k)
        for j in range(n_named):
            p = named[j]
            if (degraded >> p) & 1:
                out[k] = p
                k += 1
                taken |= (<uint64_t>1) << p
        k += self._rank_mask(ep, m, degraded & ~taken & pref, degraded_mode, out + k)
        k += self._rank_mask(ep, m, degraded & ~taken & ~pref, degraded_mode, out + k)

        self.reason = R_NONE
        if not allow_fallbacks and not n_named:
            k = 1  # cand is not empty, so out[0] exists
        return [start + out[j] for j in range(k)]
