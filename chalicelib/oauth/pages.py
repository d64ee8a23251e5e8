"""The authorization endpoint: one server-rendered page that signs the user in and asks for consent.

No JavaScript, no cookie: every POST carries the password, so the only forgery to fear is a forged sign-in,
which the browser's Sec-Fetch-Site and Origin headers refuse. The page cannot be framed. Errors about the
client or its redirect URI are shown on the page (never redirected: no open redirect); the others go back
to the client with `state` and `iss` (RFC 9207)."""

from __future__ import annotations

import html
import re
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from chalicelib.config import OidcProvider, Settings
from chalicelib.db import Database
from chalicelib.oauth import passwords
from chalicelib.oauth.metadata import DEFAULT_SCOPE, SCOPES
from chalicelib.oauth.protocol import OAuthError, digest, form, redirect_allowed

CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")
# Failed sign-ins in 15 minutes after which a login (or an address) must wait.
MAX_FAILURES_PER_LOGIN = 5
MAX_FAILURES_PER_ADDRESS = 20
PAGE_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    # No form-action: browsers apply it to the redirect after the POST, which goes to the client.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
}
STYLE = (
    "body{font:16px system-ui,sans-serif;max-width:28em;margin:3em auto;padding:0 1em}"
    "label{display:block;margin:.8em 0}input{width:100%;box-sizing:border-box;padding:.4em}"
    "button{margin:.8em .5em 0 0;padding:.5em 1.2em}"
    ".error{color:#b00020}"
)


@dataclass
class Page:
    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=lambda: dict(PAGE_HEADERS))
    # Set-Cookie values (the usage page's; the sign-in pages use no cookie).
    cookies: list[str] = field(default_factory=list)


def _redirect(uri: str, params: dict[str, str], issuer: str) -> Page:
    separator = "&" if urlsplit(uri).query else "?"
    location = uri + separator + urlencode({**params, "iss": issuer})
    return Page(302, "", {"Location": location, "Cache-Control": "no-store"})


def message(title: str, text: str, status: int, *, link: tuple[str, str] | None = None) -> Page:
    """A page that says one thing (an error, or what was done); `link`: (URL, its text) to go on from there."""
    onward = f'<p><a href="{html.escape(link[0])}">{html.escape(link[1])}</a></p>' if link else ""
    body = (
        "<!doctype html><html lang=en><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        f"<title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>{onward}</html>"
    )
    return Page(status, body)


def _validated(
    db: Database, params: dict[str, str], resource: str, settings: Settings
) -> tuple[dict[str, Any], dict[str, str]]:
    """The client and the request, or a Page to show (client or redirect URI wrong) or a redirect with the error."""
    client_id = params.get("client_id", "")
    if client_id.lower().startswith("https://"):
        # A client known by the URL of its metadata document; only this path imports the fetcher (cold start).
        from chalicelib.oauth import cimd

        try:
            client = cimd.client_for(db, client_id, settings)
        except cimd.MetadataDocumentError as error:
            raise _Shown(message("Cannot sign in", str(error), 400)) from None
    else:
        client = db.one("oauth_client", client_id=client_id) if client_id else None
    if client is None:
        raise _Shown(message("Cannot sign in", "This application is not known to the server.", 400))
    redirect_uri = params.get("redirect_uri", "")
    if not redirect_allowed(redirect_uri, client["redirect_uris"]):
        raise _Shown(
            message("Cannot sign in", "This application asked to return to an address it did not register.", 400)
        )

    def refuse(error: str, description: str) -> _Refused:
        return _Refused(redirect_uri, error, description, params.get("state"))

    if params.get("response_type") != "code":
        raise refuse("unsupported_response_type", "only response_type=code")
    if params.get("code_challenge_method") != "S256" or not CHALLENGE.fullmatch(params.get("code_challenge", "")):
        raise refuse("invalid_request", "PKCE with code_challenge_method S256 is required")
    scope = params.get("scope", DEFAULT_SCOPE).split()
    if not scope or not set(scope) <= set(SCOPES):
        raise refuse("invalid_scope", f"the scopes are {' '.join(SCOPES)}")
    if params.get("resource", resource).rstrip("/") != resource:
        raise refuse("invalid_target", f"this server issues tokens for {resource}")
    return client, {**params, "scope": " ".join(dict.fromkeys(scope)), "resource": resource}


