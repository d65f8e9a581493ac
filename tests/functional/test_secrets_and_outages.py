"""Secrets an upstream quotes, a ledger that stops answering, and the BYOK allowance across
restarts and nodes: what a client and an operator see, through the running gateway."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.chaos.test_ledger_faults import PgLink
from tests.conftest import LoopThread, Stack, config
from tests.functional.test_billing import PROMPT, new_key
from tests.functional.test_billing import _admin_env as _admin_env  # (autouse: the env it sets)
from tests.nodes import wait_until


def chat(base_url: str, key: str) -> httpx.Response:
    return httpx.post(base_url + "/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": "test/model", "messages": PROMPT, "max_tokens": 5},
                      timeout=30)


# -- upstream error text --------------------------------------------------------------------------


def test_an_upstream_quoting_the_operators_key_is_scrubbed(
    stack: Stack, caplog: pytest.LogCaptureFixture,
) -> None:
    # The provider refuses the operator's key and quotes it back, masked OpenAI's way
    # ("sk-****-key"): neither the client nor the log may see that.
    sim = stack.sim(api_key="sk-the-key-the-provider-wants")
    gw = stack.gateway(config([("acme", sim, {"prompt": "1"})]))
    c = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as info:
            c.chat.completions.create(model="test/model", messages=PROMPT, stream=stream)
        text = info.value.response.text
        assert "Incorrect API key provided: [redacted]" in text, text
        assert "****" not in text and "sk-" not in text
    assert "****" not in caplog.text and "sk-upstream-provider-key" not in caplog.text


# -- the ledger stops answering --------------------------------------------------------------------


@pytest.fixture
def link(loop_thread: LoopThread) -> Iterator[PgLink]:
    """The ledger behind a link that can be cut. (Requested before `stack`, it outlives the
    gateways: their last flush goes through.)"""
    pg = PgLink(loop_thread)
    yield pg
    pg.cut()


def test_ledger_down_gives_503_for_new_keys_and_serves_known_ones(
    link: PgLink, stack: Stack, pg_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    sim = stack.sim()
    cfg = config([("acme", sim, {"prompt": "1"})], server={"auth": "keys"})
    cfg["storage"] = {"ledger": link.url(pg_url)}
    gw = stack.gateway(cfg)
    known, new = new_key(gw)["key"], new_key(gw)["key"]
    assert chat(gw.base_url, known).status_code == 200
    caplog.set_level(logging.INFO)
    caplog.clear()

    link.cut()
    # For two seconds (two refresh periods, each of which fails too): every request of the key
    # not seen before is a 503 that says what is wrong and when to retry.
    until = time.monotonic() + 2
    answers = []
    while time.monotonic() < until:
        answers.append(chat(gw.base_url, new))
    assert {r.status_code for r in answers} == {503}
    r = answers[-1]
    assert r.headers["Retry-After"] == "5"
    assert "ledger is unreachable" in r.json()["error"]["message"]
    # A key already known goes on being served: money never waits on the ledger.
    assert chat(gw.base_url, known).status_code == 200
    said = [rec for rec in caplog.records if "ledger unreachable" in rec.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR
    assert not [rec for rec in caplog.records if rec.exc_info], "no tracebacks"

    link.restore()
    wait_until(lambda: chat(gw.base_url, new).status_code == 200, 20,
               what="the new key to be served once the ledger answers")
    assert "ledger reachable again" in caplog.text


# -- the BYOK allowance ----------------------------------------------------------------------------


def _byok_config(sim: Any, ledger: str, **storage: str) -> dict[str, Any]:
    cfg = config([("acme", sim, {"prompt": "1000", "completion": "1000"})],
                 server={"auth": "keys"})
    cfg["billing"] = {"byok_free_requests": 2}
    cfg["storage"] = {"ledger": ledger, **storage}
    return cfg


def _byok(base_url: str, key: str) -> None:
    r = httpx.post(base_url + "/byok", headers={"Authorization": f"Bearer {key}"},
                   json={"provider": "acme", "api_key": "own-provider-key-0123456789"})
    assert r.status_code == 200, r.text


def _cost(base_url: str, key: str) -> Decimal:
    r = chat(base_url, key)
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["is_byok"] is True
    return Decimal(str(usage["cost"]))


def test_the_byok_allowance_survives_a_restart(stack: Stack, tmp_path: Path) -> None:
    sim = stack.sim(reply="a b c")
    ledger = f"sqlite:///{tmp_path}/byok.db"
    first = stack.gateway(_byok_config(sim, ledger))
    key = new_key(first)["key"]
    _byok(first.base_url, key)
    assert [_cost(first.base_url, key) for _ in range(2)] == [0, 0]  # the month's 2 free ones
    stack.lt.run(first.runner.cleanup())  # stopped: its records are in the ledger

    again = stack.gateway(_byok_config(sim, ledger))
    assert _cost(again.base_url, key) > 0  # the third of the month: the fee, not a fresh count


def test_the_byok_allowance_is_shared_by_nodes(
    stack: Stack, tmp_path: Path, redis_server: tuple[str, Any],
) -> None:
    import redis

    url, _ = redis_server
    sim = stack.sim(reply="a b c")
    ledger = f"sqlite:///{tmp_path}/shared.db"
    a = stack.gateway(_byok_config(sim, ledger, state=url, journal=str(tmp_path / "ja")))
    b = stack.gateway(_byok_config(sim, ledger, state=url, journal=str(tmp_path / "jb")))
    made = new_key(a)
    key, account = made["key"], made["data"]["account"]
    _byok(a.base_url, key)
    assert [_cost(a.base_url, key) for _ in range(2)] == [0, 0]
    month = time.strftime("%Y%m", time.gmtime())
    counter = redis.Redis.from_url(url)
    wait_until(lambda: counter.get(f"ep:byok:{account}:{month}:req") == b"2", 10,
               what="node a's two BYOK requests in the shared count")
    _byok(b.base_url, key)  # b learns the key at once (else at its next refresh)
    assert _cost(b.base_url, key) > 0  # the third of the month, on another node
    wait_until(lambda: counter.get(f"ep:byok:{account}:{month}:req") == b"3", 10,
               what="node b's request in the shared count")
