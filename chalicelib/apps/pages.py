"""/usage: the usage view as a web page, for a user signed in through the server's own sign-in.

The page is a client of this server's authorization server, as any app is: a visitor without a live token is
sent to /authorize (code with PKCE, the usage page as the client), and the callback keeps the access and refresh
tokens in HttpOnly cookies scoped to /usage. The page then runs the same tools a host would
(chitty_usage_analytics by model, chitty_usage_limits_get) as the signed-in user, and serves the usage view with
their results inside it; the view's controls are a GET form, so the page needs no script to fetch anything.
Admins may choose a user; an admin signed in without the admin scope is sent to sign in again for it.
"""

from __future__ import annotations

import datetime
import html
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from chalicelib import auth
from chalicelib.apps import view_html
from chalicelib.db import Database
from chalicelib.mcp import Registry, ToolCall, ToolError, ToolResult
from chalicelib.mcp.errors import InsufficientScope
from chalicelib.oauth import protocol
from chalicelib.oauth.pages import Page, message

CLIENT_ID = "chitty-usage-page"
CLIENT_NAME = "ChittyOS usage page"
ACCESS_COOKIE = "chitty_usage"
REFRESH_COOKIE = "chitty_usage_refresh"
LOGIN_COOKIE = "chitty_usage_login"
DEFAULT_DAYS = 30
# When this container last made sure the page's client is registered, by callback URL: at most once an hour
# a visitor costs a write (the daily upkeep deletes clients unused for a week).
_client_ensured: dict[str, float] = {}
CLIENT_CHECK_S = 3600.0
# The usage page: the sign-in pages' headers, but for its inline script and its GET form.
PAGE_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}


@dataclass(frozen=True)
class Site:
    """Where the page lives: the issuer (CHITTY_PUBLIC_URL) and the MCP URL its tokens are bound to."""

    public_url: str
    resource: str

    @property
    def page_url(self) -> str:
        return f"{self.public_url}/usage"

    @property
    def callback_url(self) -> str:
        return f"{self.public_url}/usage/callback"

    def cookie(self, name: str, value: str, max_age: int) -> str:
        """A Set-Cookie value: HttpOnly, SameSite=Lax, scoped to the page, Secure over https."""
        secure = "; Secure" if self.public_url.startswith("https://") else ""
        path = (urlsplit(self.public_url).path or "") + "/usage"
        return f"{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"


def cookies_of(header: str | None) -> dict[str, str]:
    """The cookies of a Cookie header, the first of each name (the one with the longest path); a malformed
    cookie of another site's part of the path spoils none of the others."""
    found: dict[str, str] = {}
    for pair in (header or "").split(";"):
        name, separator, value = pair.strip().partition("=")
        if separator and name and name not in found:
            found[name] = value.strip()
    return found


def usage_page(db: Database, registry: Registry, site: Site, query: dict[str, str], cookie_header: str | None) -> Page:
    """GET /usage: the signed-in user's usage (or, for an admin, the chosen user's), or the way to sign in."""
    jar = cookies_of(cookie_header)
    refreshed: list[str] = []
    principal = _principal(db, site, jar.get(ACCESS_COOKIE))
    if principal is None and jar.get(REFRESH_COOKIE):
        principal, refreshed = _refresh(db, site, jar[REFRESH_COOKIE])
    if principal is None:
        return _with_cookies(_to_sign_in(db, site, query, admin=False), refreshed)
    arguments, shown = _analytics_arguments(query, principal)
    data: dict[str, Any] = {
        "analytics": None,
        "limits": None,
        # The list of users is an admin's, with the admin scope.
        "users": [row["id"] for row in db.all("user_ids")] + ["*"] if principal.is_admin else None,
        "user_id": shown,
        "query": {key: arguments[key] for key in ("start_date", "end_date", "granularity")},
    }
    status = 200
    try:
        data["analytics"] = _run(registry, "chitty_usage_analytics", arguments, principal)
        # Everyone's usage has no one budget: the view then shows none.
        if shown != "*":
            data["limits"] = _run(registry, "chitty_usage_limits_get", {"user_id": shown}, principal)
    except InsufficientScope:
        return _with_cookies(_to_sign_in(db, site, query, admin=True), refreshed)
    except ToolError as error:
        data["error"], status = error.message, 400
    # Inside a <script> element: "<" is escaped so that no text in the data can close it.
    script = '<script type="application/json" id="chitty-data">' + json.dumps(data).replace("<", "\\u003c")
    sign_out = (
        f'<form method=post action="{html.escape(site.page_url)}/sign-out" '
        'style="max-width:64rem;margin:0 auto;padding:0 1rem 1rem"><button>Sign out</button></form>'
    )
    body = view_html("ui://chitty/usage.html").replace("</body>", script + "</script>" + sign_out + "</body>", 1)
    return Page(status, body, dict(PAGE_HEADERS), refreshed)


def _with_cookies(page: Page, cookies: list[str]) -> Page:
    """The page, also setting these cookies first (a refresh's new tokens must not be lost on a redirect)."""
    page.cookies[:0] = cookies
    return page


