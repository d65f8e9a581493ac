"""The built-in catalog (SPEC §6) and how a user's file merges over it (SPEC §1.3)."""

from __future__ import annotations

import tomllib
from decimal import Decimal
from typing import Any

import pytest

from edgeproxy import config
from edgeproxy.catalog import PLACEHOLDER_HOST, builtin_document, merge, usable
from edgeproxy.errors import ConfigError
from edgeproxy.routing import RouteTable

CTX = {"1M": 1_048_576, "400K": 400_000, "200K": 200_000, "128K": 131_072, "256K": 262_144,
       "512K": 524_288}

# SPEC §6, verbatim: id -> (prompt, completion, context). A range is (low, high).
D = Decimal
SPEC_6: dict[str, tuple[Any, Any, str]] = {
    "google/gemini-3-pro-preview": (D("2.00"), D("12.00"), "1M"),
    "google/gemini-2.5-pro": (D("1.25"), D("10.00"), "1M"),
    "google/gemini-2.5-flash": (D("0.30"), D("2.50"), "1M"),
    "google/gemini-2.0-flash-001": (D("0.10"), D("0.40"), "1M"),
    "openai/gpt-5.1": (D("1.25"), D("10.00"), "400K"),
    "openai/gpt-5-pro": (D("15.00"), D("120.00"), "400K"),
    "openai/gpt-5-nano": (D("0.05"), D("0.40"), "400K"),
    "openai/o3-pro": (D("20.00"), D("80.00"), "200K"),
    "openai/gpt-4o": (D("2.50"), D("10.00"), "128K"),
    "openai/gpt-4o-mini": (D("0.15"), D("0.60"), "128K"),
    "openai/o1-preview": (D("15.00"), D("60.00"), "128K"),
    "anthropic/claude-opus-4.5": (D("15.00"), D("75.00"), "200K"),
    "anthropic/claude-3.5-sonnet": (D("3.00"), D("15.00"), "200K"),
    "anthropic/claude-3-opus": (D("15.00"), D("75.00"), "200K"),
    "anthropic/claude-3.5-haiku": (D("0.80"), D("4.00"), "200K"),
    "deepseek/deepseek-chat": (D("0.14"), D("0.28"), "128K"),
    "deepseek/deepseek-r1": (D("0.55"), D("2.19"), "128K"),
    "mistralai/codestral": (D("0.10"), D("0.40"), "256K"),
    "meta-llama/llama-4-maverick:free": (D("0"), D("0"), "256K"),
    "meta-llama/llama-4-scout:free": (D("0"), D("0"), "512K"),
    "meta-llama/llama-3.1-405b-instruct": ((D("1.00"), D("3.00")), (D("1.00"), D("3.00")), "128K"),
    "meta-llama/llama-3.1-70b-instruct": ((D("0.35"), D("0.60")), (D("0.40"), D("0.90")), "128K"),
    "meta-llama/llama-3.1-8b-instruct": (D("0.05"), D("0.05"), "128K"),
}
# Embedding models (SPEC §1.1, §5.3): id -> (prompt price per 1M input tokens, context, provider).
EMBEDDINGS: dict[str, tuple[Decimal, int, str]] = {
    "openai/text-embedding-3-small": (D("0.02"), 8191, "openai"),
    "openai/text-embedding-3-large": (D("0.13"), 8191, "openai"),
    "mistralai/mistral-embed": (D("0.10"), 8192, "mistral"),
}
SPEC_PROVIDERS = {"openai", "anthropic", "google-ai-studio", "deepinfra", "novita", "fireworks",
                  "together", "azure", "groq", "cerebras", "mistral", "deepseek", "perplexity"}
TOKENIZERS = {"GPT", "Claude", "Gemini", "Llama3", "Llama4", "DeepSeek", "Mistral"}


@pytest.fixture(scope="module")
def cat() -> config.Config:
    return config.parse(merge(builtin_document(), {}))


def test_catalog_parses_and_holds_exactly_spec_models(cat: config.Config) -> None:
    assert set(cat.models) == set(SPEC_6) | set(EMBEDDINGS)
    # OpenAI appears twice: its Responses API is a provider entry of its own (openai-responses).
    assert set(cat.providers) == SPEC_PROVIDERS | {"openai-responses"}


