"""Whatever a client sends, the gateway answers a JSON error below 500 or a real answer."""

from __future__ import annotations

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Stack, config

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                  max_size=4),
    max_leaves=12,
)
FIELDS = ["model", "models", "messages", "stream", "max_tokens", "temperature", "provider",
          "tools", "tool_choice", "response_format", "stop", "n", "route", "usage", "top_p"]
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "bogus"]) | json_values},
    optional={"content": st.text(max_size=40) | json_values, "name": json_values,
              "tool_calls": json_values, "tool_call_id": json_values},
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["test/model", "test/model:nitro", "test/model:free",
                                  "test/model:x", "other", ""]) | json_values,
        "messages": st.lists(message, max_size=3) | json_values,
        "stream": st.booleans() | json_values,
        "max_tokens": st.integers(-5, 10**7) | json_values,
        "provider": st.dictionaries(st.sampled_from(
            ["order", "only", "ignore", "sort", "max_price", "quantizations", "zdr",
             "allow_fallbacks", "data_collection", "require_parameters"]), json_values,
            max_size=3) | json_values,
        **{f: json_values for f in FIELDS if f not in ("model", "messages", "stream",
                                                      "max_tokens", "provider")},
    },
)
huge_numbers = st.integers(2**64, 2**90).map(
    lambda n: b'{"model": "test/model", "max_tokens": %d, "messages": [{"role": "user",'
              b' "content": "x"}]}' % n)
bodies = (requests.map(orjson.dumps) | st.binary(max_size=200) | huge_numbers
          | json_values.map(lambda v: orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS)))


@pytest.fixture
def target(stack: Stack) -> str:
    sim = stack.sim(max_reply_tokens=2)
    gw = stack.gateway(config([("acme", sim, {"prompt": "1"})]))
    return gw.base_url + "/chat/completions"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_no_input_gives_a_5xx(target: str, body: bytes) -> None:
    r = httpx.post(target, content=body, headers={"Content-Type": "application/json"},
                   timeout=10)
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        err = r.json()["error"]
        assert err["code"] == r.status_code and isinstance(err["message"], str)
