"""Invites: `python -m chalicelib.cli user invite USER_ID` prints a single-use, expiring link at which the user
sets the password they sign in with."""

from __future__ import annotations

import html
import secrets
from urllib.parse import urlencode

from chalicelib.db import Database
from chalicelib.oauth import passwords
from chalicelib.oauth.pages import STYLE, Page, _origin, message
from chalicelib.oauth.protocol import OAuthError, digest, form


def create(db: Database, public_url: str, user_id: str, days: int) -> str | None:
    """The invite link for the user, valid `days` days; None if there is no such user."""
    token = secrets.token_urlsafe(32)
    row = db.one("create_invite", token_hash=digest(token), user_id=user_id, days=days)
    return None if row is None else f"{public_url}/invite?{urlencode({'token': token})}"


def page(db: Database, *, method: str, token: str, body: bytes, headers: dict[str, str], issuer: str) -> Page:
    """GET: the form to set a password; POST: set it, once."""
    state = db.one("invite_state", token_hash=digest(token)) if token else None
    if state is None or state["used"] or state["expired"]:
        why = "was already used" if state and state["used"] else "has expired" if state else "is not valid"
        return message(
            "Invite", f"This invite link {why}. Ask your administrator for a new one.", 410 if state else 404
        )
    if method == "GET":
        return _form(state["user_id"], token, issuer, error=None, status=200)
    if (headers.get("sec-fetch-site") or "same-origin") not in ("same-origin", "none") or headers.get(
        "origin", _origin(issuer)
    ) != _origin(issuer):
        return message("Invite", "A password set from another site was refused.", 403)
    try:
        fields = form(body)
    except OAuthError as error:
        return message("Invite", error.description, 400)
    password = fields.get("password", "")
    if len(password) < passwords.MIN_LENGTH:
        return _form(
            state["user_id"], token, issuer, error=f"Use at least {passwords.MIN_LENGTH} characters.", status=400
        )
    if password != fields.get("confirm"):
        return _form(state["user_id"], token, issuer, error="The two passwords differ.", status=400)
    if db.one("use_invite", token_hash=digest(token), password_hash=passwords.hash_password(password)) is None:
        return message("Invite", "This invite link was already used.", 410)
    return message("Invite", f"The password of {state['user_id']} is set. You can sign in now.", 200)


def _form(user_id: str, token: str, issuer: str, *, error: str | None, status: int) -> Page:
    body = (
        "<!doctype html><html lang=en><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        f"<title>Set your password</title><style>{STYLE}</style><h1>Set the password of {html.escape(user_id)}</h1>"
        + (f"<p class=error role=alert>{html.escape(error)}</p>" if error else "")
        + f'<form method=post action="{html.escape(issuer)}/invite?{html.escape(urlencode({"token": token}))}">'
        "<label>Password <input name=password type=password autocomplete=new-password "
        f"minlength={passwords.MIN_LENGTH} required></label>"
        "<label>Again <input name=confirm type=password autocomplete=new-password required></label>"
        "<button>Set password</button></form></html>"
    )
    return Page(status, body)