@pytest.mark.parametrize("mid", sorted(SPEC_6))
def test_spec_prices_and_context(cat: config.Config, mid: str) -> None:
    prompt, completion, ctx = SPEC_6[mid]
    model = cat.models[mid]
    assert model.context_length == CTX[ctx]
    assert model.enabled
    prompts = [e.prompt for e in model.endpoints]
    completions = [e.completion for e in model.endpoints]
    if isinstance(prompt, tuple):
        # A range: several endpoints, on different providers, spanning exactly the range.
        assert len(model.endpoints) >= 3
        assert len({e.provider for e in model.endpoints}) == len(model.endpoints)
        assert (min(prompts), max(prompts)) == prompt
        assert (min(completions), max(completions)) == completion
    else:
        paid = [e for e in model.endpoints if e.prompt or e.completion]
        if prompt == 0 and completion == 0:
            assert not paid, "a free model has only free endpoints"
        else:
            assert paid
            for e in paid:
                assert (e.prompt, e.completion) == (prompt, completion), e.provider
    for e in model.endpoints:
        assert e.provider in cat.providers
        assert e.context_length is None or e.context_length <= model.context_length


def test_model_objects_are_complete(cat: config.Config) -> None:
    for mid, m in cat.models.items():
        assert m.name and m.description, mid
        assert 1_700_000_000 <= m.created <= 1_800_000_000, mid  # 2023-11 .. 2027-01
        assert m.tokenizer in TOKENIZERS, mid
        if mid in EMBEDDINGS:
            continue  # see test_embedding_models
        assert "text" in m.input_modalities and m.output_modalities == ["text"], mid
        assert 0 < m.max_output <= m.context_length, mid
        assert {"max_tokens"} <= set(m.supported_parameters), mid
        for e in m.endpoints:
            assert e.throughput > 0 and e.latency_ms > 0, (mid, e.provider)


@pytest.mark.parametrize("mid", sorted(EMBEDDINGS))
def test_embedding_models(cat: config.Config, mid: str) -> None:
    prompt, context, provider = EMBEDDINGS[mid]
    m = cat.models[mid]
    assert m.input_modalities == ["text"] and m.output_modalities == ["embeddings"]
    assert m.context_length == context
    assert [(e.provider, e.prompt, e.completion) for e in m.endpoints] == [(provider, prompt, 0)]
    assert cat.providers[provider].protocol == "openai"  # embeddings go to openai upstreams
    assert all(e.latency_ms > 0 for e in m.endpoints)


def test_multimodal_and_reasoning_flags(cat: config.Config) -> None:
    for mid in ("google/gemini-3-pro-preview", "google/gemini-2.5-pro", "openai/gpt-4o"):
        assert "image" in cat.models[mid].input_modalities
    assert {"audio", "file"} <= set(cat.models["google/gemini-3-pro-preview"].input_modalities)
    assert "image" in cat.models["meta-llama/llama-4-maverick:free"].input_modalities
    for mid in ("openai/o3-pro", "openai/gpt-5.1", "deepseek/deepseek-r1",
                "anthropic/claude-opus-4.5"):
        assert "reasoning" in cat.models[mid].supported_parameters
    assert "reasoning" not in cat.models["openai/gpt-4o"].supported_parameters
    assert "tools" in cat.models["google/gemini-3-pro-preview"].supported_parameters
    assert cat.models["meta-llama/llama-3.1-405b-instruct"].tokenizer == "Llama3"
    assert cat.models["meta-llama/llama-4-scout:free"].tokenizer == "Llama4"


def test_range_models_have_fp8_and_int4(cat: config.Config) -> None:
    for mid in ("meta-llama/llama-3.1-405b-instruct", "meta-llama/llama-3.1-70b-instruct"):
        quants = {e.quantization for e in cat.models[mid].endpoints}
        assert {"fp8", "int4"} <= quants, mid


def test_llama_8b_has_a_free_endpoint_and_paid_ones(cat: config.Config) -> None:
    eps = cat.models["meta-llama/llama-3.1-8b-instruct"].endpoints
    free = [e for e in eps if e.prompt == 0 and e.completion == 0]
    assert len(free) == 1
    assert len(eps) - len(free) >= 2


def test_fast_providers_are_seeded_fast(cat: config.Config) -> None:
    speeds = [e.throughput for m in cat.models.values() for e in m.endpoints
              if e.provider in ("groq", "cerebras")]
    assert speeds and min(speeds) >= 500


