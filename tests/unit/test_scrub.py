"""Key material in a provider's error text never goes further than the gateway."""

from __future__ import annotations

import pytest

from edgeproxy.errors import REDACTED, UpstreamStatusError, scrub

QUOTED = [
    # what providers say, with the key they were sent
    ("Incorrect API key provided: sk-proj-********************************************abcd. "
     "You can find your API key at https://platform.openai.com/account/api-keys.",
     "sk-proj-", "abcd"),
    ("Incorrect API key provided: sk-****eeee.", "sk-", "eeee"),
    ("Incorrect API key provided: sk-abc12***************************wxyz", "abc12", "wxyz"),
    ("invalid key sk-...wxyz", "sk-", "wxyz"),
    ("invalid x-api-key sk-ant-api03-AbCdEf0123456789_-xyz", "sk-ant", "xyz"),
    ("API key not valid: AIzaSyA-0123456789abcdefghijklmnopqrstu", "AIza", "rstu"),
    ("key gsk_0123456789abcdefABCDEF rejected", "gsk_", "ABCDEF"),
    ("xai-0123456789abcdef is not a valid key", "xai-", "abcdef"),
    ("forwarded Authorization: Bearer t0k3n-value.with.dots", "t0k3n", "dots"),
    ("token 1234****5678 expired", "1234", "5678"),
]


@pytest.mark.parametrize(("text", "head", "tail"), QUOTED)
def test_key_shapes_and_redacted_keys_are_scrubbed(text: str, head: str, tail: str) -> None:
    out = scrub(text)
    assert REDACTED in out and head not in out and tail not in out


def test_the_keys_the_gateway_sent_are_scrubbed_whatever_their_shape() -> None:
    sent = "0f3c9a77d2e14b6b8e5f1a2c3d4e5f60"  # no known prefix: found only because it was sent
    raw = {"error": {"message": f"key {sent} unknown", "param": None,
                     "details": [f"tried {sent}", 3]}}
    assert scrub(raw, sent) == {"error": {"message": f"key {REDACTED} unknown", "param": None,
                                          "details": [f"tried {REDACTED}", 3]}}
    assert scrub("short ab12", "ab12") == "short ab12"  # too short to be a key: left alone


def test_ordinary_error_text_is_left_alone() -> None:
    for text in ["model gpt-4o-mini does not exist", "max_tokens must be <= 4096",
                 "task-1234 on desk-top failed", "rate limit reached for requests per min",
                 "Please retry after 20s", "https://docs.example.com/errors#sk"]:
        assert scrub(text) == text


def test_every_upstream_error_is_scrubbed_where_it_is_made() -> None:
    raw = {"error": {"message": "Incorrect API key provided: sk-****eeee.",
                     "code": "invalid_api_key"}}
    err = UpstreamStatusError("acme answered HTTP 401: Incorrect API key provided: sk-****eeee.",
                              "acme", raw, upstream_status=401)
    assert "eeee" not in err.message and "eeee" not in str(err.metadata)
    assert err.raw == {"error": {"message": f"Incorrect API key provided: {REDACTED}.",
                                 "code": "invalid_api_key"}}
    assert b"eeee" not in err.to_body()


def test_scrubbing_ends_on_hostile_text() -> None:
    # Linear: a pattern that backtracks over such text would outlast the test's timeout.
    for text in ["a" * 200_000 + "*", "sk-" + "a" * 200_000, "*" * 200_000,
                 "-" * 100_000 + "***" + "-" * 100_000, "Bearer " * 30_000]:
        assert isinstance(scrub(text), str)
