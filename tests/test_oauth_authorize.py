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
from tests.conftest import PASSWORD, PUBLIC

REDIRECT = "http://127.0.0.1:9/callback"


@pytest.fixture
def client_id(signed_server) -> str:
    answer = httpx2.post(
        signed_server.base_url + "/register", json={"client_name": "Desk", "redirect_uris": [REDIRECT]}
    )
    return answer.json()["client_id"]


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


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://evil.example\\@127.0.0.1:1/callback",  # a browser reads the backslash as a path: evil.example
        "http://evil.example%5C@127.0.0.1/callback",
        "http://127.0.0.1:%0D%0ASet-Cookie:x/callback",
        "http://127.0.0.1:1/callback#fragment",
        "http://user@127.0.0.1:1/callback",
        "http://127.0.0.1.evil.example/callback",
    ],
)
def test_a_redirect_a_browser_would_read_otherwise_is_shown_never_followed(signed_server, redirect_uri):
    loopback = httpx2.post(
        signed_server.base_url + "/register",
        json={"client_name": "Legit Desktop App", "redirect_uris": ["http://127.0.0.1/callback"]},
    ).json()["client_id"]
    page = httpx2.get(signed_server.base_url + "/authorize", params=request(loopback, redirect_uri=redirect_uri))
    assert page.status_code == 400
    assert "location" not in page.headers


@pytest.mark.parametrize(
    "redirect_uri",
    ["https://evil.example\\@vscode.dev/redirect", "https://user:pass@vscode.dev/redirect", "https://a b.example/"],
)
def test_registration_refuses_a_redirect_uri_a_browser_would_read_otherwise(signed_server, redirect_uri):
    answer = httpx2.post(
        signed_server.base_url + "/register",
        json={"client_name": "Visual Studio Code", "redirect_uris": [redirect_uri]},
    )
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_redirect_uri"


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/register", '{"client_name": "a\\u0000b", "redirect_uris": ["https://ok.example/cb"]}'),
        ("/register", '{"client_name": "\\ud800", "redirect_uris": ["https://ok.example/cb"]}'),
        ("/register", '{"grant_types": [{}], "redirect_uris": ["https://ok.example/cb"]}'),
        ("/register", "[" * 100_000),
        ("/token", "grant_type=authorization_code&client_id=a%00b&code=x&redirect_uri=y&code_verifier=" + "v" * 43),
        ("/revoke", "token=x&client_id=a%00b"),
        ("/authorize", "client_id=a%00b&login=x%00&password=y&decision=allow"),
    ],
)
def test_malformed_input_is_a_clear_400_and_changes_nothing(signed_server, path, data):
    content_type = "application/json" if path == "/register" else "application/x-www-form-urlencoded"
    answer = httpx2.post(signed_server.base_url + path, content=data.encode(), headers={"Content-Type": content_type})
    assert answer.status_code == 400, answer.text


def test_a_client_id_holding_nul_is_a_page_not_a_crash(signed_server):
    page = httpx2.get(signed_server.base_url + "/authorize", params=request("a\x00b"))
    assert page.status_code == 400


def test_a_post_that_neither_allows_nor_denies_signs_nobody_in(signed_server, client_id, person):
    answer = httpx2.post(
        signed_server.base_url + "/authorize",
        data={**request(client_id), "login": person, "password": PASSWORD},
        headers={"Sec-Fetch-Site": "same-origin"},
    )
    assert answer.status_code == 400
    assert "Choose Allow or Deny" in answer.text


def test_parallel_guesses_cannot_pass_the_failure_limit(database_url, person):
    """Five failures lock a login, however many guesses arrive at once: each is counted before it is checked."""
    from concurrent.futures import ThreadPoolExecutor

    from chalicelib.db import SQL_DIR, Database, load_queries
    from chalicelib.oauth.pages import MAX_FAILURES_PER_LOGIN, _sign_in

    def guess(_: int) -> bool | str:
        db = Database(url=database_url, queries=load_queries(SQL_DIR / "queries"))
        try:
            return _sign_in(db, person, "wrong guess", "203.0.113.7")
        finally:
            db.discard()

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(guess, range(24)))
    with connection(database_url) as conn:
        counted = conn.run("SELECT count(*) FROM login_attempts WHERE login = :u", u=person)
    assert counted == [[MAX_FAILURES_PER_LOGIN]]
    assert answers.count("Wrong user or password.") == MAX_FAILURES_PER_LOGIN
    assert _sign_in_locked(database_url, person)


def _sign_in_locked(database_url: str, person: str) -> bool:
    from chalicelib.db import SQL_DIR, Database, load_queries
    from chalicelib.oauth.pages import _sign_in

    db = Database(url=database_url, queries=load_queries(SQL_DIR / "queries"))
    try:
        return str(_sign_in(db, person, PASSWORD, "203.0.113.8")).startswith("Too many")
    finally:
        db.discard()


def test_setting_a_password_spends_the_users_other_links(signed_server, database_url):
    from chalicelib.oauth.protocol import digest

    user_id = f"twice-{uuid.uuid4().hex[:8]}"
    older, newer = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    with connection(database_url) as conn:
        conn.run("INSERT INTO users (id, display_name) VALUES (:u, :u)", u=user_id)
        for token in (older, newer):
            conn.run(
                "INSERT INTO user_invites (token_hash, user_id, expires_at) VALUES (:h, :u, now() + interval '1 day')",
                h=digest(token),
                u=user_id,
            )
    done = httpx2.post(
        signed_server.base_url + "/invite", params={"token": newer}, data={"password": PASSWORD, "confirm": PASSWORD}
    )
    assert done.status_code == 200
    stale = httpx2.post(
        signed_server.base_url + "/invite", params={"token": older}, data={"password": "x" * 20, "confirm": "x" * 20}
    )
    assert stale.status_code == 410


@pytest.mark.parametrize(
    ("registered", "requested", "status"),
    [
        ("http://localhost/callback", "http://localhost:55783/callback", 200),  # as Claude Code's document says
        ("http://127.0.0.1/callback", "http://127.0.0.1:55783/callback", 200),
        ("http://[::1]/callback", "http://[::1]:55783/callback", 200),
        ("http://localhost/callback", "http://127.0.0.1:55783/callback", 400),  # another host is another URI
        ("http://localhost/callback", "http://localhost.evil.example:55783/callback", 400),
        ("http://localhost/callback", "http://localhost:55783/other", 400),
    ],
)
def test_a_loopback_redirect_differs_only_in_its_port(signed_server, registered, requested, status):
    client = httpx2.post(
        signed_server.base_url + "/register", json={"client_name": "Local app", "redirect_uris": [registered]}
    ).json()["client_id"]
    page = httpx2.get(signed_server.base_url + "/authorize", params=request(client, redirect_uri=requested))
    assert page.status_code == status
    assert "location" not in page.headers
