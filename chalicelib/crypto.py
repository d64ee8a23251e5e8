"""Sealing users' API keys: AES-256-GCM with a random nonce, bound to the user and key id.

Two schemes live side by side, chosen per row. Local: the key is sealed under
CHITTY_ENCRYPTION_KEY. Envelope (when CHITTY_KMS_KEY_ID is set): each key is sealed under a
data key of its own, which AWS KMS generates and wraps; the row keeps the wrapped data key,
and opening it asks KMS to unwrap it. Rows sealed either way keep opening whatever the
current setting, so turning KMS on (or off) needs no migration.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from botocore.client import BaseClient

NONCE_BYTES = 12
# KMS errors that mean this ciphertext will never open (not that KMS is unavailable right now).
_BROKEN_KMS_CODES = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})


class EncryptionKeyError(ValueError):
    """CHITTY_ENCRYPTION_KEY is missing or is not 32 bytes of base64."""


class SealBroken(RuntimeError):
    """A stored key cannot be opened with this encryption key (wrong key, or the row was tampered with)."""


class KeyServiceError(RuntimeError):
    """AWS KMS refused or could not be reached; the message is safe to show and says which."""


@dataclass(frozen=True)
class Sealed:
    ciphertext: bytes
    nonce: bytes
    fingerprint: str
    wrapped_data_key: bytes | None = None


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


@functools.lru_cache(maxsize=1)
def kms_client() -> BaseClient:
    """The container's KMS client (boto3 is imported here, on first use of envelope encryption)."""
    import boto3

    return boto3.client("kms")


def _encryption_context(user_id: str, key_id: str) -> dict[str, str]:
    # KMS checks it on unwrap and CloudTrail records it: a wrapped key opens only for its own row.
    return {"purpose": "chitty-api-key", "user_id": user_id, "api_key_id": key_id}


def _kms(operation: str, **arguments: Any) -> dict[str, Any]:
    """Call KMS, turning its failures into SealBroken (never opens) or KeyServiceError (try again)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return dict(getattr(kms_client(), operation)(**arguments))
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", "unknown"))
        if code in _BROKEN_KMS_CODES:
            raise SealBroken(f"AWS KMS cannot unwrap the data key of a stored API key ({code})") from None
        raise KeyServiceError(
            f"AWS KMS refused the operation on the stored API key ({code}); try again later, or tell the operator."
        ) from None
    except BotoCoreError:
        raise KeyServiceError("AWS KMS could not be reached for the stored API key; try again shortly.") from None


@dataclass(frozen=True)
class EnvelopeSealer:
    """AES-256-GCM under a fresh data key per secret, the data key generated and wrapped by AWS KMS."""

    kms_key_id: str

    def seal(self, secret: str, user_id: str, key_id: str) -> Sealed:
        """Seal `secret` under a new data key; the result carries the data key as KMS wrapped it."""
        data_key = _kms(
            "generate_data_key",
            KeyId=self.kms_key_id,
            KeySpec="AES_256",
            EncryptionContext=_encryption_context(user_id, key_id),
        )
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = AESGCM(data_key["Plaintext"]).encrypt(
            nonce, secret.encode("utf-8"), _associated_data(user_id, key_id)
        )
        return Sealed(
            ciphertext=ciphertext,
            nonce=nonce,
            fingerprint="kms:" + hashlib.sha256(str(data_key["KeyId"]).encode()).hexdigest()[:16],
            wrapped_data_key=data_key["CiphertextBlob"],
        )


def open_envelope(sealed: Sealed, user_id: str, key_id: str) -> str:
    """Open a key sealed by EnvelopeSealer: KMS unwraps its data key (whichever KMS key wrapped it)."""
    assert sealed.wrapped_data_key is not None
    data_key = _kms(
        "decrypt", CiphertextBlob=sealed.wrapped_data_key, EncryptionContext=_encryption_context(user_id, key_id)
    )
    try:
        plain = AESGCM(data_key["Plaintext"]).decrypt(
            sealed.nonce, sealed.ciphertext, _associated_data(user_id, key_id)
        )
    except InvalidTag:
        raise SealBroken("a stored API key does not open with the data key AWS KMS unwrapped for it") from None
    return plain.decode("utf-8")


@dataclass(frozen=True)
class KeyRing:
    """Seals new keys with KMS when a KMS key is configured, else locally; opens rows of either kind."""

    encryption_key: str | None
    kms_key_id: str | None = None

    @functools.cached_property
    def local(self) -> Sealer:
        """The local sealer, from CHITTY_ENCRYPTION_KEY (EncryptionKeyError when it is missing or malformed)."""
        return Sealer(parse_key(self.encryption_key))

    def seal(self, secret: str, user_id: str, key_id: str) -> Sealed:
        """Seal a new stored key: a KMS envelope when a KMS key is configured, else under the local key."""
        if self.kms_key_id:
            return EnvelopeSealer(self.kms_key_id).seal(secret, user_id, key_id)
        return self.local.seal(secret, user_id, key_id)

    def open(self, sealed: Sealed, user_id: str, key_id: str) -> str:
        """Open a stored key, the way its row was sealed (SealBroken, KeyServiceError or EncryptionKeyError)."""
        if sealed.wrapped_data_key is not None:
            return open_envelope(sealed, user_id, key_id)
        return self.local.open(sealed, user_id, key_id)
