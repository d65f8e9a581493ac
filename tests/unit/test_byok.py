"""BYOK keys sealed at rest: AES-GCM bound to account and provider, and the old rows migrated."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edgeproxy.billing.byok import SealError, current, open_sealed, seal
from edgeproxy.billing.ledger import Ledger
from edgeproxy.billing.service import Billing
from edgeproxy.billing.store import open_driver
from edgeproxy.config import BillingConfig

SECRET = "byok-unit-secret"
# Sealed by the previous format (v1: HMAC-SHA256 keystream and tag, bound to nothing) with the
# secret "legacy-secret": a row as an older gateway left it in the ledger.
LEGACY_SECRET = "legacy-secret"
LEGACY_KEY = "sk-legacy-provider-key-0001"
LEGACY_ROW = ("v1.MtMdjn9VisgHRLdVknRx5aDgkguSBYu-rJ9c2YA7gu_Xdvu5GHEQQ_imxUpixz6mD78a_9TWuKs23t"
              "iHIAuzMdSjObsR424qklrr")


def test_a_sealed_key_opens_for_its_account_and_provider_only() -> None:
    sealed = seal("sk-live-1234567890", SECRET, "acct_a", "openai")
    assert current(sealed) and "sk-live" not in sealed
    assert open_sealed(sealed, SECRET, "acct_a", "openai") == "sk-live-1234567890"
    for account, provider in [("acct_b", "openai"), ("acct_a", "anthropic"),
                              ("acct_a|openai", ""), ("acct_", "a|openai")]:
        with pytest.raises(SealError):
            open_sealed(sealed, SECRET, account, provider)
    with pytest.raises(SealError):
        open_sealed(sealed, "another-secret", "acct_a", "openai")


def test_each_sealing_is_fresh_and_any_changed_byte_is_refused() -> None:
    a = seal("sk-same", SECRET, "acct_a", "openai")
    b = seal("sk-same", SECRET, "acct_a", "openai")
    assert a != b  # a new salt and nonce each time
    body = a.partition(".")[2]
    for i in range(0, len(body), 7):
        flipped = body[:i] + ("A" if body[i] != "A" else "B") + body[i + 1:]
        with pytest.raises(SealError):
            open_sealed("v2." + flipped, SECRET, "acct_a", "openai")
    for junk in ["", "v2.", "v2.!!!", "v9." + body, body, "v1.AAAA"]:
        with pytest.raises(SealError):
            open_sealed(junk, SECRET, "acct_a", "openai")


def test_no_secret_no_sealing() -> None:
    with pytest.raises(SealError):
        seal("sk-x", "", "acct_a", "openai")


def test_a_legacy_row_still_opens_and_is_not_current() -> None:
    assert not current(LEGACY_ROW)
    assert open_sealed(LEGACY_ROW, LEGACY_SECRET, "any", "any") == LEGACY_KEY
    with pytest.raises(SealError):
        open_sealed(LEGACY_ROW, SECRET, "any", "any")


async def test_start_reseals_legacy_rows_and_a_moved_row_cannot_be_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("EDGEPROXY_BYOK_SECRET", LEGACY_SECRET)
    ledger = Ledger(open_driver(f"sqlite:///{tmp_path}/ledger.db"))
    await ledger.open()
    a = await ledger.create_account("a")
    b = await ledger.create_account("b")
    await ledger.put_byok(a.id, "openai", LEGACY_ROW)
    await ledger.close()

    ledger = Ledger(open_driver(f"sqlite:///{tmp_path}/ledger.db"))
    billing = Billing(ledger, BillingConfig(), "keys")
    caplog.set_level(logging.INFO, "edgeproxy.billing")
    await billing.start()
    try:
        # Re-sealed in place, bound to where it was found, and in use.
        [(account, provider, sealed)] = await ledger.byok_keys()
        assert (account, provider) == (a.id, "openai") and current(sealed)
        assert open_sealed(sealed, LEGACY_SECRET, a.id, "openai") == LEGACY_KEY
        assert billing._byok_for(a.id) == {"openai": LEGACY_KEY}
        assert "sealed 1 BYOK key(s) again" in caplog.text

        # The row copied to another account, or to another provider: it opens for neither.
        await ledger.put_byok(b.id, "openai", sealed)
        await ledger.put_byok(a.id, "anthropic", sealed)
        await billing.refresh()
        assert billing._byok_for(b.id) == {}
        assert billing._byok_for(a.id) == {"openai": LEGACY_KEY}
        assert caplog.text.count("cannot be opened") == 2
        await billing.refresh()  # remembered: not opened (nor logged) again
        assert caplog.text.count("cannot be opened") == 2
        assert LEGACY_KEY not in caplog.text
    finally:
        await billing.stop()
