"""Local passwords: argon2id (OWASP's parameters), and a check that takes as long for an unknown user."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from argon2 import PasswordHasher

MIN_LENGTH = 12


@functools.lru_cache(maxsize=1)
def hasher() -> PasswordHasher:
    from argon2 import PasswordHasher

    return PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


@functools.lru_cache(maxsize=1)
def _decoy() -> str:
    return hasher().hash("a password nobody has")


def hash_password(password: str) -> str:
    return hasher().hash(password)


def verify(stored: str | None, password: str) -> bool:
    """Whether the password matches; an unknown user is checked against a decoy, so both take as long."""
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return hasher().verify(stored or _decoy(), password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False
