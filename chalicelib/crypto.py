"""Sealing users' API keys: AES-256-GCM with a random nonce, bound to the user and key id."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12


class EncryptionKeyError(ValueError):
    """CHITTY_ENCRYPTION_KEY is missing or is not 32 bytes of base64."""


class SealBroken(RuntimeError):
    """A stored key cannot be opened with this encryption key (wrong key, or the row was tampered with)."""


@dataclass(frozen=True)
class Sealed:
    ciphertext: bytes
    nonce: bytes
    fingerprint: str


def parse_key(encoded: str | None, name: str = "CHITTY_ENCRYPTION_KEY") -> bytes:
    """The 32 raw bytes of a base64 encryption key, or a clear error saying how to make one."""
    hint = 'make one with: python -c "import base64, os; print(base64.b64encode(os.urandom(32)).decode())"'
    if not encoded:
        raise EncryptionKeyError(f"{name} is not set; {hint}")
    try:
        key = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise EncryptionKeyError(f"{name} is not valid base64; {hint}") from None
    if len(key) != 32:
        raise EncryptionKeyError(f"{name} must decode to 32 bytes, not {len(key)}; {hint}")
    return key


def _associated_data(user_id: str, key_id: str) -> bytes:
    return f"chitty-api-key:{user_id}:{key_id}".encode()


@dataclass(frozen=True)
class Sealer:
    """AES-256-GCM under one 32-byte key."""

    key: bytes

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.key).hexdigest()[:16]

    def seal(self, secret: str, user_id: str, key_id: str) -> Sealed:
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = AESGCM(self.key).encrypt(nonce, secret.encode("utf-8"), _associated_data(user_id, key_id))
        return Sealed(ciphertext=ciphertext, nonce=nonce, fingerprint=self.fingerprint)

    def open(self, sealed: Sealed, user_id: str, key_id: str) -> str:
        try:
            plain = AESGCM(self.key).decrypt(sealed.nonce, sealed.ciphertext, _associated_data(user_id, key_id))
        except InvalidTag:
            raise SealBroken("a stored API key cannot be decrypted with the current CHITTY_ENCRYPTION_KEY") from None
        return plain.decode("utf-8")
