"""The one attempt loop, as a client sees it: the overall deadline, cancellation of whole answers,
and the record of a stream that failed after content (pipeline.py, billing/charge.py)."""

from __future__ import annotations

import sqlite3
import time

import httpx
import orjson
import pytest

from tests.conftest import Stack, config
from tests.functional.test_billing import get, keyed, new_key, usd

PROMPT = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(autouse=True)
def _admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPROXY_ADMIN_KEY", "admin-secret-for-tests")


def _ledger_rows(gw, where: str) -> list[tuple]:
    path = gw.gw.cfg.storage.ledger.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT id, cancelled, streamed, cost_micro FROM generations WHERE " + where
        ).fetchall()


def _wait_for(fn, seconds: float = 5.0):
    deadline = time.monotonic() + seconds
    while True:
        out = fn()
        if out or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


def test_overall_deadline_is_a_408_and_counts_against_the_endpoint(stack: Stack) -> None:
    slow = stack.sim(latency_ms=3000)
    gw = stack.gateway(config([("slow", slow, {})],
                              server={"auth": "keys", "request_timeout_s": 0.3}))
    key = new_key(gw)["key"]
    r = httpx.post(gw.base_url + "/chat/completions", timeout=10,
                   headers={"Authorization": f"Bearer {key}"},
                   json={"model": "test/model", "messages": PROMPT})
    assert r.status_code == 408, r.text
    err = r.json()["error"]
    assert err["code"] == 408 and "0.3 s" in err["message"]
    # The reservation was released: the account's room is whole again, nothing was charged.
    assert usd(get(gw, "/credits", key).json()["data"]["total_usage"]) == 0
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'edgeproxy_upstream_attempts_total{provider="slow",outcome="timeout"} 1' in metrics


def test_a_cancelled_whole_answer_is_recorded_as_cancelled(stack: Stack) -> None:
    sim = stack.sim(latency_ms=1500)
    # a per-request price too: nothing of it is due when nothing was generated
    gw = keyed(stack, [("acme", sim, {"prompt": "5", "completion": "50", "request": "0.01"})])
    key = new_key(gw)["key"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gw.base_url + "/chat/completions", timeout=0.4,
                   headers={"Authorization": f"Bearer {key}"},
                   json={"model": "test/model", "messages": PROMPT})
    rows = _wait_for(lambda: _flushed_rows(gw, key))
    assert len(rows) == 1
    _id, cancelled, streamed, cost = rows[0]
    assert cancelled == 1 and streamed == 0
    assert cost == 0  # the upstream had not answered: nothing was generated
    assert usd(get(gw, "/credits", key).json()["data"]["total_usage"]) == 0


def _flushed_rows(gw, key: str) -> list[tuple]:
    get(gw, "/generation?id=gen-none", key)  # /generation flushes the writer's queue first
    return _ledger_rows(gw, "1=1")


def test_a_stream_that_fails_after_content_is_recorded_and_billed(stack: Stack) -> None:
    bad = stack.sim(fault="drop", drop_after=3, reply="a b c d e f g h")
    gw = keyed(stack, [("bad", bad, {"prompt": "1", "completion": "10"})])
    key = new_key(gw)["key"]
    with httpx.stream("POST", gw.base_url + "/chat/completions",
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": "test/model", "messages": PROMPT, "stream": True}) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    last = orjson.loads(events[-2])
    assert last["choices"][0]["finish_reason"] == "error"
    g = get(gw, f"/generation?id={last['id']}", key)
    assert g.status_code == 200, g.text
    data = g.json()["data"]
    assert data["finish_reason"] == "error" and data["streamed"] is True
    # what reached the client ("a b c": 3 words of 1 token each, estimated) is billed
    assert data["tokens_completion"] > 0 and usd(data["total_cost"]) > 0
    assert usd(get(gw, "/credits", key).json()["data"]["total_usage"]) == usd(data["total_cost"])


def test_a_large_image_counts_as_an_image_not_as_its_base64(stack: Stack) -> None:
    # ~600 KB of base64: counted by bytes it would be ~150k tokens, over this 32k context.
    sim = stack.sim()
    gw = stack.gateway(config([("acme", sim, {})], context_length=32000,
                              model_extra={"input_modalities": ["text", "image"]}))
    image = "data:image/png;base64," + "A" * 600_000
    r = httpx.post(gw.base_url + "/chat/completions", timeout=10, json={
        "model": "test/model", "max_tokens": 100,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": image}}]}]})
    assert r.status_code == 200, r.text
    # and a prompt whose text really is over the context still gets the 400 that says so
    r = httpx.post(gw.base_url + "/chat/completions", timeout=10, json={
        "model": "test/model", "messages": [{"role": "user", "content": "word " * 40_000}]})
    assert r.status_code == 400 and "context of 32000" in r.json()["error"]["message"]
    # nor can a prompt hide in a field the gateway does not count: the body's size bounds it
    schema = {"type": "object", "description": "word " * 40_000}
    r = httpx.post(gw.base_url + "/chat/completions", timeout=10, json={
        "model": "test/model", "messages": PROMPT,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})
    assert r.status_code == 400 and "context of 32000" in r.json()["error"]["message"]


def _reset_after_first_bytes(port: int, body: bytes) -> None:
    """A client that reads the head of a stream, then drops the connection with a TCP reset."""
    import socket
    import struct

    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
              b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    s.recv(256)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def test_clients_that_go_away_never_count_against_the_provider(stack: Stack) -> None:
    sim = stack.sim(max_reply_tokens=20_000)  # unpaced: the gateway is mid-write at the reset
    gw = stack.gateway(config([("acme", sim, {"prompt": "1"})], routing={"min_failures": 2}))
    body = orjson.dumps({"model": "test/model", "messages": PROMPT, "stream": True})
    for _ in range(20):
        _reset_after_first_bytes(gw.port, body)
    _wait_for(lambda: sim.stats()["active"] == 0)
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'outcome="error"' not in metrics and 'status="502"' not in metrics
    assert httpx.get(gw.url + "/readyz").json()["degraded"] == []
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": "test/model",
                                                            "messages": PROMPT})
    assert r.status_code == 200
