"""Sign-in with an external OpenID Connect provider the operator configures (CHITTY_OIDC_*).

The sign-in page sends the user to the provider (authorization code flow with PKCE, a nonce and a state); the
provider sends them back to /oidc/callback, where the code is exchanged (this server is a confidential client)
and the ID token's claims tell who they are. The account is matched to a user by the claim the operator chose
(`email` by default, which must be verified), linked by its subject for later sign-ins, or refused unless
sign-up is allowed. The consent page that follows carries a single-use ticket instead of a password.

The ID token comes straight from the provider's token endpoint over TLS, authenticated with the client secret,
so its issuer is vouched for by TLS (OpenID Connect Core 3.1.3.7) and its signature is not checked; its
issuer, audience, expiry and nonce are. Nothing secret is stored: the state, the nonce and the PKCE verifier
are derived from the state with the client secret, and only the state's hash is kept."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from chalicelib.db import Database
from chalicelib.logs import logger
from chalicelib.oauth.protocol import digest, s256

if TYPE_CHECKING:
    from chalicelib.config import OidcProvider

TIMEOUT_S = 5.0
METADATA_TTL_S = 3600.0
# Allowed difference between the provider's clock and ours.
CLOCK_SKEW_S = 120
SCOPES = "openid email profile"
_metadata: dict[str, tuple[float, dict[str, Any]]] = {}
_metadata_lock = threading.Lock()


class SignInFailed(Exception):
    """The provider's sign-in cannot be used: a reason the user can read, and the page's status."""

    def __init__(self, reason: str, status: int = 502) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status


def callback_url(public_url: str) -> str:
    """The redirect URI to register at the provider."""
    return f"{public_url}/oidc/callback"


def _derived(secret: str, purpose: str, state: str) -> str:
    mac = hmac.new(secret.encode(), f"{purpose}:{state}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def provider_metadata(issuer: str) -> dict[str, Any]:
    """The provider's discovery document, fetched once an hour per container."""
    with _metadata_lock:
        cached = _metadata.get(issuer)
        if cached and cached[0] > time.monotonic():
            return cached[1]
    import httpx2

    try:
        response = httpx2.get(f"{issuer}/.well-known/openid-configuration", timeout=TIMEOUT_S)
        document = response.json() if response.status_code == 200 else None
    except (httpx2.HTTPError, ValueError) as error:
        logger.warning("the OpenID provider's metadata could not be read", extra={"error": type(error).__name__})
        document = None
    if not isinstance(document, dict) or document.get("issuer") != issuer:
        raise SignInFailed(f"The sign-in provider at {issuer} could not be reached; try again later.")
    for needed in ("authorization_endpoint", "token_endpoint"):
        if not isinstance(document.get(needed), str):
            raise SignInFailed(f"The sign-in provider at {issuer} has no {needed}.")
    # The ID token's signature is not checked, so what carries it and the secret must be TLS (only a provider on
    # this machine may speak plain HTTP).
    plain_allowed = urlsplit(issuer).hostname in ("127.0.0.1", "::1", "localhost")
    for name in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint"):
        endpoint = document.get(name)
        if isinstance(endpoint, str) and urlsplit(endpoint).scheme != "https" and not plain_allowed:
            raise SignInFailed(f"The sign-in provider at {issuer} gives an {name} that is not https.")
    with _metadata_lock:
        _metadata[issuer] = (time.monotonic() + METADATA_TTL_S, document)
    return document


def start(db: Database, provider: OidcProvider, secret: str, request: dict[str, str], public_url: str) -> str:
    """Remember the client's checked request and answer where to send the browser at the provider."""
    metadata = provider_metadata(provider.issuer)
    state = secrets.token_urlsafe(32)
    db.one("start_oidc_sign_in", state_hash=digest(state), request=json.dumps(request))
    query = urlencode(
        {
            "response_type": "code",
            "client_id": provider.client_id,
            "redirect_uri": callback_url(public_url),
            "scope": SCOPES,
            "state": state,
            "nonce": _derived(secret, "nonce", state),
            "code_challenge": s256(_derived(secret, "pkce", state)),
            "code_challenge_method": "S256",
        }
    )
    endpoint = metadata["authorization_endpoint"]
    return endpoint + ("&" if urlsplit(endpoint).query else "?") + query


