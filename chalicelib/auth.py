"""Bearer tokens: issue, hash, and resolve to the principal who holds them."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

from chalicelib.db import Database

TOKEN_PREFIX = "chitty_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user and their role, from a live bearer token."""

    user_id: str
    role: str
    token_id: uuid.UUID
    # An admin signed in through an app that was not granted the admin scope (mcp:admin): acts as a user, and
    # an admin action asks the app to sign in again with it.
    admin_scope_missing: bool = False

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class Credential:
    """A presented bearer token, not yet checked: for tools that check it in their own first query."""

    token_hash: str


def new_token() -> str:
    """A fresh bearer token: 256 random bits, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """What the database stores instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 512:
        return None
    return token


def authenticate(
    db: Database, authorization: str | None, *, defer: bool = False, resource: str | None = None
) -> Principal | Credential | None:
    """The principal behind an Authorization header; None when missing, unknown, expired or revoked.

    With `defer`, the database is not asked: the token's hash comes back as a Credential for
    the caller to verify in its own query. An OAuth token counts only at `resource`, the MCP URL it was
    granted for; a personal token anywhere.
    """
    token = bearer_token(authorization)
    if token is None:
        return None
    if defer:
        return Credential(token_hash=hash_token(token))
    row = db.one("authenticate_token", token_hash=hash_token(token))
    if row is None or row["resource"] not in (None, resource):
        return None  # an OAuth token works only at the resource it was granted for (RFC 8707)
    return Principal(
        user_id=row["user_id"],
        role=row["role"],
        token_id=row["token_id"],
        admin_scope_missing=bool(row["admin_scope_missing"]),
    )
