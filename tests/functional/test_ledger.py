"""The ledger on both stores: the same schema and the same answers on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import msgspec
import pytest

from edgeproxy.billing.ledger import GenerationRecord, Ledger, hash_key
from edgeproxy.billing.store import MIGRATIONS, open_driver
from edgeproxy.errors import BadRequest, NoEndpoint
from tests.conftest import LoopThread, Stack, config


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    return request.getfixturevalue("pg_url")


def record(gen_id: str, account: str, key: str, cost: int) -> GenerationRecord:
    return GenerationRecord(gen_id, account, key, "m/x", "acme", 10, 5, 2, 3, cost, False, False,
                            120, 30, 90, True, False, "stop", "end_turn", "app", "default",
                            int(time.time()))


def test_ledger_roundtrip(loop_thread: LoopThread, ledger_url: str) -> None:
    async def go() -> None:
        ledger = Ledger(open_driver(ledger_url))
        await ledger.open()
        try:
            assert await ledger.db.migrate() == len(MIGRATIONS)  # idempotent
            acct = await ledger.create_account("alice")
            acct, fee = await ledger.add_credits(acct.id, 100_000_000, "card")
            assert fee == 5_500_000 and acct.credits_micro == 100_000_000
            key, row = await ledger.create_key(acct.id, "main", limit_micro=1_000_000)
            assert (await ledger.key_by_hash(hash_key(key))) == row
            batch = [record(f"gen-{i}", acct.id, row.id, 7) for i in range(500)]
            await ledger.write(batch)
            again = await ledger.generation("gen-42")
            assert again == batch[42]
            acct2 = await ledger.account(acct.id)
            assert acct2 is not None and acct2.usage_micro == 3500
            assert (await ledger.key(row.id)).usage_micro == 3500
            assert await ledger.count_generations() == 500
            # A BYOK record keeps the provider's id and what the own key paid (/key, /generation).
            byok = msgspec.structs.replace(record("gen-byok", acct.id, row.id, 0), is_byok=True,
                                           upstream_id="chatcmpl-9", upstream_cost_micro=40)
            await ledger.write([byok])
            assert await ledger.generation("gen-byok") == byok
            since = [0, int(time.time()) - 60, int(time.time()) + 60]
            assert await ledger.key_usage(acct.id, row.id, since) == (
                [(3500, 40), (3500, 40), (0, 0)], 40)
            with pytest.raises(NoEndpoint):
                await ledger.add_credits("acct_missing", 5, "card")
            with pytest.raises(BadRequest):
                await ledger.add_credits(acct.id, -5, "card")
            assert (await ledger.account(acct.id)).credits_micro == 100_000_000
            # inactivity expiry (SPEC §5.2)
            assert await ledger.expire_inactive(now=int(time.time()) + 366 * 86400) == 1
            expired = await ledger.account(acct.id)
            assert expired.balance_micro == 0 and expired.expired_micro == 100_000_000 - 3500
            updated = await ledger.update_key(row.id, disabled=True, label="old")
            assert updated.disabled and updated.label == "old"
        finally:
            await ledger.close()

    loop_thread.run(go())


def test_gateway_on_postgresql(stack: Stack, pg_url: str, monkeypatch) -> None:
    import httpx

    monkeypatch.setenv("EDGEPROXY_ADMIN_KEY", "adm")
    sim = stack.sim(reply="pg ok")
    cfg = config([("acme", sim, {"prompt": "1", "completion": "1"})], server={"auth": "keys"})
    cfg["storage"] = {"ledger": pg_url}
    gw = stack.gateway(cfg)
    made = httpx.post(gw.base_url + "/keys", json={"name": "pg", "credits": "1"},
                      headers={"Authorization": "Bearer adm"}).json()
    auth = {"Authorization": f"Bearer {made['key']}"}
    r = httpx.post(gw.base_url + "/chat/completions", headers=auth,
                   json={"model": "test/model", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "pg ok"
    g = httpx.get(gw.base_url + f"/generation?id={r.json()['id']}", headers=auth).json()["data"]
    assert g["provider_name"] == "acme" and g["tokens_completion"] == 2