def finish(
    db: Database, provider: OidcProvider, secret: str, query: dict[str, str], public_url: str
) -> tuple[dict[str, str], str | None]:
    """The provider's answer: the client's request it continues, and the user it signed in (None: the user
    refused at the provider). Raises SignInFailed for anything that cannot be used."""
    state = query.get("state", "")
    spent = db.one("return_oidc_sign_in", state_hash=digest(state)) if state else None
    if spent is None:
        raise SignInFailed("This sign-in has expired or was used already: start again from your application.", 400)
    request: dict[str, str] = spent["request"]
    iss_required = provider_metadata(provider.issuer).get("authorization_response_iss_parameter_supported") is True
    iss = query.get("iss")
    if (iss is None and iss_required) or (iss is not None and iss != provider.issuer):  # RFC 9207: our provider
        raise SignInFailed("The answer did not come from the configured sign-in provider.", 400)
    if query.get("error"):
        return request, None
    if not query.get("code"):
        raise SignInFailed("The sign-in provider answered without a code.", 400)
    claims = _claims(provider, secret, state, query["code"], public_url)
    identity = db.one(
        "oidc_identify",
        issuer=provider.issuer,
        subject=str(claims["sub"]),
        claim=_claim(provider, claims),
        display_name=str(claims.get("name") or ""),
        allow_sign_up=provider.sign_up,
    )
    assert identity is not None
    if identity["error"]:
        shown = _claim(provider, claims) or f"the account {claims['sub']}"
        raise SignInFailed(f"{shown} has no account on this server; ask its operator for one.", 403)
    return request, identity["user_id"]


def ticket_for(db: Database, state: str, user_id: str) -> str:
    """The single-use ticket the consent page carries for this signed-in user."""
    ticket = secrets.token_urlsafe(32)
    db.one("oidc_signed_in", state_hash=digest(state), user_id=user_id, ticket_hash=digest(ticket))
    return ticket


def _claim(provider: OidcProvider, claims: dict[str, Any]) -> str | None:
    value = claims.get(provider.claim)
    if not isinstance(value, str) or not value:
        return None
    if provider.claim == "email":
        if claims.get("email_verified") is not True:
            return None  # an address the provider has not verified names nobody
        return value.lower()  # one address, however it is written
    return value


def _claims(provider: OidcProvider, secret: str, state: str, code: str, public_url: str) -> dict[str, Any]:
    """Exchange the code and read the ID token (checked) and, for a claim it lacks, the userinfo endpoint."""
    import httpx2

    metadata = provider_metadata(provider.issuer)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": callback_url(public_url),
        "code_verifier": _derived(secret, "pkce", state),
    }
    methods = metadata.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
    headers = {"Accept": "application/json"}
    if "client_secret_basic" in methods:
        pair = f"{quote(provider.client_id, safe='')}:{quote(secret, safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    else:
        form.update(client_id=provider.client_id, client_secret=secret)
    try:
        response = httpx2.post(metadata["token_endpoint"], data=form, headers=headers, timeout=TIMEOUT_S)
        tokens = response.json()
    except (httpx2.HTTPError, ValueError) as error:
        logger.warning("the OpenID provider's token endpoint failed", extra={"error": type(error).__name__})
        raise SignInFailed("The sign-in provider could not be reached; try again.") from None
    if response.status_code != 200 or not isinstance(tokens, dict) or not isinstance(tokens.get("id_token"), str):
        error = tokens.get("error") if isinstance(tokens, dict) else None
        logger.warning("the OpenID provider refused the code", extra={"status": response.status_code, "error": error})
        raise SignInFailed("The sign-in provider did not accept the sign-in; start again from your application.")
    claims = _id_token_claims(tokens["id_token"], provider, _derived(secret, "nonce", state))
    userinfo = metadata.get("userinfo_endpoint")
    if provider.claim not in claims and isinstance(userinfo, str) and isinstance(tokens.get("access_token"), str):
        try:
            answer = httpx2.get(userinfo, headers={"Authorization": f"Bearer {tokens['access_token']}"}, timeout=5)
            extra = answer.json() if answer.status_code == 200 else {}
        except (httpx2.HTTPError, ValueError):
            extra = {}
        if isinstance(extra, dict) and extra.get("sub") == claims["sub"]:
            claims = {**extra, **claims}
    return claims


def _id_token_claims(id_token: str, provider: OidcProvider, nonce: str) -> dict[str, Any]:
    try:
        payload = id_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        raise SignInFailed("The sign-in provider sent an ID token that cannot be read.") from None
    audience = claims.get("aud") if isinstance(claims, dict) else None
    audiences = audience if isinstance(audience, list) else [audience]
    problems = [
        claims.get("iss") != provider.issuer and "issuer",
        provider.client_id not in audiences and "audience",
        len(audiences) > 1 and claims.get("azp") != provider.client_id and "authorized party",
        not (isinstance(claims.get("exp"), int | float) and claims["exp"] > time.time() - CLOCK_SKEW_S) and "expiry",
        claims.get("nonce") != nonce and "nonce",
        not (isinstance(claims.get("sub"), str) and claims["sub"]) and "subject",
    ]
    wrong = [problem for problem in problems if problem]
    if wrong:
        raise SignInFailed(f"The sign-in provider sent an ID token with a wrong {', '.join(wrong)}.")
    return claims