class _Shown(Exception):
    def __init__(self, page: Page) -> None:
        self.page = page


class _Refused(Exception):
    def __init__(self, redirect_uri: str, error: str, description: str, state: str | None) -> None:
        self.redirect_uri, self.error, self.description, self.state = redirect_uri, error, description, state


def authorize(
    db: Database,
    *,
    method: str,
    query: dict[str, list[str]],
    body: bytes,
    headers: dict[str, str],
    source_ip: str | None,
    issuer: str,
    resource: str,
    settings: Settings,
    oidc: OidcSignIn | None = None,
) -> Page:
    """GET shows the sign-in and consent page; POST signs in and answers the client with a code, or an error.
    With `oidc`, the page also offers the external provider, and a POST with its ticket answers the consent."""
    try:
        if method == "GET":
            pairs = [(name, value) for name, values in query.items() for value in values]
            params = form("&".join(urlencode({name: value}) for name, value in pairs).encode())
        else:
            if (headers.get("sec-fetch-site") or "same-origin") not in ("same-origin", "none"):
                return message("Cannot sign in", "A sign-in from another site was refused.", 403)
            origin = headers.get("origin")
            if origin is not None and origin != _origin(issuer):
                return message("Cannot sign in", "A sign-in from another site was refused.", 403)
            params = form(body)
        answers = {name: params.pop(name, "") for name in ("login", "password", "decision", "ticket")}
        if method == "POST" and answers["ticket"]:
            return _consented(db, answers["ticket"], answers["decision"], issuer)
        client, request = _validated(db, params, resource, settings)
    except OAuthError as error:
        return message("Cannot sign in", error.description or error.error, 400)
    except _Shown as shown:
        return shown.page
    except _Refused as refused:
        extra = {"state": refused.state} if refused.state else {}
        return _redirect(
            refused.redirect_uri, {"error": refused.error, "error_description": refused.description, **extra}, issuer
        )
    state = {"state": request["state"]} if request.get("state") else {}
    if method == "POST":
        if answers["decision"] == "deny":
            return _redirect(request["redirect_uri"], {"error": "access_denied", **state}, issuer)
        if answers["decision"] == "oidc" and oidc is not None:
            return _to_provider(db, oidc, request, issuer)
        if answers["decision"] != "allow":
            return _page(client, request, issuer, error="Choose Allow or Deny.", status=400, oidc=oidc)
        signed_in = _sign_in(db, answers["login"], answers["password"], source_ip)
        if signed_in is True:
            return _issue_code(db, answers["login"], request, issuer)
        return _page(
            client, request, issuer, error=signed_in, status=401 if "password" in signed_in else 429, oidc=oidc
        )
    return _page(client, request, issuer, error=None, status=200, oidc=oidc)


@dataclass(frozen=True)
class OidcSignIn:
    """The external OpenID provider the page offers, and the client secret the server holds for it."""

    provider: OidcProvider
    secret: str


def _issue_code(db: Database, user_id: str, request: dict[str, str], issuer: str) -> Page:
    """The user allowed: a code (single use, 60 s) for the client, bound to the PKCE challenge and the resource."""
    code = secrets.token_urlsafe(32)
    db.one(
        "store_code",
        code_hash=digest(code),
        user_id=user_id,
        client_id=request["client_id"],
        redirect_uri=request["redirect_uri"],
        scope=request["scope"],
        resource=request["resource"],
        code_challenge=request["code_challenge"],
    )
    state = {"state": request["state"]} if request.get("state") else {}
    return _redirect(request["redirect_uri"], {"code": code, **state}, issuer)


def _to_provider(db: Database, oidc: OidcSignIn, request: dict[str, str], issuer: str) -> Page:
    from chalicelib.oauth import oidc as provider_sign_in

    try:
        location = provider_sign_in.start(db, oidc.provider, oidc.secret, request, issuer)
    except provider_sign_in.SignInFailed as failed:
        return message("Cannot sign in", failed.reason, failed.status)
    return Page(302, "", {"Location": location, "Cache-Control": "no-store"})


