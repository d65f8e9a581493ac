"""OpenRouter's `provider` object, `models` fallthrough, and the variants and plugins the gateway
does not offer (SPEC §1.1, §2.5), through the openai SDK's extra_body against real simulators."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SimHandle, Stack, config
from tests.nodes import wait_until

PROMPT = [{"role": "user", "content": "Say hello to the gateway"}]
ROUTE = "X-Edgeproxy-Route"


def client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0, timeout=20)


def served(c: openai.OpenAI, model: str = "test/model", **body: Any) -> tuple[str, str, str]:
    """(provider, model, route header) of one answer."""
    raw = c.chat.completions.with_raw_response.create(
        model=model, messages=PROMPT, max_tokens=4, extra_body=body)
    r = raw.parse()
    return r.model_extra["provider"], r.model, raw.headers[ROUTE]


def error(c: openai.OpenAI, model: str = "test/model", **body: Any) -> tuple[int, str, dict]:
    with pytest.raises(openai.APIStatusError) as ei:
        c.chat.completions.create(model=model, messages=PROMPT, max_tokens=4, extra_body=body)
    err = ei.value.body
    assert isinstance(err, dict)
    return ei.value.status_code, err["message"], err.get("metadata") or {}


def two_models(stack: Stack, first: list[tuple[str, SimHandle, dict]],
               second: list[tuple[str, SimHandle, dict]], **kw: Any) -> Any:
    cfg = config(first, model="a/first", **kw)
    other = config(second, model="b/second")
    cfg["providers"].update(other["providers"])
    cfg["models"].update(other["models"])
    return stack.gateway(cfg)


# -- sort ---------------------------------------------------------------------------------------


def test_sort_as_a_string_or_litellms_object_form(stack: Stack) -> None:
    cheap, fast = stack.sim(), stack.sim()
    gw = stack.gateway(config([("cheap", cheap, {"prompt": "1", "throughput": 20}),
                               ("fast", fast, {"prompt": "4", "throughput": 900})]))
    c = client(gw)
    # (first: an answer measures its endpoint's throughput, and these simulators are unpaced)
    for sort in ("throughput", {"by": "throughput"}):
        assert served(c, provider={"sort": sort})[::2] == ("fast", "sort=throughput")
    for sort in ("price", {"by": "price"}, {"by": "price", "partition": "model"}):
        provider, _, route = served(c, provider={"sort": sort})
        assert (provider, route) == ("cheap", "sort=price")
    # {"partition": ...} without `by`, and null: the default weighted sampling
    assert served(c, provider={"sort": {"partition": "none"}})[2].startswith("default")
    assert served(c, provider={"sort": None})[2].startswith("default")
    status, message, _ = error(c, provider={"sort": {"by": "exacto"}})
    assert status == 400 and "exacto" in message and "not offered" in message


def test_partition_none_ranks_the_endpoints_of_all_models_together(stack: Stack) -> None:
    dear, cheap = stack.sim(reply="first model"), stack.sim(reply="second model")
    gw = two_models(stack, [("dear", dear, {"prompt": "9"})], [("cheap", cheap, {"prompt": "1"})])
    c = client(gw)
    models = ["a/first", "b/second"]
    # partition "model" (the default): the primary model's endpoints first, whatever they cost
    assert served(c, "a/first", models=models, provider={"sort": {"by": "price"}})[:2] == (
        "dear", "a/first")
    # "none": the cheapest endpoint of either model, and the answer names the model that served
    provider, model, route = served(
        c, "a/first", models=models, provider={"sort": {"by": "price", "partition": "none"}})
    assert (provider, model) == ("cheap", "b/second")
    assert route == "sort=price, partition=none"
    # the deprecated top-level route: "sort" means the same
    assert served(c, "a/first", models=models, route="sort",
                  provider={"sort": "price"})[:2] == ("cheap", "b/second")
    assert served(c, "a/first", models=models, route="fallback",
                  provider={"sort": "price"})[:2] == ("dear", "a/first")


# -- performance preferences ----------------------------------------------------------------------


def test_preferences_deprioritise_the_endpoints_that_miss_them(stack: Stack) -> None:
    # Paced like their declared throughput, which answers measure (and time to first token as
    # declared: only streams measure it).
    cheap, dear = stack.sim(tokens_per_s=20), stack.sim(tokens_per_s=400)
    gw = stack.gateway(config([
        ("cheap", cheap, {"prompt": "1", "throughput": 20, "latency_ms": 2000}),
        ("dear", dear, {"prompt": "5", "throughput": 400, "latency_ms": 100}),
    ]))
    c = client(gw)
    assert served(c, provider={"sort": "price"})[0] == "cheap"
    for prefs in ({"preferred_max_latency": 0.5}, {"preferred_max_latency": {"p90": 0.5}},
                  {"preferred_max_latency": {"p50": 5, "p99": 0.5}},  # all must hold
                  {"preferred_min_throughput": 100}, {"preferred_min_throughput": {"p75": 100}}):
        provider, _, route = served(c, provider={"sort": "price", **prefs})
        assert provider == "dear", prefs
        assert route == "sort=price, preferred performance first"
    # Met by both, or by neither: price decides again.
    assert served(c, provider={"sort": "price", "preferred_max_latency": 3})[0] == "cheap"
    assert served(c, provider={"sort": "price", "preferred_min_throughput": 9000})[0] == "cheap"
    # Deprioritised, never excluded: the only endpoint left serves though it misses.
    assert served(c, provider={"only": ["cheap"], "preferred_min_throughput": 100})[0] == "cheap"
    # ... and it is still a fallback when the preferred one fails.
    dear.configure(fault="status", fault_status=500)
    tried = dear.count()
    assert served(c, provider={"sort": "price", "preferred_max_latency": 0.5})[0] == "cheap"
    assert dear.count() == tried + 1


def test_preferred_max_latency_acts_on_the_measured_time_to_first_token(stack: Stack) -> None:
    slow, quick = stack.sim(latency_ms=300), stack.sim()
    # The declared latencies say the opposite of what the providers do.
    gw = stack.gateway(config([("slow", slow, {"prompt": "1", "latency_ms": 10}),
                               ("quick", quick, {"prompt": "5", "latency_ms": 5000})]))
    c = client(gw)
    prefs = {"sort": "price", "preferred_max_latency": 0.15}
    assert served(c, provider=prefs)[0] == "slow"  # no history yet: the declared figure decides
    for name in ("slow", "quick"):  # streams measure the time to first token
        list(c.chat.completions.create(model="test/model", messages=PROMPT, stream=True,
                                       max_tokens=4, extra_body={"provider": {"only": [name]}}))
    assert gw.gw.routes.router.latency(0) >= 300
    assert [served(c, provider=prefs)[0] for _ in range(3)] == ["quick"] * 3


# -- filters ---------------------------------------------------------------------------------------


def test_enforce_distillable_text_keeps_distillable_endpoints_only(stack: Stack) -> None:
    free, closed = stack.sim(), stack.sim()
    gw = two_models(
        stack,
        [("open", free, {"prompt": "3", "distillable": True}), ("closed", closed, {"prompt": "1"})],
        [("closed2", stack.sim(), {})],
    )
    c = client(gw)
    assert served(c, "a/first", provider={"sort": "price"})[0] == "closed"
    assert served(c, "a/first", provider={"sort": "price",
                                          "enforce_distillable_text": True})[0] == "open"
    status, message, meta = error(c, "b/second", provider={"enforce_distillable_text": True})
    assert status == 404 and "enforce_distillable_text" in message
    assert meta["requirement"].startswith("provider.enforce_distillable_text")


def test_the_builtin_catalog_marks_the_models_whose_license_allows_distillation() -> None:
    from edgeproxy import catalog
    from edgeproxy.config import parse

    models = parse(catalog.builtin_document()).models
    distillable = {name for name, m in models.items() if m.distillable}
    assert "deepseek/deepseek-r1" in distillable
    assert "meta-llama/llama-3.1-70b-instruct" in distillable
    assert not any(name.split("/")[0] in ("openai", "anthropic", "google") for name in distillable)


@pytest.mark.parametrize(
    ("prefs", "expected"),
    [
        ({"only": ["b"]}, "b"),
        ({"ignore": ["a"]}, "b"),
        ({"order": ["b", "a"]}, "b"),
        ({"quantizations": ["int4"]}, "b"),
        ({"data_collection": "deny"}, "b"),
        ({"zdr": True}, "b"),
        ({"max_price": {"prompt": "1.5"}}, "a"),  # OpenRouter's schema: strings
        ({"max_price": {"completion": 0.5}}, "b"),
        ({"max_price": {"request": "0.001"}}, "a"),
        ({"require_parameters": True}, "a"),  # b does not take `seed`
        ({"sort": "price", "unknown_future_field": {"x": [1]}, "allow_fallbacks": None}, "b"),
    ],
    ids=lambda v: orjson.dumps(v).decode() if isinstance(v, dict) else v,
)
def test_each_provider_field_acts(stack: Stack, prefs: dict, expected: str) -> None:
    a, b = stack.sim(), stack.sim()
    gw = stack.gateway(config(
        [("a", a, {"prompt": "1", "completion": "2", "quantization": "fp8"}),
         ("b", b, {"prompt": "2", "completion": "0.5", "request": "0.01", "quantization": "int4",
                   "supported_parameters": ["max_tokens"]})],
        providers_extra={"a": {"data_collection": "allow"},
                         "b": {"data_collection": "deny", "zdr": True}},
    ))
    for _ in range(3):  # (a filter decides, not the 1/price² draw)
        r = client(gw).chat.completions.create(
            model="test/model", messages=PROMPT, max_tokens=4, seed=7,
            extra_body={"provider": prefs})
        assert r.model_extra["provider"] == expected


def test_max_price_that_no_endpoint_meets_is_a_404(stack: Stack) -> None:
    a = stack.sim()
    gw = stack.gateway(config([("a", a, {"prompt": "1", "request": "0.01"})]))
    c = client(gw)
    for cap in ({"prompt": "0.5"}, {"request": 0.001}):
        status, message, _ = error(c, provider={"max_price": cap})
        assert status == 404 and "max_price" in message
    status, message, _ = error(c, provider={"max_price": {"prompt": "cheap"}})
    assert status == 400 and "max_price" in message
    assert a.count() == 0


# -- allow_fallbacks ------------------------------------------------------------------------------


def test_allow_fallbacks_false_returns_the_order_providers_error(stack: Stack) -> None:
    a = stack.sim(fault="status", fault_status=500)
    b = stack.sim(reply="from b")
    gw = stack.gateway(config([("a", a, {"prompt": "1"}), ("b", b, {"prompt": "1"})],
                              routing={"min_failures": 2}))
    c = client(gw)
    for _ in range(2):  # with fallbacks, b serves when a fails
        assert served(c, provider={"order": ["a"]})[0] == "b"
    wait_until(lambda: gw.gw.routes.is_degraded(gw.gw.routes.endpoints[0]), 5, what="a degraded")
    before = b.count()
    # Degraded, a would now be tried last; without fallbacks it is the only one tried.
    status, message, meta = error(c, provider={"order": ["a"], "allow_fallbacks": False})
    assert status == 503 and "The server had an error" in message
    assert meta["provider_name"] == "a" and meta["raw"]["type"] == "server_error"
    assert b.count() == before and a.count() == 3
    # No provider of `order` serves the model: nothing is tried.
    status, message, _ = error(c, provider={"order": ["nobody"], "allow_fallbacks": False})
    assert status == 404 and "provider.order" in message
    assert (a.count(), b.count()) == (3, before)


def test_allow_fallbacks_false_tries_each_provider_of_order_and_no_other(stack: Stack) -> None:
    a, c_sim = stack.sim(fault="status", fault_status=500), stack.sim(reply="from c")
    other = stack.sim()
    gw = stack.gateway(config([("a", a, {"prompt": "1"}), ("other", other, {"prompt": "1"}),
                               ("c", c_sim, {"prompt": "9"})]))
    provider, _, route = served(client(gw), provider={"order": ["a", "c"],
                                                      "allow_fallbacks": False})
    assert provider == "c" and route == "provider.order, no fallbacks"
    assert (a.count(), other.count()) == (1, 0)


# -- models fallthrough ---------------------------------------------------------------------------


def test_models_skips_a_model_that_does_not_exist(stack: Stack) -> None:
    sim = stack.sim(reply="from y")
    gw = stack.gateway(config([("acme", sim, {})], model="valid/y"))
    c = client(gw)
    for model, models in (("unknown/x", ["valid/y"]), ("valid/y", ["unknown/x"]),
                          ("unknown/x", ["unknown/z", "valid/y"])):
        assert served(c, model, models=models)[:2] == ("acme", "valid/y")
    r = httpx.post(gw.base_url + "/chat/completions", json={
        "models": ["unknown/x", "valid/y"], "messages": PROMPT})
    assert r.status_code == 200 and r.json()["model"] == "valid/y"
    status, message, _ = error(c, "unknown/x", models=["unknown/z"])
    assert status == 400 and message == "'unknown/x' is not a valid model ID"
    # A bad variant of a model that exists is a wrong value, not a missing model: 400.
    status, message, _ = error(c, "unknown/x", models=["valid/y:turbo"])
    assert status == 400 and "variant" in message


# -- what the gateway does not offer -------------------------------------------------------------


def test_web_search_and_unknown_plugins_are_a_clear_400(stack: Stack) -> None:
    sim = stack.sim()
    gw = stack.gateway(config([("acme", sim, {})]))
    c = client(gw)
    for model, body in (("test/model:online", {}), ("nobody/none:free:online", {}),
                        ("test/model", {"models": ["test/model:online"]}),
                        ("test/model", {"plugins": [{"id": "web", "max_results": 3}]}),
                        ("test/model", {"plugins": [{"id": "web", "enabled": True}]})):
        status, message, _ = error(c, model, **body)
        assert status == 400 and "web search is not offered by this gateway" in message
    status, message, meta = error(c, plugins=[{"id": "response-healing"}])
    assert status == 400 and "'response-healing' plugin is not offered" in message
    assert meta["plugin"] == "response-healing"
    for variant in ("exacto", "extended"):
        status, message, _ = error(c, f"test/model:{variant}")
        assert status == 400 and "not offered" in message
    assert sim.count() == 0
    # A plugin turned off asks for nothing.
    assert served(c, plugins=[{"id": "web", "enabled": False}])[0] == "acme"
    # Other dialects carry `plugins` too.
    r = httpx.post(gw.base_url + "/responses", json={
        "model": "test/model", "input": "hi", "plugins": [{"id": "web"}]})
    assert r.status_code == 400 and "web search" in r.json()["error"]["message"]


def test_the_context_compression_plugin_is_middle_out(stack: Stack) -> None:
    sim = stack.sim()
    gw = stack.gateway(config([("acme", sim, {})], context_length=300))
    long = [{"role": "user", "content": f"message number {i} " * 10} for i in range(20)]
    c = client(gw)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="test/model", messages=long, max_tokens=10)
    r = c.chat.completions.create(model="test/model", messages=long, max_tokens=10,
                                  extra_body={"plugins": [{"id": "context-compression"}]})
    assert r.choices[0].message.content
    assert len(sim.requests()[-1]["body"]["messages"]) < len(long)


# -- what reaches an openai-protocol upstream ------------------------------------------------------


def test_openrouter_only_members_never_reach_an_openai_upstream(stack: Stack) -> None:
    plain, sampler = stack.sim(), stack.sim()
    gw = stack.gateway(config([
        ("plain", plain, {}),
        ("sampler", sampler, {"supported_parameters": ["max_tokens", "top_k", "min_p"]}),
    ]))
    extras = {"models": ["test/model"], "route": "fallback", "transforms": [],
              "usage": {"include": True}, "session_id": "conv-1", "debug": {"echo": True},
              "trace": {"x": 1}, "plugins": [{"id": "context-compression"}],
              "top_k": 40, "min_p": 0.1, "repetition_penalty": 1.1}
    for name, sim in (("plain", plain), ("sampler", sampler)):
        client(gw).chat.completions.create(
            model="test/model", messages=PROMPT, max_tokens=4, temperature=0.5,
            extra_body={**extras, "provider": {"only": [name]}})
        body = sim.requests()[-1]["body"]
        assert body["temperature"] == 0.5 and body["messages"] == PROMPT
        for member in ("provider", "models", "route", "transforms", "usage", "session_id",
                       "debug", "trace", "plugins", "repetition_penalty"):
            assert member not in body, (name, member)
        # OpenRouter's sampling extras go only where the endpoint lists them
        assert ("top_k" in body, "min_p" in body) == ((True, True) if name == "sampler"
                                                      else (False, False))


# -- fuzz ---------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats()
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=3),
    max_leaves=8,
)
names = st.lists(st.sampled_from(["a", "b", "A ", "nobody", ""]) | st.text(max_size=6),
                 max_size=4)
number = st.integers(-5, 10**12) | st.floats() | st.text(max_size=6)
percentiles = st.dictionaries(st.sampled_from(["p50", "p75", "p90", "p99", "p42"]),
                              number | st.none(), max_size=4)
provider_fields = {
    "order": names, "only": names, "ignore": names, "allow_fallbacks": st.booleans(),
    "require_parameters": st.booleans(), "data_collection": st.sampled_from(["allow", "deny"]),
    "zdr": st.booleans(), "enforce_distillable_text": st.booleans(),
    "quantizations": st.lists(st.sampled_from(["fp8", "int4", "bf16", "x"]), max_size=3),
    "sort": st.sampled_from(["price", "throughput", "latency", "exacto", "bogus"])
    | st.fixed_dictionaries({}, optional={
        "by": st.sampled_from(["price", "throughput", "latency", "exacto"]) | json_values,
        "partition": st.sampled_from(["model", "none"]) | json_values}),
    "max_price": st.dictionaries(st.sampled_from(
        ["prompt", "completion", "request", "image", "audio", "video"]),
        number | st.sampled_from(["1.5", "NaN", "-1", "1e400", "0"]), max_size=3),
    "preferred_max_latency": number | percentiles,
    "preferred_min_throughput": number | percentiles,
}
provider_objects = st.fixed_dictionaries(
    {}, optional={k: v | json_values for k, v in provider_fields.items()}
) | json_values
fuzz_requests = st.fixed_dictionaries(
    {"messages": st.just(PROMPT), "max_tokens": st.just(2)},
    optional={
        "model": st.sampled_from(["a/first", "b/second", "a/first:nitro", "a/first:online",
                                  "x/none", "a/first:exacto"]),
        "models": st.lists(st.sampled_from(["a/first", "b/second", "x/none", "b/second:floor"]),
                           max_size=3),
        "provider": provider_objects,
        "route": st.sampled_from(["fallback", "sort", "bogus"]),
        "plugins": st.lists(st.fixed_dictionaries(
            {"id": st.sampled_from(["web", "context-compression", "moderation"])},
            optional={"enabled": st.booleans()}), max_size=2) | json_values,
    },
)
CLIENT = httpx.Client(timeout=10)


@pytest.fixture
def fuzz_gateway(stack: Stack) -> str:
    a, b = stack.sim(max_reply_tokens=2), stack.sim(max_reply_tokens=2)
    gw = two_models(stack, [("a", a, {"prompt": "1", "quantization": "fp8", "distillable": True}),
                            ("b", b, {"prompt": "2", "request": "0.01"})],
                    [("c", stack.sim(max_reply_tokens=2), {"prompt": "3"})])
    return gw.base_url + "/chat/completions"


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=fuzz_requests)
def test_no_provider_object_gives_a_5xx(fuzz_gateway: str, body: dict) -> None:
    r = CLIENT.post(fuzz_gateway, content=orjson.dumps(body),
                    headers={"Content-Type": "application/json"})
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        err = r.json()["error"]
        assert err["code"] == r.status_code and isinstance(err["message"], str)
