"""Typed view of the compiled routing hot path (``_fastroute.pyx``); see SPEC §2.

Integer arguments are C integers: int64 (prices, times, token counts, indices) or uint64 (masks);
one that does not fit raises OverflowError. ``_fastroute_py`` has the same API and results.
"""

from typing import Final, final

MAX_ENDPOINTS: Final[int]

REASON_NONE: Final[int]
REASON_PROVIDER: Final[int]
REASON_DATA_COLLECTION: Final[int]
REASON_ZDR: Final[int]
REASON_QUANTIZATION: Final[int]
REASON_MAX_PRICE: Final[int]
REASON_CONTEXT: Final[int]
REASON_PARAMETERS: Final[int]

SORT_DEFAULT: Final[int]
SORT_PRICE: Final[int]
SORT_THROUGHPUT: Final[int]
SORT_LATENCY: Final[int]

FLAG_COLLECTS_DATA: Final[int]
FLAG_ZDR: Final[int]

@final
class Router:
    """The route table of all models, with health windows, EWMAs and a seeded PRNG."""

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
    ) -> None: ...
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
    ) -> None: ...
    def record_success(self, i: int, now_ms: int) -> None: ...
    def record_failure(self, i: int, now_ms: int) -> None: ...
    def cool_down(self, i: int, until_ms: int) -> None: ...
    def observe(self, i: int, ttft_ms: float, tokens_per_s: float) -> None: ...
    def window(self, i: int, now_ms: int) -> tuple[int, int]: ...
    def is_degraded(self, i: int, now_ms: int) -> bool: ...
    def throughput(self, i: int) -> float: ...
    def latency(self, i: int) -> float: ...
    def meets_preferences(self, i: int, max_ttft_ms: float, min_tps: float) -> bool: ...
    @property
    def empty_reason(self) -> int: ...
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
    ) -> list[int]: ...