def test_provider_urls_and_protocols(cat: config.Config) -> None:
    p = cat.providers
    assert p["openai"].base_url == "https://api.openai.com/v1"
    assert (p["anthropic"].protocol, p["anthropic"].base_url) == (
        "anthropic", "https://api.anthropic.com/v1")
    assert (p["google-ai-studio"].protocol, p["google-ai-studio"].base_url) == (
        "gemini", "https://generativelanguage.googleapis.com/v1beta")
    assert p["deepinfra"].base_url == "https://api.deepinfra.com/v1/openai"
    assert p["groq"].base_url == "https://api.groq.com/openai/v1"
    for name, prov in p.items():
        assert prov.base_url.startswith("https://"), name
        assert prov.api_key_env and prov.api_key_env.endswith("_API_KEY"), name
        if name not in ("anthropic", "google-ai-studio", "openai-responses"):
            assert prov.protocol == "openai", name
    assert (p["openai-responses"].protocol, p["openai-responses"].base_url) == (
        "openai-responses", p["openai"].base_url)
    assert p["openai-responses"].api_key_env == "OPENAI_API_KEY"
    for mid in ("openai/gpt-5-pro", "openai/o3-pro"):  # served on the Responses API only
        assert [e.provider for e in cat.models[mid].endpoints] == ["openai-responses"], mid
    assert p["openai"].api_key_env == "OPENAI_API_KEY"
    assert p["google-ai-studio"].api_key_env == "GEMINI_API_KEY"


def test_route_table_builds_from_catalog(cat: config.Config) -> None:
    table = RouteTable(cat, seed=1)
    entry, variant = table.resolve("meta-llama/llama-3.1-8b-instruct:free")
    assert variant == "free" and entry.free_mask
    entry, variant = table.resolve("meta-llama/llama-4-scout:free")
    assert variant is None and entry.id == "meta-llama/llama-4-scout:free"


def test_builtin_document_is_fresh_each_call() -> None:
    a = builtin_document()
    a["models"].clear()
    assert builtin_document()["models"]


def test_catalog_file_is_plain_toml() -> None:
    from importlib import resources

    text = resources.files("edgeproxy.catalog").joinpath("models.toml").read_text("utf-8")
    assert tomllib.loads(text) == builtin_document()


# -- merge ---------------------------------------------------------------------------------------


def test_merge_empty_user_is_the_catalog() -> None:
    assert merge(builtin_document(), {}) == builtin_document()


def test_merge_keeps_other_tables_and_drops_catalog_table() -> None:
    user = {"server": {"listen": "127.0.0.1:9"}, "catalog": {"builtin": True}}
    out = merge(builtin_document(), user)
    assert "catalog" not in out
    assert out["server"] == {"listen": "127.0.0.1:9"}
    assert "catalog" in user, "the input is not modified"
    config.parse(out)


def test_merge_adds_a_model() -> None:
    user = {
        "providers": {"local": {"base_url": "http://127.0.0.1:8000/v1"}},
        "models": {"me/tiny": {"context_length": 4096,
                               "endpoints": [{"provider": "local", "model": "tiny"}]}},
    }
    cfg = config.parse(merge(builtin_document(), user))
    assert "me/tiny" in cfg.models and "openai/gpt-4o" in cfg.models
    assert cfg.providers["local"].base_url == "http://127.0.0.1:8000/v1"


def test_merge_overrides_prices_by_replacing_endpoints() -> None:
    user = {"models": {"openai/gpt-4o": {
        "endpoints": [{"provider": "openai", "model": "gpt-4o", "prompt": 2.0, "completion": 8.0}],
    }}}
    cfg = config.parse(merge(builtin_document(), user))
    m = cfg.models["openai/gpt-4o"]
    assert [(e.provider, e.prompt, e.completion) for e in m.endpoints] == [
        ("openai", D("2.0"), D("8.0"))]
    # Fields the user did not name keep the catalog's values.
    assert m.context_length == 131_072 and m.name == "OpenAI: GPT-4o"


def test_merge_overrides_single_fields() -> None:
    user = {"models": {"google/gemini-2.5-flash": {"max_output": 1000, "description": "mine"}}}
    m = config.parse(merge(builtin_document(), user)).models["google/gemini-2.5-flash"]
    assert (m.max_output, m.description) == (1000, "mine")
    assert m.endpoints[0].prompt == D("0.30")