def callback(db: Database, site: Site, query: dict[str, str], cookie_header: str | None) -> Page:
    """GET /usage/callback: back from sign-in with a code; the tokens go into the page's cookies."""
    login = cookies_of(cookie_header).get(LOGIN_COOKIE, "")
    state, _, rest = login.partition(".")
    verifier, _, back = rest.partition(".")
    answered = query.get("state", "").encode()
    if not state or not secrets.compare_digest(state.encode(), answered) or query.get("iss") != site.public_url:
        return _message("This sign-in did not start here, or has expired: open the usage page again.", 400)
    clear_login = site.cookie(LOGIN_COOKIE, "", 0)
    if query.get("error"):
        return _message("You did not allow the usage page to sign you in.", 403, [clear_login])
    answer = protocol.token(
        db,
        urlencode(
            {
                "grant_type": "authorization_code",
                "code": query.get("code", ""),
                "redirect_uri": site.callback_url,
                "client_id": CLIENT_ID,
                "code_verifier": verifier,
            }
        ).encode(),
        site.resource,
    )
    if answer.status != 200:
        return _message("Signing in did not complete: open the usage page again.", 400, [clear_login])
    location = site.page_url + ("?" + back if back else "")
    return Page(
        302, "", {"Location": location, "Cache-Control": "no-store"}, [clear_login, *_token_cookies(site, answer)]
    )


def sign_out(db: Database, site: Site, cookie_header: str | None, headers: dict[str, str]) -> Page:
    """POST /usage/sign-out: revoke the page's grant and forget its cookies; from this site only (another site
    could otherwise drop the cookies and leave the grant alive)."""
    origin = urlsplit(site.public_url)
    if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none") or headers.get("origin") not in (
        None,
        f"{origin.scheme}://{origin.netloc}",
    ):
        return _message("A sign-out from another site was refused.", 403)
    jar = cookies_of(cookie_header)
    for name in (REFRESH_COOKIE, ACCESS_COOKIE):
        if jar.get(name):
            protocol.revoke(db, urlencode({"token": jar[name], "client_id": CLIENT_ID}).encode())
    cleared = [site.cookie(name, "", 0) for name in (ACCESS_COOKIE, REFRESH_COOKIE)]
    return _message("You are signed out of the usage page.", 200, cleared, link=site.page_url)


def _principal(db: Database, site: Site, token: str | None) -> auth.Principal | None:
    if not token:
        return None
    found = auth.authenticate(db, f"Bearer {token}", resource=site.resource)
    return found if isinstance(found, auth.Principal) else None


def _refresh(db: Database, site: Site, refresh_token: str) -> tuple[auth.Principal | None, list[str]]:
    answer = protocol.token(
        db,
        urlencode({"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": CLIENT_ID}).encode(),
        site.resource,
    )
    if answer.status != 200:
        return None, [site.cookie(REFRESH_COOKIE, "", 0)]
    return _principal(db, site, answer.body["access_token"]), _token_cookies(site, answer)


def _token_cookies(site: Site, answer: protocol.Answer) -> list[str]:
    return [
        site.cookie(ACCESS_COOKIE, answer.body["access_token"], answer.body["expires_in"]),
        site.cookie(REFRESH_COOKIE, answer.body["refresh_token"], protocol.REFRESH_TTL_S),
    ]


def _to_sign_in(db: Database, site: Site, query: dict[str, str], *, admin: bool) -> Page:
    """Send the browser to /authorize with the page as the client; the way back is kept in a cookie."""
    if _client_ensured.get(site.callback_url, 0.0) < time.monotonic() - CLIENT_CHECK_S:
        db.one(
            "ensure_first_party_client", client_id=CLIENT_ID, client_name=CLIENT_NAME, redirect_uri=site.callback_url
        )
        _client_ensured[site.callback_url] = time.monotonic()
    state, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    wanted = {key: query[key] for key in ("start_date", "end_date", "granularity", "user_id") if query.get(key)}
    login = f"{state}.{verifier}.{urlencode(wanted)}"
    authorize = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": site.callback_url,
        "code_challenge": protocol.s256(verifier),
        "code_challenge_method": "S256",
        "state": state,
        "scope": "mcp mcp:admin" if admin else "mcp",
        "resource": site.resource,
    }
    location = f"{site.public_url}/authorize?{urlencode(authorize)}"
    cookie = site.cookie(LOGIN_COOKIE, login.replace(";", "").replace(" ", ""), 600)
    return Page(302, "", {"Location": location, "Cache-Control": "no-store"}, [cookie])


def _analytics_arguments(query: dict[str, str], principal: auth.Principal) -> tuple[dict[str, Any], str]:
    today = datetime.datetime.now(datetime.UTC).date()
    shown = query.get("user_id") or principal.user_id
    arguments: dict[str, Any] = {
        "start_date": query.get("start_date") or (today - datetime.timedelta(days=DEFAULT_DAYS - 1)).isoformat(),
        "end_date": query.get("end_date") or today.isoformat(),
        "granularity": query.get("granularity") or "day",
        "group_by": "model",
    }
    if shown != principal.user_id:
        arguments["user_id"] = shown
    return arguments, shown


def _run(registry: Registry, name: str, arguments: dict[str, Any], principal: auth.Principal) -> dict[str, Any]:
    """A tool's structured answer, as the signed-in user; its refusal as a ToolError."""
    tool = registry.tool(name)
    tool.validate(arguments)
    answer = tool.handler(ToolCall(name=name, arguments=arguments, principal=principal))
    return answer.structured if isinstance(answer, ToolResult) else answer


def _message(text: str, status: int, cookies: list[str] | None = None, *, link: str | None = None) -> Page:
    page = message("Usage", text, status, link=(link, "Open the usage page") if link else None)
    page.cookies = list(cookies or [])
    return page