def provider_callback(db: Database, oidc: OidcSignIn, query: dict[str, str], issuer: str) -> Page:
    """Back from the external provider: the consent page for the user it signed in, or why not."""
    from chalicelib.oauth import oidc as provider_sign_in

    try:
        request, user_id = provider_sign_in.finish(db, oidc.provider, oidc.secret, query, issuer)
    except provider_sign_in.SignInFailed as failed:
        return message("Cannot sign in", failed.reason, failed.status)
    state = {"state": request["state"]} if request.get("state") else {}
    if user_id is None:
        return _redirect(request["redirect_uri"], {"error": "access_denied", **state}, issuer)
    client = db.one("oauth_client", client_id=request["client_id"])
    if client is None:
        return message("Cannot sign in", "This application is no longer known to the server.", 400)
    ticket = provider_sign_in.ticket_for(db, query["state"], user_id)
    return _page(client, request, issuer, error=None, status=200, signed_in=(user_id, oidc.provider.name, ticket))


def _consented(db: Database, ticket: str, decision: str, issuer: str) -> Page:
    """The consent page after the external provider: its ticket names the user and the request, once."""
    spent = db.one("use_oidc_ticket", ticket_hash=digest(ticket))
    if spent is None:
        return message("Cannot sign in", "This sign-in has expired or was used already: start again.", 400)
    request: dict[str, str] = spent["request"]
    if decision != "allow":
        state = {"state": request["state"]} if request.get("state") else {}
        return _redirect(request["redirect_uri"], {"error": "access_denied", **state}, issuer)
    return _issue_code(db, spent["user_id"], request, issuer)


def _sign_in(db: Database, login: str, password: str, source_ip: str | None) -> bool | str:
    """True, or why not (shown on the page)."""
    attempt = db.one(
        "begin_sign_in",
        login=login[:200],
        source_ip=source_ip,
        per_login=MAX_FAILURES_PER_LOGIN,
        per_address=MAX_FAILURES_PER_ADDRESS,
    )
    assert attempt is not None
    if attempt["refused"]:
        return "Too many failed sign-ins: wait 15 minutes and try again."
    if not (login and passwords.verify(attempt["password_hash"], password)):
        return "Wrong user or password."
    db.one("sign_in_succeeded", attempt_id=attempt["attempt_id"])
    return True


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _page(
    client: dict[str, Any],
    request: dict[str, str],
    issuer: str,
    *,
    error: str | None,
    status: int,
    oidc: OidcSignIn | None = None,
    signed_in: tuple[str, str, str] | None = None,
) -> Page:
    """The sign-in and consent page; `signed_in` (user, provider, ticket): the user is known, only consent is asked."""
    host = urlsplit(request["redirect_uri"]).hostname or request["redirect_uri"]
    admin = "mcp:admin" in request["scope"].split()
    notes = ""
    if client["client_id"].startswith("https://"):
        notes += f"<p>It is published at <b>{html.escape(urlsplit(client['client_id']).hostname or '')}</b>.</p>"
    if host in ("127.0.0.1", "::1", "localhost"):
        notes += "<p>It runs on this computer: allow it only if you started it yourself.</p>"
    if signed_in is None:
        fields = {name: value for name, value in request.items() if name != "resource" or value}
        sign_in = (
            "<label>User <input name=login autocomplete=username required></label>"
            "<label>Password <input name=password type=password autocomplete=current-password></label>"
        )
        buttons = "<button name=decision value=allow>Allow</button>"
        if oidc is not None:
            buttons += (
                f"<button name=decision value=oidc formnovalidate>Sign in with {html.escape(oidc.provider.name)}"
                "</button>"
            )
    else:
        user_id, provider, ticket = signed_in
        fields = {"ticket": ticket}
        sign_in = f"<p>Signed in as <b>{html.escape(user_id)}</b> with {html.escape(provider)}.</p>"
        buttons = "<button name=decision value=allow>Allow</button>"
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'
        for name, value in fields.items()
    )
    body = (
        "<!doctype html><html lang=en><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        f"<title>Sign in to ChittyOS ChatGPT</title><style>{STYLE}</style>"
        f"<h1>{html.escape(client['client_name'])}</h1>"
        f"<p>wants to use ChittyOS ChatGPT as you{' with your admin rights' if admin else ''}, and will send you back "
        f"to <b>{html.escape(host)}</b>.</p>{notes}"
        + (f"<p class=error role=alert>{html.escape(error)}</p>" if error else "")
        + f'<form method=post action="{html.escape(issuer)}/authorize">{hidden}{sign_in}{buttons}'
        "<button name=decision value=deny formnovalidate>Deny</button></form></html>"
    )
    return Page(status, body)
