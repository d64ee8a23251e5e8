"""The sign-in and consent page, over HTTP as a browser posts it: a code for the right password, an error
for a wrong one, access_denied for Deny, no open redirect, a cross-site post refused, failures rate-limited."""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest

from chalicelib.db import connection
from tests.conftest import PUBLIC

REDIRECT = "http://127.0.0.1:9/callback"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def client_id(signed_server) -> str:
    answer = httpx2.post(
        signed_server.base_url + "/register", json={"client_name": "Desk", "redirect_uris": [REDIRECT]}
    )
    return answer.json()["client_id"]


@pytest.fixture
def person(database_url) -> str:
    from chalicelib.oauth.passwords import hash_password

    user_id = f"person-{uuid.uuid4().hex[:8]}"
    with connection(database_url) as conn:
        conn.run("INSERT INTO users (id, display_name) VALUES (:u, :u)", u=user_id)
        conn.run(
            "INSERT INTO user_passwords (user_id, password_hash) VALUES (:u, :h)", u=user_id, h=hash_password(PASSWORD)
        )
    return user_id


def request(client_id: str, **extra: str) -> dict[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "s-123",
        "scope": "mcp",
        "resource": f"{PUBLIC}/mcp",
        **extra,
    }


def test_the_page_signs_in_and_answers_with_a_code_state_and_issuer(signed_server, client_id, person):
    params = request(client_id)
    page = httpx2.get(signed_server.base_url + "/authorize", params=params)
    assert page.status_code == 200
    assert "Desk" in page.text
    assert "127.0.0.1" in page.text
    assert f'action="{PUBLIC}/authorize"' in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    posted = httpx2.post(
        signed_server.base_url + "/authorize",
        data={**params, "login": person, "password": PASSWORD, "decision": "allow"},
        headers={"Sec-Fetch-Site": "same-origin"},
    )
    assert posted.status_code == 302
    location = urlsplit(posted.headers["location"])
    answer = parse_qs(location.query)
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    assert answer["state"] == ["s-123"]
    assert answer["iss"] == [PUBLIC]
    assert answer["code"]


def test_a_wrong_password_is_said_on_the_page_and_deny_is_access_denied(signed_server, client_id, person):
    params = request(client_id)
    wrong = httpx2.post(
        signed_server.base_url + "/authorize", data={**params, "login": person, "password": "nope", "decision": "allow"}
    )
    assert wrong.status_code == 401
    assert "Wrong user or password." in wrong.text
    denied = httpx2.post(signed_server.base_url + "/authorize", data={**params, "decision": "deny"})
    assert denied.status_code == 302
    assert parse_qs(urlsplit(denied.headers["location"]).query)["error"] == ["access_denied"]


def test_an_unregistered_redirect_is_shown_never_followed(signed_server, client_id):
    page = httpx2.get(
        signed_server.base_url + "/authorize", params=request(client_id, redirect_uri="https://evil.example/cb")
    )
    assert page.status_code == 400
    assert "location" not in page.headers
    malformed = httpx2.get(signed_server.base_url + "/authorize", params=request(client_id, redirect_uri="http://[::1"))
    assert malformed.status_code == 400
    unknown = httpx2.get(signed_server.base_url + "/authorize", params=request("nobody-knows-this-client"))
    assert unknown.status_code == 400
    assert "location" not in unknown.headers


def test_a_loopback_redirect_may_use_any_port_and_pkce_is_required(signed_server, client_id):
    other_port = request(client_id, redirect_uri="http://127.0.0.1:54321/callback")
    assert httpx2.get(signed_server.base_url + "/authorize", params=other_port).status_code == 200
    plain = request(client_id, code_challenge_method="plain")
    refused = httpx2.get(signed_server.base_url + "/authorize", params=plain)
    assert refused.status_code == 302
    assert parse_qs(urlsplit(refused.headers["location"]).query)["error"] == ["invalid_request"]


def test_a_sign_in_posted_from_another_site_is_refused(signed_server, client_id, person):
    data = {**request(client_id), "login": person, "password": PASSWORD, "decision": "allow"}
    cross = httpx2.post(signed_server.base_url + "/authorize", data=data, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    foreign = httpx2.post(signed_server.base_url + "/authorize", data=data, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403


def test_failed_sign_ins_are_rate_limited(signed_server, client_id, person):
    params = request(client_id)
    for _ in range(5):
        httpx2.post(
            signed_server.base_url + "/authorize",
            data={**params, "login": person, "password": "x", "decision": "allow"},
        )
    locked = httpx2.post(
        signed_server.base_url + "/authorize",
        data={**params, "login": person, "password": PASSWORD, "decision": "allow"},
    )
    assert locked.status_code == 429
    assert "Too many failed sign-ins" in locked.text


def test_an_invite_link_sets_a_password_once_and_then_signs_in(signed_server, client_id, database_url):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    user_id = f"invited-{uuid.uuid4().hex[:8]}"
    with connection(database_url) as conn:
        conn.run("INSERT INTO users (id, display_name) VALUES (:u, :u)", u=user_id)
    env = {**os.environ, "CHITTY_DATABASE_URL": database_url, "CHITTY_PUBLIC_URL": PUBLIC}
    printed = (
        subprocess.run(
            [sys.executable, "-m", "chalicelib.cli", "user", "invite", user_id],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert printed.startswith(f"{PUBLIC}/invite?token=")
    path = printed.removeprefix(PUBLIC)
    form_page = httpx2.get(signed_server.base_url + path)
    assert form_page.status_code == 200
    assert user_id in form_page.text
    short = httpx2.post(signed_server.base_url + path, data={"password": "short", "confirm": "short"})
    assert short.status_code == 400
    assert "at least 12" in short.text
    done = httpx2.post(signed_server.base_url + path, data={"password": PASSWORD, "confirm": PASSWORD})
    assert done.status_code == 200
    assert "is set" in done.text
    again = httpx2.get(signed_server.base_url + path)
    assert again.status_code == 410
    assert "already used" in again.text
    signed_in = httpx2.post(
        signed_server.base_url + "/authorize",
        data={**request(client_id), "login": user_id, "password": PASSWORD, "decision": "allow"},
    )
    assert signed_in.status_code == 302
    assert "code=" in signed_in.headers["location"]


def test_an_expired_invite_says_so(signed_server, database_url):
    from chalicelib.oauth.protocol import digest

    token = secrets.token_urlsafe(32)
    with connection(database_url) as conn:
        user_id = f"late-{uuid.uuid4().hex[:8]}"
        conn.run("INSERT INTO users (id, display_name) VALUES (:u, :u)", u=user_id)
        conn.run(
            "INSERT INTO user_invites (token_hash, user_id, expires_at) VALUES (:h, :u, now() - interval '1 minute')",
            h=digest(token),
            u=user_id,
        )
    page = httpx2.get(signed_server.base_url + "/invite", params={"token": token})
    assert page.status_code == 410
    assert "has expired" in page.text
