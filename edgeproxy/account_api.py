"""The account surface of the HTTP API (SPEC §1.1): generation stats, credits, keys, BYOK.

`/v1/keys` and top-ups need the admin key (from the environment); everything else answers for
the caller's own account only.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
import orjson
from aiohttp import web

from .billing.byok import SealError, seal
from .billing.fees import MICRO, parse_usd
from .billing.ledger import GenerationRecord, KeyRow
from .billing.pricing import usd_str
from .billing.service import Billing
from .errors import BadRequest, Forbidden, NoEndpoint, Unavailable
from .handlers import GATEWAY, json_response, read_body

__all__ = ["routes"]

_LEDGER_WAIT_S = 5.0  # /key reads the ledger: past this it answers 503, not a hung request


def _usd(micro: int | None) -> Any:
    if micro is None:
        return None
    return orjson.Fragment(usd_str(micro * MICRO).encode())


def _decode(body: bytes, typ: type) -> Any:
    try:
        return msgspec.json.decode(body, type=typ)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed JSON body: {exc}") from None


def _amount(text: str | None, what: str, allow_zero: bool = False) -> int | None:
    if text is None:
        return None
    try:
        micro = parse_usd(text)
    except ValueError as exc:
        raise BadRequest(f"{what}: {exc}") from None
    if micro < 0 or (micro == 0 and not allow_zero):
        raise BadRequest(f"{what} must be {'>= 0' if allow_zero else 'positive'}")
    return micro


# -- the caller's own account ---------------------------------------------------------------------


async def generation(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    caller = await gw.billing.authenticate(request.headers.get("Authorization"))
    gen_id = request.query.get("id", "")
    if not gen_id.startswith("gen-"):
        raise BadRequest("query parameter `id` must be a generation id (gen-…)")
    await gw.billing.flush()  # a record may still be queued for the writer
    rec = await gw.billing.ledger.generation(gen_id)
    if rec is None or (rec.account_id != caller.account.id
                       and not gw.billing.is_admin(request.headers.get("Authorization"))):
        raise NoEndpoint(f"no generation {gen_id!r} for this account")
    return json_response({"data": _generation(rec)})


def _generation(g: GenerationRecord) -> dict[str, Any]:
    """One generation in OpenRouter's schema (its OpenAPI `GenerationResponse`), our own fields
    beside. What the gateway does not record carries the schema's null (or "" for `origin`,
    which may not be null)."""
    cost = _usd(g.cost_micro)
    return {
        "id": g.id,
        "upstream_id": g.upstream_id,
        "model": g.model,
        "provider_name": g.provider,
        "total_cost": cost,
        "usage": cost,  # what the account was charged, as `total_cost`
        "upstream_inference_cost": _usd(g.upstream_cost_micro) if g.is_byok else None,
        "cache_discount": _usd(g.cache_discount_micro)
        if g.cached_tokens or g.cache_write_tokens else None,
        "created_at": datetime.fromtimestamp(g.created, UTC).isoformat(),
        "tokens_prompt": g.prompt_tokens,
        "tokens_completion": g.completion_tokens,
        "native_tokens_prompt": g.prompt_tokens,
        "native_tokens_completion": g.completion_tokens,
        "native_tokens_reasoning": g.reasoning_tokens,
        "native_tokens_cached": g.cached_tokens,
        "native_tokens_completion_images": None,
        "usage_estimated": g.usage_estimated,
        "latency": g.latency_ms,
        "time_to_first_token": g.ttft_ms,
        "generation_time": g.generation_ms,
        "moderation_latency": None,  # no moderation pass
        "streamed": g.streamed,
        "cancelled": g.cancelled,
        "finish_reason": g.finish_reason,
        "native_finish_reason": g.native_finish_reason,
        "app": g.app,
        "app_id": None,
        "origin": "",
        "http_referer": None,
        "user_agent": None,
        "external_user": None,
        "is_byok": g.is_byok,
        "route": g.route,
        # An auto-routed request names its rule (`model: "auto"`, SPEC §7).
        "router": g.route if g.route and g.route.startswith("auto:") else None,
        "api_type": None,
        "data_region": "global",  # no regional routing
        "provider_responses": None,
        "service_tier": None,
        "preset_id": None,
        "workspace_id": None,
        "web_search_engine": None,
        "num_fetches": None,
        "num_search_results": None,
        "num_media_prompt": None,
        "num_media_completion": None,
        "num_input_audio_prompt": None,
    }


async def credits(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    caller = await gw.billing.authenticate(request.headers.get("Authorization"))
    acct = caller.account
    return json_response({"data": {"total_credits": _usd(acct.credits),
                                   "total_usage": _usd(acct.usage + acct.pending)}})


async def key_info(request: web.Request) -> web.Response:
    """The caller's key in OpenRouter's schema (its OpenAPI `GetCurrentKey`): spend all time and
    in this UTC day, week (from Monday) and month, from the ledger. BYOK usage is what the
    account's own provider keys were charged at the endpoints' prices; a key's limit counts only
    what the gateway charges (`include_byok_in_limit: false`)."""
    gw = request.app[GATEWAY]
    caller = await gw.billing.authenticate(request.headers.get("Authorization"))
    k = caller.key
    acct = caller.account
    usage = k.usage_micro + caller.key_pending
    cfg = gw.cfg.billing
    now = time.time()
    try:
        async with asyncio.timeout(_LEDGER_WAIT_S):
            await gw.billing.flush()  # this node's records still queued for the writer
            periods, byok = await gw.billing.ledger.key_usage(acct.id, k.id,
                                                              _period_starts(now))
    except Exception:
        raise Unavailable("the ledger is unreachable, so this key's spend cannot be read now; "
                          "retry shortly", retry_after=1) from None
    (day, byok_day), (week, byok_week), (month, byok_month) = periods
    # SPEC §5.5: the account's free-model requests today (UTC), against its tier's limit.
    paid = acct.purchased >= int(cfg.free_paid_threshold_usd * MICRO)
    free_limit = cfg.free_per_day_paid if paid else cfg.free_per_day
    free_used = min(free_limit, await _free_today(gw.billing, acct.id, now))
    budget = None
    if k.limit_micro is not None:  # the key's own limit is its one budget layer
        budget = {"scope": "key_limit", "limit_usd": _usd(k.limit_micro), "spend_usd": _usd(usage),
                  "remaining_usd": _usd(max(0, k.limit_micro - usage)), "include_byok": False,
                  "reset_interval": None, "resets_at": None, "budget_id": None,
                  "guardrail_id": None}
    return json_response({"data": {
        "label": k.label,
        "usage": _usd(usage),
        "usage_daily": _usd(day),
        "usage_weekly": _usd(week),
        "usage_monthly": _usd(month),
        "byok_usage": _usd(byok),
        "byok_usage_daily": _usd(byok_day),
        "byok_usage_weekly": _usd(byok_week),
        "byok_usage_monthly": _usd(byok_month),
        "include_byok_in_limit": False,
        "limit": _usd(k.limit_micro),
        "limit_remaining": _usd(max(0, k.limit_micro - usage)) if k.limit_micro is not None
        else None,
        "limit_reset": None,  # a limit never resets by itself
        "is_free_tier": acct.purchased == 0,
        "is_management_key": False,  # (administration takes the admin key, never an API key)
        "is_provisioning_key": False,
        "rate_limit": {"requests": cfg.free_per_minute, "interval": "1m",
                       "note": "applies to free models"},
        "creator_user_id": None,
        "organization_id": None,
        "workspace_id": None,
        "allowed_data_regions": ["global"],  # no regional routing
        "budgets": [budget] if budget else [],
        "effective_budget": budget,
        "free_model_daily_requests": {"limit": free_limit, "used": free_used,
                                      "remaining": free_limit - free_used},
    }})


def _period_starts(now: float) -> list[int]:
    """Unix seconds at which this UTC day, week (Monday to Sunday) and month began."""
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return [int(day.timestamp()), int((day - timedelta(days=day.weekday())).timestamp()),
            int(day.replace(day=1).timestamp())]


async def _free_today(billing: Billing, account_id: str, now: float) -> int:
    """The account's free-model requests in this UTC day, as its daily limit counts them
    (Billing.check_free: one counter per account and day, shared through Redis when it is up)."""
    key, day_s = "free:day:" + account_id, 86400
    if billing.shared is not None:
        n = await billing.shared.count(key, day_s, now)
        if n is not None:
            return n
    return billing.counters.count(key, day_s, now)


class ByokBody(msgspec.Struct, forbid_unknown_fields=True):
    provider: str
    api_key: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


async def put_byok(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    caller = await gw.billing.authenticate(request.headers.get("Authorization"))
    b: ByokBody = _decode(await read_body(request, gw), ByokBody)
    if b.provider not in gw.cfg.providers:
        raise BadRequest(f"unknown provider {b.provider!r}")
    secret = gw.cfg.billing.byok_secret()
    if not secret:
        raise Forbidden(f"BYOK is not enabled: set {gw.cfg.billing.byok_secret_env} on the gateway")
    try:
        sealed = seal(b.api_key, secret, caller.account.id, b.provider)
    except SealError as exc:
        raise Forbidden(str(exc)) from None
    await gw.billing.ledger.put_byok(caller.account.id, b.provider, sealed)
    # This account's keys only: other nodes read the row at their next refresh.
    await gw.billing.byok_stored(caller.account.id, b.provider, b.api_key, sealed)
    return json_response({"data": {"provider": b.provider, "stored": True}})


# -- administration (admin key) -------------------------------------------------------------------


def _admin(request: web.Request) -> None:
    gw = request.app[GATEWAY]
    if not gw.billing.is_admin(request.headers.get("Authorization")):
        raise Forbidden(
            "this endpoint needs the admin key (set "
            f"{gw.cfg.billing.admin_key_env} on the gateway and send it as the Bearer token)")


def _key_json(k: KeyRow) -> dict[str, Any]:
    return {"id": k.id, "account": k.account_id, "label": k.label, "prefix": k.prefix,
            "limit": _usd(k.limit_micro), "usage": _usd(k.usage_micro), "disabled": k.disabled,
            "created_at": k.created}


class NewKey(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    account: str | None = None
    credits: str | None = None  # USD as a decimal string, bought with `method`
    method: Literal["card", "crypto"] = "card"
    limit: str | None = None


class KeyPatch(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    disabled: bool | None = None
    limit: str | None = None


class TopUp(msgspec.Struct, forbid_unknown_fields=True):
    account: str
    amount: str
    method: Literal["card", "crypto"] = "card"


async def list_keys(request: web.Request) -> web.Response:
    _admin(request)
    ledger = request.app[GATEWAY].billing.ledger
    keys = await ledger.keys(request.query.get("account"))
    return json_response({"data": [_key_json(k) for k in keys]})


async def create_key(request: web.Request) -> web.Response:
    _admin(request)
    gw = request.app[GATEWAY]
    b: NewKey = _decode(await read_body(request, gw), NewKey)
    credits_micro = _amount(b.credits, "credits")
    limit = _amount(b.limit, "limit", allow_zero=True)
    ledger = gw.billing.ledger
    if b.account is None:
        account_id = (await ledger.create_account(b.name)).id
    else:
        if await ledger.account(b.account) is None:
            raise NoEndpoint(f"unknown account {b.account!r}")
        account_id = b.account
    fee = 0
    if credits_micro:
        _, fee = await ledger.add_credits(account_id, credits_micro, b.method)
    key, row = await ledger.create_key(account_id, b.name, limit)
    await gw.billing.refresh()
    return json_response({"data": _key_json(row), "key": key, "fee": _usd(fee)}, status=201)


async def patch_key(request: web.Request) -> web.Response:
    _admin(request)
    gw = request.app[GATEWAY]
    b: KeyPatch = _decode(await read_body(request, gw), KeyPatch)
    fields: dict[str, Any] = {}
    if b.name is not None:
        fields["label"] = b.name
    if b.disabled is not None:
        fields["disabled"] = b.disabled
    if b.limit is not None:
        fields["limit_micro"] = _amount(b.limit, "limit", allow_zero=True)
    row = await gw.billing.ledger.update_key(request.match_info["key_id"], **fields)
    await gw.billing.refresh()
    return json_response({"data": _key_json(row)})


async def delete_key(request: web.Request) -> web.Response:
    _admin(request)
    gw = request.app[GATEWAY]
    await gw.billing.ledger.delete_key(request.match_info["key_id"])
    await gw.billing.refresh()
    return json_response({"data": {"deleted": True}})


async def top_up(request: web.Request) -> web.Response:
    _admin(request)
    gw = request.app[GATEWAY]
    b: TopUp = _decode(await read_body(request, gw), TopUp)
    amount = _amount(b.amount, "amount")
    assert amount is not None
    acct, fee = await gw.billing.ledger.add_credits(b.account, amount, b.method)
    await gw.billing.refresh()
    return json_response({"data": {"account": acct.id, "credits": _usd(amount), "fee": _usd(fee),
                                   "charged": _usd(amount + fee),
                                   "total_credits": _usd(acct.credits_micro)}})


def routes(prefix: str) -> list[web.RouteDef]:
    return [
        web.get(prefix + "/generation", generation),
        web.get(prefix + "/credits", credits),
        web.post(prefix + "/credits", top_up),
        web.get(prefix + "/key", key_info),
        web.post(prefix + "/byok", put_byok),
        web.get(prefix + "/keys", list_keys),
        web.post(prefix + "/keys", create_key),
        web.patch(prefix + "/keys/{key_id}", patch_key),
        web.delete(prefix + "/keys/{key_id}", delete_key),
    ]
