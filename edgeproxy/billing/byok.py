"""BYOK provider keys sealed at rest with a secret from the environment (SPEC §5.4, §10).

The standard library has no block cipher, so sealing is encrypt-then-MAC built from HMAC-SHA256:
a keystream HMAC(k_enc, nonce || counter) XORed with the plaintext (HMAC as a PRF in counter
mode, NIST SP 800-108 style), then a tag HMAC(k_mac, nonce || ciphertext). Two keys are derived
from the one secret; a fresh 16-byte random nonce per sealing. Tampering or a wrong secret fails
the tag check, and nothing about the key ever reaches a log or an error.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

__all__ = ["SealError", "open_sealed", "seal"]

_VERSION = b"v1"


class SealError(ValueError):
    pass


def _keys(secret: str) -> tuple[bytes, bytes]:
    root = hashlib.sha256(b"edgeproxy-byok/" + secret.encode()).digest()
    return (hmac.new(root, b"enc", hashlib.sha256).digest(),
            hmac.new(root, b"mac", hashlib.sha256).digest())


def _stream(k: bytes, nonce: bytes, n: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hmac.new(k, nonce + counter.to_bytes(8, "big"), hashlib.sha256).digest()
        counter += 1
    return bytes(out[:n])


def seal(plaintext: str, secret: str) -> str:
    if not secret:
        raise SealError("no BYOK secret configured")
    k_enc, k_mac = _keys(secret)
    nonce = os.urandom(16)
    data = plaintext.encode()
    ct = bytes(a ^ b for a, b in zip(data, _stream(k_enc, nonce, len(data)), strict=True))
    tag = hmac.new(k_mac, _VERSION + nonce + ct, hashlib.sha256).digest()
    return (_VERSION + b"." + base64.urlsafe_b64encode(nonce + ct + tag)).decode()


def open_sealed(sealed: str, secret: str) -> str:
    try:
        version, _, body = sealed.encode().partition(b".")
        raw = base64.urlsafe_b64decode(body)
    except (ValueError, UnicodeError):
        raise SealError("sealed key is malformed") from None
    if version != _VERSION or len(raw) < 48:
        raise SealError("sealed key is malformed")
    nonce, ct, tag = raw[:16], raw[16:-32], raw[-32:]
    k_enc, k_mac = _keys(secret)
    if not hmac.compare_digest(tag, hmac.new(k_mac, _VERSION + nonce + ct, hashlib.sha256).digest()):
        raise SealError("sealed key failed its integrity check (wrong secret?)")
    return bytes(a ^ b for a, b in zip(ct, _stream(k_enc, nonce, len(ct)), strict=True)).decode()
