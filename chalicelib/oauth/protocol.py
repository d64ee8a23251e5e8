"""The token-side endpoints of the authorization server: /register (RFC 7591), /token (authorization_code with
PKCE S256, refresh_token with rotation) and /revoke (RFC 7009). Public clients only: no client secrets.

Written by hand on the standard library: each exchange is one SQL function (sql/definitions/oauth.sql) that
checks and writes atomically, which a library's grant objects would split into several round trips."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from chalicelib.auth import hash_token
from chalicelib.db import Database
from chalicelib.mcp.wire import find_unfit

ACCESS_TTL_S = 3600
REFRESH_TTL_S = 30 * 86400
VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
# What a redirect URI may hold: RFC 3986's characters, without a fragment. A backslash, a space or a control
# character is read one way by Python and another by browsers (`http://evil.example\@127.0.0.1/` goes to evil).
URI_CHARACTERS = re.compile(r"[A-Za-z0-9\-._~:/?\[\]@!$&'()*+,;=%]+")
# A loopback redirect: its host and its path and query, the port left out (RFC 8252 7.3). localhost too, which
# apps publish without a port and use with one they pick (Claude Code's metadata document).
LOOPBACK_REDIRECT = re.compile(r"http://(127\.0\.0\.1|\[::1\]|localhost)(?::[0-9]{1,5})?([/?][^#]*)?")
# How deep a registration's JSON may nest (RFC 7591 metadata is flat but for a few lists).
METADATA_DEPTH = 8
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    """An OAuth error answer: {error, error_description} with its HTTP status."""

    def __init__(self, error: str, description: str = "", status: int = 400) -> None:
        super().__init__(description or error)
        self.error, self.description, self.status = error, description, status

    def answer(self) -> tuple[int, dict[str, str]]:
        body = {"error": self.error, **({"error_description": self.description} if self.description else {})}
        return self.status, body


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


# A secret (code, token, state, ticket) as the database keeps it: its SHA-256, like bearer tokens.
digest = hash_token


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def form(body: bytes) -> dict[str, str]:
    """A form's parameters; one sent twice is invalid_request (RFC 6749 3.2), an empty one counts as absent."""
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise OAuthError("invalid_request", "the form is not UTF-8") from None
    found: dict[str, str] = {}
    for name, value in pairs:
        if "\x00" in name or "\x00" in value:
            raise OAuthError("invalid_request", "a parameter holds U+0000 (NUL)")
        if name in found:
            raise OAuthError("invalid_request", f"{name} is sent twice")
        if value:
            found[name] = value
    return found


def _answer(status: int, body: dict[str, Any]) -> Answer:
    return Answer(status, body, {"Content-Type": "application/json", **NO_STORE})


def register(db: Database, body: bytes) -> Answer:
    """RFC 7591 registration of a public client: its redirect URIs (https, loopback http, or an app's own scheme)."""
    try:
        metadata = json.loads(body or b"{}")
        if not isinstance(metadata, dict) or find_unfit(metadata, METADATA_DEPTH) is not None:
            raise ValueError
    except (ValueError, RecursionError):
        return _answer(
            400,
            {"error": "invalid_client_metadata", "error_description": "send a JSON object of text PostgreSQL can hold"},
        )
    uris = metadata.get("redirect_uris")
    if not (isinstance(uris, list) and 1 <= len(uris) <= 10 and all(redirect_uri_ok(uri) for uri in uris)):
        return _answer(
            400,
            {
                "error": "invalid_redirect_uri",
                "error_description": "redirect_uris: 1 to 10 of https, loopback http, or an app's own scheme",
            },
        )
    grants = metadata.get("grant_types") or ["authorization_code", "refresh_token"]
    if not (
        isinstance(grants, list)
        and all(isinstance(grant, str) for grant in grants)
        and set(grants) <= {"authorization_code", "refresh_token"}
    ) or (metadata.get("response_types") or ["code"]) != ["code"]:
        return _answer(
            400,
            {
                "error": "invalid_client_metadata",
                "error_description": "only the authorization_code and refresh_token grants, with response type code",
            },
        )
    name = str(metadata.get("client_name") or "Unnamed client")[:100]
    client_id = "chitty_client_" + secrets.token_urlsafe(24)
    db.one("register_client", client_id=client_id, client_name=name, redirect_uris=uris)
    return _answer(
        201,
        {
            "client_id": client_id,
            "client_id_issued_at": int(time.time()),
            "client_name": name,
            "redirect_uris": uris,
            "grant_types": grants,
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        },
    )


