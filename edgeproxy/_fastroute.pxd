# C-level declarations of the route table. The algorithm is described in _fastroute.pyx;
# the typed Python view is _fastroute.pyi.

cimport cython
from libc.stdint cimport int64_t, uint64_t


cdef enum:
    MAX_N = 64                   # endpoints per model range: one bit each in a uint64_t mask
    F_COLLECTS_DATA = 1
    F_ZDR = 2
    MODE_DEFAULT = 0
    MODE_PRICE = 1
    MODE_THROUGHPUT = 2
    MODE_LATENCY = 3
    R_NONE = 0                   # empty_reason codes, in filter order
    R_PROVIDER = 1
    R_DATA_COLLECTION = 2
    R_ZDR = 3
    R_QUANTIZATION = 4
    R_MAX_PRICE = 5
    R_CONTEXT = 6
    R_PARAMETERS = 7


ctypedef struct Endpoint:
    int64_t prompt_price         # micro-USD per 1M tokens
    int64_t completion_price     # micro-USD per 1M tokens
    int64_t request_price        # micro-USD per request
    int64_t blended              # prompt_price + completion_price: the price routing compares
    int64_t context_length
    int64_t quant_id             # 0..63, a bit index into a request's quant_mask
    uint64_t params_mask
    uint64_t flags               # F_* bits
    double tps                   # EWMA tokens/s; the declared value until the first observation
    double ttft                  # EWMA time to first token in ms; idem
    bint tps_measured
    bint ttft_measured
    int64_t cool_until           # degraded while now_ms < cool_until (429 Retry-After)
    int64_t last_fail_stamp      # newest bucket stamp that ever counted a failure
    int64_t fail_run             # failures since the last success


ctypedef struct Bucket:
    int64_t stamp                # now_ms // bucket_ms of the events counted here
    int64_t successes
    int64_t failures


@cython.final
cdef class Router:
    cdef Py_ssize_t n
    cdef Endpoint* endpoints     # n of them
    cdef Bucket* buckets         # n * window_buckets, endpoint-major
    cdef int64_t window_buckets
    cdef int64_t bucket_ms
    cdef int64_t min_failures
    cdef int64_t failure_pct
    cdef int64_t consecutive_failures  # a run this long degrades (while its last is in the window)
    cdef double alpha
    cdef double one_minus_alpha
    cdef uint64_t rng            # splitmix64 state
    cdef int reason              # empty_reason of the last select()

    cdef int _check_index(self, Py_ssize_t i) except -1
    cdef double _uniform(self) noexcept
    cdef Bucket* _bucket(self, Py_ssize_t i, int64_t now_ms) noexcept
    cdef void _count(self, Py_ssize_t i, int64_t now_ms, int64_t* successes,
                     int64_t* failures) noexcept
    cdef bint _degraded(self, Py_ssize_t i, int64_t now_ms) noexcept
    cdef int _rank(self, Endpoint* ep, int* items, int count, int64_t mode, int* out) noexcept
    cdef int _rank_mask(self, Endpoint* ep, int m, uint64_t mask, int64_t mode,
                        int* out) noexcept
