"""The account surface of the HTTP API (SPEC §1.1): generation stats, credits, keys, BYOK.

`/v1/keys` and top-ups need the admin key (from the environment); everything else answers for
the caller's own account only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import orjson
from aiohttp import web

from .billing.byok import SealError, seal
from .billing.fees import MICRO, parse_usd
from .billing.ledger import GenerationRecord, KeyRow
from .billing.pricing import usd_str
from .errors import BadRequest, Forbidden, NoEndpoint
from .handlers import GATEWAY, json_response, read_body

__all__ = ["routes"]


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
    return {
        "id": g.id,
        "model": g.model,
        "provider_name": g.provider,
        "total_cost": _usd(g.cost_micro),
        "created_at": g.created,
        "tokens_prompt": g.prompt_tokens,
        "tokens_completion": g.completion_tokens,
        "native_tokens_prompt": g.prompt_tokens,
        "native_tokens_completion": g.completion_tokens,
        "native_tokens_reasoning": g.reasoning_tokens,
        "native_tokens_cached": g.cached_tokens,
        "usage_estimated": g.usage_estimated,
        "latency": g.latency_ms,
        "time_to_first_token": g.ttft_ms,
        "generation_time": g.generation_ms,
        "streamed": g.streamed,
        "cancelled": g.cancelled,
        "finish_reason": g.finish_reason,
        "native_finish_reason": g.native_finish_reason,
        "app": g.app,
        "is_byok": g.is_byok,
        "route": g.route,
    }


async def credits(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    caller = await gw.billing.authenticate(request.headers.get("Authorization"))
    acct = caller.account
    return json_response({"data": {"total_credits": _usd(acct.credits),
                                   "total_usage": _usd(acct.usage + acct.pending)}})


async def key_info(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    caller = await gw.billing.authenticate(request.headers.get("Authorization"))
    k = caller.key
    usage = k.usage_micro + caller.key_pending
    cfg = gw.cfg.billing
    return json_response({"data": {
        "label": k.label,
        "usage": _usd(usage),
        "limit": _usd(k.limit_micro),
        "limit_remaining": _usd(max(0, k.limit_micro - usage)) if k.limit_micro is not None
        else None,
        "is_free_tier": caller.account.purchased == 0,
        "rate_limit": {"requests": cfg.free_per_minute, "interval": "1m",
                       "note": "applies to free models"},
    }})


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
        sealed = seal(b.api_key, secret)
    except SealError as exc:
        raise Forbidden(str(exc)) from None
    await gw.billing.ledger.put_byok(caller.account.id, b.provider, sealed)
    await gw.billing.refresh()
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