def test_merge_disables_a_model() -> None:
    user = {"models": {"openai/o1-preview": {"enabled": False}}}
    cfg = config.parse(merge(builtin_document(), user))
    assert not cfg.models["openai/o1-preview"].enabled
    assert "openai/o1-preview" not in RouteTable(cfg, seed=1).models


def test_merge_overrides_provider_key_by_key() -> None:
    user = {"providers": {"azure": {"base_url": "https://mine.openai.azure.com/openai/v1"},
                          "openai": {"zdr": True}}}
    cfg = config.parse(merge(builtin_document(), user))
    assert cfg.providers["azure"].base_url == "https://mine.openai.azure.com/openai/v1"
    assert cfg.providers["azure"].api_key_env == "AZURE_OPENAI_API_KEY"
    assert cfg.providers["openai"].zdr is True
    assert cfg.providers["openai"].base_url == "https://api.openai.com/v1"


def test_merge_builtin_false_drops_the_catalog() -> None:
    user = {
        "catalog": {"builtin": False},
        "providers": {"local": {"base_url": "http://127.0.0.1:8000/v1"}},
        "models": {"me/tiny": {"context_length": 4096,
                               "endpoints": [{"provider": "local", "model": "tiny"}]}},
    }
    out = merge(builtin_document(), user)
    assert "catalog" not in out
    cfg = config.parse(out)
    assert set(cfg.models) == {"me/tiny"} and set(cfg.providers) == {"local"}


@pytest.mark.parametrize(("user", "path"), [
    ({"catalog": {"builtin": "no"}}, "catalog.builtin"),
    ({"catalog": {"bogus": 1}}, "catalog.bogus"),
    ({"catalog": []}, "catalog"),
    ({"models": {"openai/gpt-4o": 3}}, "models.openai/gpt-4o"),
    ({"providers": []}, "providers"),
])
def test_merge_refuses_malformed_tables(user: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as exc:
        merge(builtin_document(), user)
    assert exc.value.path == path


def test_merge_then_parse_reports_user_errors_with_key_path() -> None:
    user = {"models": {"openai/gpt-4o": {"endpoints": [{"provider": "nope", "model": "x"}]}}}
    with pytest.raises(ConfigError) as exc:
        config.parse(merge(builtin_document(), user))
    assert exc.value.path == "models.openai/gpt-4o.endpoints[0].provider"


# -- usable --------------------------------------------------------------------------------------


def test_usable_keeps_only_keyed_providers() -> None:
    doc = merge(builtin_document(), {})
    out = usable(doc, {"OPENAI_API_KEY": "sk-x", "GROQ_API_KEY": "g"})
    cfg = config.parse(out)
    providers = {e.provider for m in cfg.models.values() for e in m.endpoints}
    assert providers == {"openai", "openai-responses", "groq"}  # both OpenAI APIs, one key
    assert "openai/gpt-4o" in cfg.models and "anthropic/claude-3-opus" not in cfg.models
    # The 70B keeps only its Groq endpoint.
    assert [e.provider for e in cfg.models["meta-llama/llama-3.1-70b-instruct"].endpoints] == [
        "groq"]
    assert doc == merge(builtin_document(), {}), "the input is not modified"


def test_usable_drops_azure_until_its_host_is_set() -> None:
    env = {"AZURE_OPENAI_API_KEY": "k"}
    doc = merge(builtin_document(), {})
    assert PLACEHOLDER_HOST in doc["providers"]["azure"]["base_url"]
    assert not usable(doc, env)["models"]
    mine = merge(builtin_document(), {"providers": {"azure": {
        "base_url": "https://mine.openai.azure.com/openai/v1"}}})
    cfg = config.parse(usable(mine, env))
    assert set(cfg.models) == {"openai/gpt-4o", "openai/gpt-4o-mini"}


def test_usable_keeps_providers_without_key_env_and_unknown_ones() -> None:
    doc = {"providers": {"local": {"base_url": "http://127.0.0.1:1/v1"}},
           "models": {"a/b": {"context_length": 10, "endpoints": [
               {"provider": "local", "model": "m"}, {"provider": "ghost", "model": "m"}]}}}
    assert usable(doc, {}) is doc