def redirect_allowed(requested: str, registered: list[str]) -> bool:
    """Exact match, or a loopback http URI that differs only in its port (RFC 8252 7.3). Strings
    are compared, never parsed parts: a browser may parse the URI otherwise."""
    if requested in registered:
        return True
    asked = LOOPBACK_REDIRECT.fullmatch(requested)
    if asked is None or not URI_CHARACTERS.fullmatch(requested):
        return False
    return any(
        (known := LOOPBACK_REDIRECT.fullmatch(uri)) is not None and known.group(1, 2) == asked.group(1, 2)
        for uri in registered
    )


def redirect_uri_ok(uri: Any) -> bool:
    if not isinstance(uri, str) or len(uri) > 2000 or not URI_CHARACTERS.fullmatch(uri):
        return False
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError:
        return False
    if parts.username is not None or parts.password is not None:
        return False  # user info: shown as a host it is not
    if parts.scheme == "https":
        return bool(parts.hostname)
    if parts.scheme == "http":
        return parts.hostname in LOOPBACK_HOSTS
    # An app's private-use scheme (RFC 8252 7.1): reverse domain notation, never a browser's own schemes.
    return "." in parts.scheme and parts.scheme not in ("javascript", "data", "file")


def token(db: Database, body: bytes, resource: str) -> Answer:
    """The token endpoint: a code (with its PKCE verifier) or a refresh token for a new pair."""
    try:
        params = form(body)
        client_id = params.get("client_id")
        if not client_id:
            raise OAuthError("invalid_client", "client_id is required (public clients)", 401)
        if params.get("resource") and params["resource"].rstrip("/") != resource:
            raise OAuthError("invalid_target", f"this server issues tokens for {resource}")
        access, refresh = "chitty_at_" + secrets.token_urlsafe(32), "chitty_rt_" + secrets.token_urlsafe(32)
        lifetimes = {"access_ttl": f"{ACCESS_TTL_S} seconds", "refresh_ttl": f"{REFRESH_TTL_S} seconds"}
        grant_type = params.get("grant_type")
        if grant_type == "authorization_code":
            if not VERIFIER.fullmatch(params.get("code_verifier", "")):
                raise OAuthError("invalid_request", "code_verifier (PKCE, 43 to 128 characters) is required")
            if not params.get("code") or not params.get("redirect_uri"):
                raise OAuthError("invalid_request", "code and redirect_uri are required")
            row = db.one(
                "redeem_code",
                code_hash=digest(params["code"]),
                client_id=client_id,
                redirect_uri=params["redirect_uri"],
                code_challenge=s256(params["code_verifier"]),
                resource=resource if params.get("resource") else None,
                access_hash=digest(access),
                refresh_hash=digest(refresh),
                **lifetimes,
            )
        elif grant_type == "refresh_token":
            if not params.get("refresh_token"):
                raise OAuthError("invalid_request", "refresh_token is required")
            row = db.one(
                "refresh_grant",
                refresh_hash=digest(params["refresh_token"]),
                client_id=client_id,
                resource=resource if params.get("resource") else None,
                access_hash=digest(access),
                new_refresh_hash=digest(refresh),
                **lifetimes,
            )
        else:
            raise OAuthError("unsupported_grant_type", "authorization_code or refresh_token")
        assert row is not None
        if row["error"]:
            raise OAuthError(row["error"])
    except OAuthError as error:
        return _answer(*error.answer())
    return _answer(
        200,
        {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": ACCESS_TTL_S,
            "refresh_token": refresh,
            "scope": row["scope"],
        },
    )


def revoke(db: Database, body: bytes) -> Answer:
    """RFC 7009: revoke the grant behind a token of the client; an unknown token is no error."""
    try:
        params = form(body)
        if not params.get("token"):
            raise OAuthError("invalid_request", "token is required")
    except OAuthError as error:
        return _answer(*error.answer())
    db.one("revoke_grant", token_hash=digest(params["token"]), client_id=params.get("client_id", ""))
    return _answer(200, {})
