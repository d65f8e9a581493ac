"""The auto router (SPEC §7): realistic prompts land on the rule a person would pick."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from edgeproxy import config
from edgeproxy.autorouter import (
    AUTO_MODELS,
    DEFAULT_RULES,
    RULE_ORDER,
    AutoPolicy,
    classify,
    is_auto,
    load_policy,
)
from edgeproxy.catalog import builtin_document, merge
from edgeproxy.errors import ConfigError
from edgeproxy.schema import Message, decode_chat

POLICY = AutoPolicy()
SYSTEM = Message(role="system", content="You are a helpful assistant.")

PYTHON_QUESTION = '''I get an error when I run this. What is wrong?

```python
def mean(xs):
    return sum(xs) / len(xs)

print(mean([]))
```
'''

WORDS = ("the committee met on tuesday to review the annual report of the regional water board "
         "which described rainfall river levels reservoir storage and the maintenance of pumping "
         "stations across the northern districts during a dry and unusually warm summer").split()


def prose(chars: int, seed: int = 7) -> str:
    """Plain English-like text with sentences and paragraphs, no code and no mathematics."""
    rnd = random.Random(seed)
    out: list[str] = []
    n = 0
    while n < chars:
        sentence = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(8, 20)))
        sentence = sentence[0].upper() + sentence[1:] + ". "
        if rnd.random() < 0.15:
            sentence += "\n\n"
        out.append(sentence)
        n += len(sentence)
    return "".join(out)[:chars]


def user(content: Any) -> Message:
    return Message(role="user", content=content)


def run(*messages: Message, tokens: int | None = None, spend: int | None = None,
        policy: AutoPolicy = POLICY, **kw: Any) -> tuple[str, list[str]]:
    msgs = list(messages)
    if tokens is None:
        tokens = sum(len(m.content) if isinstance(m.content, str) else 100 for m in msgs) // 4
    return classify(policy, msgs, bool(kw.get("tool_names")), tokens, spend, **kw)


def test_greeting_is_default() -> None:
    assert run(SYSTEM, user("Hi, how are you?")) == ("default", ["google/gemini-2.5-flash"])


def test_python_question_with_fence_is_code() -> None:
    assert run(SYSTEM, user(PYTHON_QUESTION)) == ("code", ["mistralai/codestral"])


@pytest.mark.parametrize("text", [
    "Why does my Python script raise a KeyError when the dict is empty?",
    "Here is the stack trace from our Java service, can you explain it?",
    "My C++ program fails to compile with 'undefined reference to main'.",
    "Write a function that reverses a linked list.",
    "Refactor this JavaScript so it uses async/await.",
    "Traceback (most recent call last):\n  File \"app.py\", line 3, in <module>",
])
def test_code_words(text: str) -> None:
    assert run(user(text))[0] == "code"


def test_code_tool_selects_code() -> None:
    rule, _ = run(user("Plot the monthly totals for me."), tool_names=["code_interpreter"])
    assert rule == "code"
    rule, _ = run(user("What's the weather in Paris?"), tool_names=["get_weather"])
    assert rule == "default"


def test_infinitely_many_primes_is_a_proof_for_o3_pro() -> None:
    rule, models = run(user("Prove that there are infinitely many primes."))
    assert rule == "proof"
    assert models[0] == "openai/o3-pro"
    assert models[1:] == ["openai/gpt-5.1", "anthropic/claude-opus-4.5"]


@pytest.mark.parametrize("text", [
    "Compute the integral of x^2 e^x from 0 to 1.",
    "Find the derivative of sin(x)/x and explain step by step.",
    "Solve the equation 3x + 7 = 22.",
    r"Simplify $$\frac{a^2-b^2}{a-b}$$ please",
    r"What is \(\sum_{k=1}^n k^2\)?",
    "A bag has 3 red and 5 blue balls; what is the probability of drawing two reds?",
])
def test_math_is_reasoning(text: str) -> None:
    assert run(user(text)) == ("reasoning", ["openai/gpt-5.1", "anthropic/claude-opus-4.5"])


def test_math_wins_over_weak_code_words() -> None:
    assert run(user("Prove that the function f(x) = x^2 is continuous."))[0] == "proof"
    assert run(user("Let the variable x satisfy the equation x^2 = 2."))[0] == "reasoning"


def test_strong_code_wins_over_math() -> None:
    assert run(user("Write Python that solves the equation numerically."))[0] == "code"


def test_very_long_document_is_long_context() -> None:
    doc = prose(600 * 1024)  # a 300-page report, ~600 KB of text
    msgs = [SYSTEM, user("Summarise the key findings of this report:\n\n" + doc)]
    body = msgspec.json.encode({"model": "auto", "messages": [msgspec.to_builtins(m) for m in msgs]})
    tokens = len(body) // 4  # the gateway's own estimate (handlers.estimate_prompt_tokens)
    assert tokens > POLICY.long_context_tokens
    rule, models = run(*msgs, tokens=tokens)
    assert rule == "long_context"
    assert models[0] == "meta-llama/llama-4-scout:free"


def test_large_but_not_long_prompt_uses_the_window() -> None:
    # 40 KB of prose with the question at the end: not long context; the question decides.
    text = prose(40 * 1024) + "\n\nProve that the sum of two even numbers is even."
    assert run(user(text))[0] == "proof"
    text = "Fix the bug in this module:\n" + prose(40 * 1024)
    assert run(user(text))[0] == "code"
    # A fence inside the first fence_scan_chars counts, even far from both ends.
    text = prose(8 * 1024) + "\n```\nx = 1\n```\n" + prose(8 * 1024)
    assert run(user(text))[0] == "code"
    # Keywords deep in the middle of a long text are not looked at.
    text = prose(8 * 1024) + " theorem " + prose(8 * 1024)
    assert run(user(text))[0] == "default"


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,AA"}},
])
def test_image_audio_file_is_multimodal(part: dict[str, Any]) -> None:
    msg = user([{"type": "text", "text": "What is in this?"}, part])
    assert run(SYSTEM, msg) == ("multimodal", ["google/gemini-3-pro-preview"])


def test_image_earlier_in_the_conversation_counts() -> None:
    img = user([{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}])
    later = [Message(role="assistant", content="A cat."), user("And its colour?")]
    assert run(img, *later)[0] == "multimodal"


def test_budget_sends_to_free_models_and_back() -> None:
    policy = AutoPolicy(budget_usd_per_hour=5.0)
    msg = user(PYTHON_QUESTION)
    rule, models = run(msg, spend=5_000_001, policy=policy)
    assert (rule, models) == ("budget", ["meta-llama/llama-4-maverick:free",
                                         "meta-llama/llama-4-scout:free"])
    assert run(msg, spend=4_999_999, policy=policy)[0] == "code"
    assert run(msg, spend=None, policy=policy)[0] == "code"
    # Budget beats multimodal: Maverick reads images.
    img = user([{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}])
    assert run(img, spend=6_000_000, policy=policy)[0] == "budget"


def test_budget_off_by_default_and_per_account_override() -> None:
    msg = user("Hi")
    assert run(msg, spend=10**12)[0] == "default"
    assert run(msg, spend=2_000_000, budget_micro=1_000_000)[0] == "budget"
    assert run(msg, spend=500_000, budget_micro=1_000_000)[0] == "default"


def test_short_follow_up_looks_at_the_previous_user_message() -> None:
    msgs = [user(PYTHON_QUESTION), Message(role="assistant", content="len([]) is 0."),
            user("Why?")]
    assert run(*msgs)[0] == "code"


def test_no_user_text() -> None:
    assert run(SYSTEM)[0] == "default"
    assert run(SYSTEM, user(None), user([]))[0] == "default"


def test_text_parts_are_read() -> None:
    msg = user([{"type": "text", "text": "Prove the lemma"}, {"type": "text", "text": "below."}])
    assert run(msg)[0] == "proof"


def test_non_ascii_text() -> None:
    assert run(user("Bonjour, ça va ? 你好，今天天气怎么样？")) [0] == "default"
    assert run(user("Démontrez le théorème de Pythagore: proof please"))[0] == "proof"


def test_custom_policy_from_a_config_table() -> None:
    table = {
        "long_context_tokens": 1000,
        "budget_usd_per_hour": 0.5,
        "rules": {"code": ["anthropic/claude-3.5-sonnet", "mistralai/codestral"],
                  "default": ["openai/gpt-4o-mini"]},
        "code_keywords": ["terraform"],
        "proof_keywords": ["demonstrate rigorously"],
    }
    policy = load_policy(table)
    assert run(user("Hello"), policy=policy) == ("default", ["openai/gpt-4o-mini"])
    assert run(user("My terraform plan fails"), policy=policy)[0] == "code"
    assert run(user("My terraform plan fails"), policy=policy)[1][0] == "anthropic/claude-3.5-sonnet"
    # The default code words were replaced, not extended.
    assert run(user("Explain this python traceback"), policy=policy)[0] == "default"
    assert run(user("Please demonstrate rigorously that 2 > 1"), policy=policy)[0] == "proof"
    assert run(user("x"), tokens=1001, policy=policy)[0] == "long_context"
    assert run(user("x"), spend=600_000, policy=policy)[0] == "budget"
    # Rules the table does not name keep their defaults.
    assert policy.models("multimodal") == tuple(DEFAULT_RULES["multimodal"])


def test_policy_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^auto\.long_context_tokens: "):
        load_policy({"long_context_tokens": 0})
    with pytest.raises(ConfigError, match=r"^auto: unknown auto rule 'math'"):
        load_policy({"rules": {"math": ["x"]}})
    with pytest.raises(ConfigError, match=r"^auto\.colour: unknown key"):
        load_policy({"colour": "blue"})


def test_default_rules_name_catalog_models() -> None:
    cfg = config.parse(merge(builtin_document(), {}))
    assert POLICY.unknown_models(cfg.models) == []
    assert set(RULE_ORDER) == set(DEFAULT_RULES)


def test_restricted_policy_falls_back_to_default() -> None:
    known = {"google/gemini-2.5-flash", "openai/gpt-5.1"}
    policy = POLICY.restricted(known)
    assert run(user("Fix this python bug"), policy=policy) == ("code", ["google/gemini-2.5-flash"])
    assert run(user("Prove it"), policy=policy) == ("proof", ["openai/gpt-5.1"])
    assert policy.unknown_models(known) == []


def test_auto_ids() -> None:
    assert AUTO_MODELS == {"auto", "openrouter/auto"}
    assert is_auto("auto") and is_auto("openrouter/auto")
    assert not is_auto("openai/gpt-4o") and not is_auto(None)


def test_works_on_decoded_requests() -> None:
    req = decode_chat(msgspec.json.encode({"model": "auto", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "What is in this picture?"},
                                     {"type": "image_url", "image_url": {"url": "data:,"}}]}]}))
    assert classify(POLICY, req.messages, False, 20, None)[0] == "multimodal"


def test_returned_list_is_a_copy() -> None:
    _, models = run(user("Hi"))
    models.append("x")
    assert run(user("Hi"))[1] == ["google/gemini-2.5-flash"]
