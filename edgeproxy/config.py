"""The configuration file (SPEC §1.3): TOML decoded into typed msgspec Structs.

Every problem with a file becomes one ConfigError whose message starts with the key path
(`providers.deepinfra.base_url: expected a URL`), so `serve` can refuse it in one line. Secrets are
never in the file: a provider names the environment variable that holds its key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from decimal import Decimal
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from .autorouter import AutoPolicy
from .errors import ConfigError

__all__ = [
    "BillingConfig",
    "CatalogConfig",
    "Config",
    "EndpointConfig",
    "ModelConfig",
    "ProviderConfig",
    "RoutingConfig",
    "ServerConfig",
    "StorageConfig",
    "load",
    "loads",
    "parse",
]

Price = Decimal  # checked to be >= 0 in _check: msgspec bounds do not apply to Decimal
Positive = Annotated[int, msgspec.Meta(gt=0)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]

MIB = 1024 * 1024


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    listen: str = "127.0.0.1:8080"
    workers: Positive = 1
    # "none": every request belongs to one local account; only allowed on loopback (SPEC §1.1).
    auth: Literal["keys", "none"] = "keys"
    max_body_bytes: Positive = 32 * MIB
    max_messages: Positive = 10_000
    # Interval of the `: EDGEPROXY PROCESSING` SSE comments while no upstream byte has come (SPEC §4).
    keepalive_s: Seconds = 3.0
    # Total time a request may take across all its attempts before it fails with 408.
    request_timeout_s: Seconds = 600.0
    # Slow clients (edgeproxy.listener): a request head must be complete this long after its
    # first byte, and a body may pause this long between two reads; else the connection closes.
    header_timeout_s: Seconds = 10.0
    body_timeout_s: Seconds = 30.0
    # Client connections served at once; 0: from the file-descriptor limit (RLIMIT_NOFILE), half
    # of it less headroom, since each may hold an upstream socket too. A larger value is capped.
    max_connections: Annotated[int, msgspec.Meta(ge=0)] = 0
    access_log: bool = False

    @property
    def host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_listen(self.listen)[1]


class StorageConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    ledger: str = "sqlite:///./edgeproxy.db"
    state: str = "memory://"
    # The directory of the ledger journal (billing.journal): answered generations not yet in the
    # ledger, replayed at start after a crash. Empty: beside a SQLite ledger (<file>.journal),
    # else ./edgeproxy-journal.
    journal: str = ""


class ProviderConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    base_url: str
    protocol: Literal["openai", "openai-responses", "anthropic", "gemini"] = "openai"
    api_key_env: str | None = None
    data_collection: Literal["allow", "deny"] = "allow"
    zdr: bool = False
    connect_timeout_s: Seconds = 5.0
    # Time allowed for the response head; the stream's idle gaps are bounded by idle_timeout_s.
    first_byte_timeout_s: Seconds = 120.0
    idle_timeout_s: Seconds = 120.0
    max_connections: Positive = 256
    headers: dict[str, str] = {}

    def api_key(self) -> str:
        if not self.api_key_env:
            return ""
        return os.environ.get(self.api_key_env, "")


class EndpointConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    provider: str
    model: str
    prompt: Price = Decimal(0)  # USD per 1M prompt tokens
    completion: Price = Decimal(0)  # USD per 1M completion tokens
    request: Price = Decimal(0)  # USD per request
    image: Price = Decimal(0)  # USD per input image
    # USD per 1M prompt tokens read from / written to the provider's prompt cache (SPEC §5.3).
    # Unset: the provider bills them as ordinary prompt tokens (no discount, no surcharge), which
    # is what a provider without cache pricing does, so they cost the `prompt` price.
    cache_read: Price | None = None
    cache_write: Price | None = None
    quantization: str = "unknown"
    context_length: Positive | None = None  # defaults to the model's
    max_output: Positive | None = None
    # Parameters this endpoint honours; None means the model's list.
    supported_parameters: list[str] | None = None
    # Declared speed, used only until the router has measured the endpoint (SPEC §2.4).
    throughput: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    latency_ms: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # Whether the model's author allows training other models on its text output, what the
    # request's `provider.enforce_distillable_text` keeps; None: the model's `distillable`.
    distillable: bool | None = None


DEFAULT_PARAMETERS = [
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "tools",
    "tool_choice",
    "response_format",
    "structured_outputs",
]


class ModelConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    context_length: Positive
    endpoints: list[EndpointConfig]
    name: str | None = None
    created: int = 0
    description: str = ""
    tokenizer: str = "Other"
    input_modalities: list[str] = msgspec.field(default_factory=lambda: ["text"])
    output_modalities: list[str] = msgspec.field(default_factory=lambda: ["text"])
    supported_parameters: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_PARAMETERS))
    max_output: Positive = 16_384
    enabled: bool = True
    # The author allows training other models on its text output (OpenRouter's "distillable",
    # `provider.enforce_distillable_text`). Off unless its license or terms say so, as OpenRouter
    # marks only models "where the author has explicitly allowed text distillation"
    # (openrouter.ai/docs/cookbook/evaluate-and-optimize/distillation).
    distillable: bool = False


class RoutingConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    window_s: Positive = 30
    bucket_ms: Positive = 1000
    min_failures: Positive = 3
    failure_pct: Annotated[int, msgspec.Meta(ge=1, le=100)] = 25
    ewma_alpha: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.3
    seed: int | None = None
    # This many failures in a row (no success between them) degrade an endpoint at once.
    consecutive_failures: Positive = 5
    # A hung provider: an attempt still without its first byte after hung_factor × the endpoint's
    # time-to-first-token EWMA (never under hung_floor_s; hung_default_s while no TTFT is known;
    # a whole answer adds its expected generation time) counts as one failure, and falls back to
    # the next endpoint when that one is stable.
    hung_factor: Annotated[float, msgspec.Meta(ge=1)] = 4.0
    hung_floor_s: Seconds = 3.0
    hung_default_s: Seconds = 30.0
    # Sticky routing (SPEC §2.6): a conversation stays on the endpoint that served it this long
    # after its last use; 0 turns it off.
    sticky_s: Annotated[int, msgspec.Meta(ge=0)] = 300


class BillingConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Secrets come from the environment only: these name the variables.
    admin_key_env: str = "EDGEPROXY_ADMIN_KEY"
    byok_secret_env: str = "EDGEPROXY_BYOK_SECRET"
    # BYOK: requests per calendar month without the 5 % fee (SPEC §5.4); optionally an allowance
    # of list-price spend instead (USD), which is how OpenRouter counts it today.
    byok_free_requests: Annotated[int, msgspec.Meta(ge=0)] = 1_000_000
    byok_free_spend_usd: Decimal | None = None
    # Free models (SPEC §5.5).
    free_per_minute: Positive = 20
    free_per_day: Positive = 50
    free_per_day_paid: Positive = 1000
    free_paid_threshold_usd: Decimal = Decimal(10)
    # The ledger writer: a batch goes out when it is this big or this old.
    flush_interval_ms: Positive = 50
    flush_batch: Positive = 1000
    # How often balances, keys and limits are re-read from the ledger (other processes write it).
    refresh_s: Seconds = 1.0
    local_account: str = "local"
    # Shared state: the most a node leases of an account's credits at once (it takes at most a
    # quarter of what is free), and how long an unused slice stays before it goes back.
    lease_usd: Decimal = Decimal(1)
    lease_idle_s: Seconds = 2.0

    def admin_key(self) -> str:
        return os.environ.get(self.admin_key_env, "")

    def byok_secret(self) -> str:
        return os.environ.get(self.byok_secret_env, "")


class CatalogConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # The built-in catalog (SPEC §6) is merged under the file's own models and providers;
    # `builtin = false` leaves only what the file names.
    builtin: bool = True


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    server: ServerConfig = ServerConfig()
    billing: BillingConfig = BillingConfig()
    catalog: CatalogConfig = CatalogConfig()
    auto: AutoPolicy = msgspec.field(default_factory=AutoPolicy)
    storage: StorageConfig = StorageConfig()
    routing: RoutingConfig = RoutingConfig()
    providers: dict[str, ProviderConfig] = {}
    models: dict[str, ModelConfig] = {}


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PATH_TAIL = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]*)`")


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError("expected HOST:PORT")
    host = host.strip("[]")
    p = int(port)
    if not 0 <= p <= 65535:
        raise ValueError("port out of range")
    return host, p


def _path(raw: str) -> str:
    # msgspec says `$.providers.x.base_url` / `$.models["a/b"].endpoints[0]`; users write TOML keys.
    return raw.lstrip(".").replace('["', ".").replace('"]', "")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _convert(data: Any, typ: type, prefix: str) -> Any:
    try:
        return msgspec.convert(data, typ)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        m = _PATH_TAIL.search(msg)
        path = _path(m.group("path")) if m else ""
        reason = msg[: m.start()] if m else msg
        unknown = _UNKNOWN.match(reason)
        if unknown:
            path = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
            reason = "unknown key"
        else:
            reason = reason[0].lower() + reason[1:]
        full = ".".join(p for p in (prefix, path) if p)
        raise ConfigError(full, reason) from None


def parse(data: dict[str, Any]) -> Config:
    """Validate a decoded TOML document; raise ConfigError naming the key path."""
    # The named tables are converted one by one so that an error can name the provider or model:
    # msgspec reports dict keys as `[...]`.
    tables: dict[str, Any] = {}
    for section, typ in (("providers", ProviderConfig), ("models", ModelConfig)):
        raw = data.get(section, {})
        if not isinstance(raw, dict):
            raise ConfigError(section, "expected a table")
        tables[section] = {
            key: _convert(value, typ, f"{section}.{key}") for key, value in raw.items()
        }
    rest = {k: v for k, v in data.items() if k not in tables}
    cfg = _convert(rest, Config, "")
    cfg = msgspec.structs.replace(cfg, **tables)
    _check(cfg)
    return cfg


def _check(cfg: Config) -> None:
    try:
        host, _ = _split_listen(cfg.server.listen)
    except ValueError as exc:
        raise ConfigError("server.listen", str(exc)) from None
    if cfg.server.auth == "none" and not is_loopback(host):
        raise ConfigError(
            "server.auth",
            '"none" is only allowed when the gateway listens on loopback (127.0.0.1, ::1)',
        )
    for scheme_key in ("ledger", "state"):
        url = getattr(cfg.storage, scheme_key)
        scheme = url.split("://", 1)[0] if "://" in url else ""
        allowed = {"ledger": ("sqlite", "postgresql", "postgres"), "state": ("memory", "redis")}
        if scheme not in allowed[scheme_key]:
            raise ConfigError(
                f"storage.{scheme_key}",
                f"expected a URL with scheme {' or '.join(allowed[scheme_key])}://",
            )
        if scheme != "sqlite":  # (a path, `sqlite://:memory:` included, has no port)
            try:
                _ = urlsplit(url).port  # a bad one would fail in the driver, as a traceback
            except ValueError as exc:
                raise ConfigError(f"storage.{scheme_key}", str(exc)) from None
    for name, prov in cfg.providers.items():
        parts = urlsplit(prov.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"providers.{name}.base_url", "expected a URL")
        if prov.api_key_env is not None and not _ENV_NAME.match(prov.api_key_env):
            raise ConfigError(
                f"providers.{name}.api_key_env", "expected an environment variable name"
            )
    for mid, model in cfg.models.items():
        if not model.endpoints:
            raise ConfigError(f"models.{mid}.endpoints", "expected at least one endpoint")
        if len(model.endpoints) > 64:
            raise ConfigError(f"models.{mid}.endpoints", "at most 64 endpoints per model")
        for i, ep in enumerate(model.endpoints):
            where = f"models.{mid}.endpoints[{i}]"
            if ep.provider not in cfg.providers:
                raise ConfigError(f"{where}.provider", f"unknown provider {ep.provider!r}")
            for field in ("prompt", "completion", "request", "image", "cache_read", "cache_write"):
                value = getattr(ep, field)
                if value is not None and (not value.is_finite() or value < 0):
                    raise ConfigError(f"{where}.{field}", "expected a price >= 0 (USD)")


def loads(text: str, environ: dict[str, str] | None = None) -> Config:
    """A configuration file's text -> Config, with the built-in catalog merged in (unless
    `[catalog] builtin = false`) and catalog endpoints whose provider has no key left out."""
    from . import catalog

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"not valid TOML: {exc}") from None
    user_models = set(data.get("models", {})) if isinstance(data.get("models"), dict) else set()
    merged = catalog.merge(catalog.builtin_document(), data)
    # The file's own endpoints stay whatever their keys; only the catalog's are pruned.
    kept = catalog.usable(merged, environ)
    models = dict(kept.get("models", {}))
    for mid in user_models:
        if mid in merged.get("models", {}):
            models[mid] = merged["models"][mid]
    kept["models"] = models
    kept["providers"] = merged.get("providers", {})
    return parse(kept)


def load(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror}") from None
    return loads(text)
