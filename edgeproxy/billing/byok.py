"""BYOK provider keys sealed at rest with a secret from the environment (SPEC §5.4, §10).

AES-256-GCM from `cryptography` (an AEAD), one fresh key per sealing:

    sealed = "v2." base64url(salt[16] ‖ nonce[12] ‖ ciphertext ‖ tag[16])
    key    = HKDF-SHA256(secret, salt, info="edgeproxy byok v2")      (RFC 5869)
    AAD    = "edgeproxy byok v2|" account_id "|" provider

The random salt gives every sealed key its own AES key, so the random 96-bit nonce never meets
another under the same key (NIST SP 800-38D §8.2). The associated data binds a sealed key to its
account and provider: a row copied to another account or provider fails its tag, as does a
wrong secret or any changed byte. Nothing about the key ever reaches a log or an error.

Rows sealed before (`v1.`: an HMAC-SHA256 keystream and tag keyed by an unsalted hash of the
secret, bound to nothing) still open, only so that `Billing` re-seals them in this format where
it finds them (`current` tells which).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["SealError", "current", "open_sealed", "seal"]

_VERSION = "v2"
_INFO = b"edgeproxy byok v2"
_SALT, _NONCE, _TAG = 16, 12, 16


class SealError(ValueError):
    pass


def _aead(secret: str, salt: bytes) -> AESGCM:
    if not secret:
        raise SealError("no BYOK secret configured")
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO).derive(
        secret.encode())
    return AESGCM(key)


def _bound(account_id: str, provider: str) -> bytes:
    return f"{_INFO.decode()}|{account_id}|{provider}".encode()


def seal(plaintext: str, secret: str, account_id: str, provider: str) -> str:
    """`plaintext` sealed for one account's key to one provider."""
    salt, nonce = os.urandom(_SALT), os.urandom(_NONCE)
    ct = _aead(secret, salt).encrypt(nonce, plaintext.encode(), _bound(account_id, provider))
    return f"{_VERSION}.{base64.urlsafe_b64encode(salt + nonce + ct).decode()}"


def current(sealed: str) -> bool:
    """Sealed in this module's format (not yet: `Billing` re-seals it)."""
    return sealed.startswith(_VERSION + ".")


def open_sealed(sealed: str, secret: str, account_id: str, provider: str) -> str:
    """The key sealed for this account and provider; SealError for anything else."""
    version, _, body = sealed.partition(".")
    try:
        raw = base64.urlsafe_b64decode(body.encode())
    except (ValueError, UnicodeError):
        raise SealError("sealed key is malformed") from None
    if version == "v1":
        return _open_v1(raw, secret)
    if version != _VERSION or len(raw) < _SALT + _NONCE + _TAG:
        raise SealError("sealed key is malformed")
    salt, nonce, ct = raw[:_SALT], raw[_SALT:_SALT + _NONCE], raw[_SALT + _NONCE:]
    try:
        data = _aead(secret, salt).decrypt(nonce, ct, _bound(account_id, provider))
    except InvalidTag:
        raise SealError("sealed key failed its integrity check (wrong secret, or not this "
                        "account's key for this provider)") from None
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise SealError("sealed key is malformed") from None


# -- v1, read only for re-sealing ------------------------------------------------------------------


def _open_v1(raw: bytes, secret: str) -> str:
    """v1: nonce[16] ‖ ciphertext ‖ tag[32]; keystream HMAC(k_enc, nonce ‖ counter), tag
    HMAC(k_mac, "v1" ‖ nonce ‖ ciphertext), both keys from SHA-256("edgeproxy-byok/" secret)."""
    if not secret:
        raise SealError("no BYOK secret configured")
    if len(raw) < 48:
        raise SealError("sealed key is malformed")
    nonce, ct, tag = raw[:16], raw[16:-32], raw[-32:]
    root = hashlib.sha256(b"edgeproxy-byok/" + secret.encode()).digest()
    k_enc = hmac.new(root, b"enc", hashlib.sha256).digest()
    k_mac = hmac.new(root, b"mac", hashlib.sha256).digest()
    if not hmac.compare_digest(tag, hmac.new(k_mac, b"v1" + nonce + ct, hashlib.sha256).digest()):
        raise SealError("sealed key failed its integrity check (wrong secret?)")
    stream = b"".join(hmac.new(k_enc, nonce + i.to_bytes(8, "big"), hashlib.sha256).digest()
                      for i in range(-(-len(ct) // 32)))
    try:
        return bytes(a ^ b for a, b in zip(ct, stream, strict=False)).decode()
    except UnicodeDecodeError:
        raise SealError("sealed key is malformed") from None
