"""The sign-in pages in a real browser: headless Chromium (the `browser` fixture) against `make run`'s own server,
whose public URL (the issuer) is its own address. A person signs in and allows or denies a client, mistypes a
password, sets a password from an invite link; the pages work without JavaScript, cannot be framed, and refuse a
sign-in posted from another site. The client's redirect URI is its own small server on a loopback port, as a
native app's is (RFC 8252), so the test reads the code, state and iss the client gets. (Playwright's page.route
cannot stand in for it: it is not called for the hop a redirect leads to, microsoft/playwright#33882.)"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pg8000.native
import pytest

from chalicelib.oauth.protocol import digest
from tests.browser import screenshot_path
from tests.conftest import ENCRYPTION_KEY, PASSWORD, ROOT, Server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Response

CLIENT_NAME = "Desk Notes"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REFUSED = "A sign-in from another site was refused."


@dataclass(frozen=True)
class Client:
    """A client registered at /register, as a native app: its redirect URI is its own small server on a loopback
    port, which records what the browser brings back."""

    client_id: str
    redirect_uri: str
    site: LocalSite

    def arrivals(self) -> list[str]:
        """The URLs the browser came back to the client with."""
        return [url for url in self.site.requested if url.startswith(self.redirect_uri)]


@dataclass(frozen=True)
class Authorization:
    """One authorization request: the URL the client sends the browser to, its state and PKCE verifier."""

    url: str
    params: dict[str, str]
    state: str
    verifier: str


class LocalSite:
    """A small HTTP server of the test's own, on 127.0.0.1 and addressed by `host` (localhost is another site
    than 127.0.0.1): serves the pages in `pages` (by path) and records every URL the browser asked for."""

    def __init__(self, host: str) -> None:
        self.pages: dict[str, str] = {}
        self.requested: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.requested.append(site.base_url + self.path)
                page = site.pages.get(urlsplit(self.path).path)
                body = (page or "<p>Nothing here.</p>").encode()
                self.send_response(404 if page is None else 200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, name=f"site-{host}", daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def other_site() -> Iterator[LocalSite]:
    """Another site than the server's: a would-be attacker's pages."""
    site = LocalSite("localhost")
    yield site
    site.close()


@pytest.fixture
def client(run_server: Server) -> Iterator[Client]:
    """A client of its own for each test, so that what lands in the database is that test's alone."""
    site = LocalSite("127.0.0.1")
    site.pages["/callback"] = "<!doctype html><title>Client</title><p>Back at the client.</p>"
    redirect_uri = f"{site.base_url}/callback"
    answer = httpx2.post(
        run_server.base_url + "/register", json={"client_name": CLIENT_NAME, "redirect_uris": [redirect_uri]}
    )
    assert answer.status_code == 201, answer.text
    yield Client(client_id=answer.json()["client_id"], redirect_uri=redirect_uri, site=site)
    site.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile, with JavaScript on as a person's browser has it."""
    opened = browser.new_context()
    yield opened
    opened.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def authorization(server: Server, client: Client) -> Authorization:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    state = secrets.token_urlsafe(12)
    params = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": client.redirect_uri,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": state,
        "scope": "mcp",
        "resource": f"{server.base_url}/mcp",
    }
    return Authorization(f"{server.base_url}/authorize?{urlencode(params)}", params, state, verifier)


def open_page(page: Page, url: str) -> Response:
    response = page.goto(url)
    assert response is not None
    return response


def submit(page: Page, button: str) -> Response:
    """Click the button and wait for the page the form leads to (after any redirect); its response."""
    with page.expect_navigation() as navigation:
        page.click(button)
    response = navigation.value
    assert response is not None
    return response


def sign_in(page: Page, login: str, password: str) -> Response:
    """Type the user and password, and Allow."""
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", password)
    return submit(page, "button[name=decision][value=allow]")


def answer_at(url: str, client: Client) -> dict[str, str]:
    """The parameters the client got at its redirect URI (which the URL must be)."""
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == client.redirect_uri
    return {name: values[0] for name, values in parse_qs(parts.query).items()}


def screenshot(page: Page, name: str) -> Path:
    """Save the page as test-output/screenshots/oauth-NAME.png; the file, checked to be a PNG."""
    path = screenshot_path(f"oauth-{name}")
    path.unlink(missing_ok=True)
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > len(PNG_SIGNATURE)
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    return path


def png_width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")


def codes_of(conn: pg8000.native.Connection, client: Client) -> int:
    ((count,),) = conn.run("SELECT count(*) FROM oauth_codes WHERE client_id = :c", c=client.client_id)
    return int(count)


def grants_of(conn: pg8000.native.Connection, client: Client) -> list[list[object]]:
    return conn.run(
        "SELECT user_id, scope, resource, revoked_at FROM oauth_grants WHERE client_id = :c", c=client.client_id
    )


def attempts_of(conn: pg8000.native.Connection, login: str) -> list[list[object]]:
    return conn.run("SELECT succeeded, host(source_ip) FROM login_attempts WHERE login = :l ORDER BY id", l=login)


def invite_link(server: Server, database_url: str, user_id: str) -> str:
    """The link `python -m chalicelib.cli user invite USER --days 1` prints, run with the server's settings."""
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("CHITTY_", "DEBUG"))},
        "CHITTY_DATABASE_URL": database_url,
        "CHITTY_ENCRYPTION_KEY": ENCRYPTION_KEY,
        "CHITTY_PUBLIC_URL": server.base_url,
    }
    printed = subprocess.run(
        [sys.executable, "-m", "chalicelib.cli", "user", "invite", user_id, "--days", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    link = printed.strip().splitlines()[-1]
    assert link.startswith(f"{server.base_url}/invite?token=")
    return link


def new_user(conn: pg8000.native.Connection, prefix: str) -> str:
    user_id = f"{prefix}-{uuid.uuid4().hex[:8]}"
    conn.run("INSERT INTO users (id, display_name) VALUES (:u, :u)", u=user_id)
    return user_id


def test_signing_in_and_allowing_returns_a_code_state_and_issuer_that_buy_tokens(
    run_server: Server, client: Client, person: str, page: Page, conn: pg8000.native.Connection
) -> None:
    request = authorization(run_server, client)

    shown = open_page(page, request.url)
    assert shown.status == 200
    assert page.locator("h1").inner_text() == CLIENT_NAME
    assert page.get_by_text("127.0.0.1", exact=True).is_visible()
    assert page.locator(".error").count() == 0
    screenshot(page, "sign-in")

    sign_in(page, person, PASSWORD)
    assert client.arrivals() == [page.url]
    answer = answer_at(page.url, client)
    assert answer["code"]
    assert answer["state"] == request.state
    assert answer["iss"] == run_server.base_url
    assert "error" not in answer

    tokens = httpx2.post(
        run_server.base_url + "/token",
        data={
            "grant_type": "authorization_code",
            "code": answer["code"],
            "redirect_uri": client.redirect_uri,
            "client_id": client.client_id,
            "code_verifier": request.verifier,
            "resource": f"{run_server.base_url}/mcp",
        },
    )
    assert tokens.status_code == 200, tokens.text
    issued = tokens.json()
    assert issued["token_type"] == "Bearer"
    assert issued["access_token"].startswith("chitty_at_")
    assert issued["refresh_token"].startswith("chitty_rt_")
    assert issued["scope"] == "mcp"
    assert grants_of(conn, client) == [[person, "mcp", f"{run_server.base_url}/mcp", None]]
    assert attempts_of(conn, person) == [[True, "127.0.0.1"]]


def test_denying_without_signing_in_returns_access_denied_with_state_and_issuer_and_issues_nothing(
    run_server: Server, client: Client, page: Page, conn: pg8000.native.Connection
) -> None:
    request = authorization(run_server, client)
    open_page(page, request.url)

    submit(page, "button[name=decision][value=deny]")
    assert client.arrivals() == [page.url]
    answer = answer_at(page.url, client)
    assert answer == {"error": "access_denied", "state": request.state, "iss": run_server.base_url}
    assert codes_of(conn, client) == 0
    assert grants_of(conn, client) == []


def test_a_wrong_password_is_shown_on_the_page_which_stays_on_the_server_and_issues_nothing(
    run_server: Server, client: Client, person: str, page: Page, conn: pg8000.native.Connection
) -> None:
    request = authorization(run_server, client)
    open_page(page, request.url)

    answered = sign_in(page, person, "not the password at all")
    assert answered.status == 401
    assert answered.request.redirected_from is None
    assert page.url == f"{run_server.base_url}/authorize"
    error = page.locator(".error")
    assert error.is_visible()
    assert error.inner_text() == "Wrong user or password."
    assert page.locator("h1").inner_text() == CLIENT_NAME
    assert page.locator("button[name=decision][value=allow]").is_visible()
    screenshot(page, "wrong-password")
    assert client.arrivals() == []
    assert codes_of(conn, client) == 0
    assert grants_of(conn, client) == []
    assert attempts_of(conn, person) == [[False, "127.0.0.1"]]


def test_an_expired_invite_link_shows_a_clear_error_page(
    run_server: Server, database_url: str, page: Page, conn: pg8000.native.Connection
) -> None:
    user_id = new_user(conn, "late")
    link = invite_link(run_server, database_url, user_id)
    token = parse_qs(urlsplit(link).query)["token"][0]
    conn.run("UPDATE user_invites SET expires_at = now() - interval '1 minute' WHERE token_hash = :h", h=digest(token))

    shown = open_page(page, link)
    assert shown.status == 410
    assert page.locator("h1").inner_text() == "Invite"
    assert page.get_by_text("This invite link has expired. Ask your administrator for a new one.").is_visible()
    assert page.locator("input").count() == 0
    screenshot(page, "invite-expired")
    assert conn.run("SELECT count(*) FROM user_passwords WHERE user_id = :u", u=user_id) == [[0]]


def test_an_invite_link_sets_a_password_in_the_browser_that_then_signs_in(
    run_server: Server, database_url: str, client: Client, page: Page, conn: pg8000.native.Connection
) -> None:
    user_id = new_user(conn, "invited")
    link = invite_link(run_server, database_url, user_id)

    shown = open_page(page, link)
    assert shown.status == 200
    assert page.locator("h1").inner_text() == f"Set the password of {user_id}"
    screenshot(page, "invite")
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=confirm]", PASSWORD)
    done = submit(page, "button:has-text('Set password')")
    assert done.status == 200
    assert page.get_by_text(f"The password of {user_id} is set. You can sign in now.").is_visible()
    screenshot(page, "invite-done")
    assert conn.run("SELECT used_at IS NOT NULL FROM user_invites WHERE user_id = :u", u=user_id) == [[True]]

    request = authorization(run_server, client)
    open_page(page, request.url)
    sign_in(page, user_id, PASSWORD)
    assert client.arrivals() == [page.url]
    answer = answer_at(page.url, client)
    assert answer["code"]
    assert answer["state"] == request.state
    assert codes_of(conn, client) == 1


def test_the_page_signs_in_without_javascript_and_forbids_framing_in_its_headers(
    run_server: Server, client: Client, person: str, browser: Browser, conn: pg8000.native.Connection
) -> None:
    no_script = browser.new_context(java_script_enabled=False)
    try:
        page = no_script.new_page()
        request = authorization(run_server, client)
        shown = open_page(page, request.url)
        headers = shown.headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        assert headers["cache-control"] == "no-store"
        assert page.locator("script").count() == 0
        screenshot(page, "sign-in-no-javascript")

        sign_in(page, person, PASSWORD)
        assert client.arrivals() == [page.url]
        answer = answer_at(page.url, client)
        assert answer["code"]
        assert answer["state"] == request.state
        assert answer["iss"] == run_server.base_url
        assert codes_of(conn, client) == 1
    finally:
        no_script.close()


def test_another_site_cannot_show_the_page_in_a_frame(
    run_server: Server, client: Client, other_site: LocalSite, page: Page
) -> None:
    request = authorization(run_server, client)
    other_site.pages["/frame"] = f'<!doctype html><title>Framing</title><iframe src="{escape(request.url)}"></iframe>'
    framed: list[Response] = []
    page.on("response", lambda response: framed.append(response) if response.url == request.url else None)

    open_page(page, f"{other_site.base_url}/frame")
    page.wait_for_load_state("load")
    assert [response.status for response in framed] == [200]
    (frame,) = page.main_frame.child_frames
    assert not frame.url.startswith(run_server.base_url)
    assert frame.locator("input[name=password]").count() == 0


def test_a_sign_in_posted_from_another_site_is_refused(
    run_server: Server, client: Client, person: str, other_site: LocalSite, page: Page, conn: pg8000.native.Connection
) -> None:
    request = authorization(run_server, client)
    fields = {**request.params, "login": person, "password": PASSWORD, "decision": "allow"}
    hidden = "".join(
        f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">' for name, value in fields.items()
    )
    other_site.pages["/forge"] = (
        f'<!doctype html><title>Win a prize</title><form method=post action="{run_server.base_url}/authorize">'
        f"{hidden}</form><script>document.forms[0].submit()</script>"
    )

    with page.expect_response(f"{run_server.base_url}/authorize") as posted:
        page.goto(f"{other_site.base_url}/forge")
    page.wait_for_load_state("load")
    assert posted.value.status == 403
    assert page.url == f"{run_server.base_url}/authorize"
    assert page.get_by_text(REFUSED).is_visible()
    screenshot(page, "refused")
    assert client.arrivals() == []
    assert codes_of(conn, client) == 0
    assert attempts_of(conn, person) == []


def test_the_sign_in_page_fits_a_400_pixel_wide_screen(run_server: Server, client: Client, browser: Browser) -> None:
    narrow = browser.new_context(viewport={"width": 400, "height": 800})
    try:
        page = narrow.new_page()
        open_page(page, authorization(run_server, client).url)
        path = screenshot(page, "sign-in-400px")
        assert png_width(path) == 400
        assert page.evaluate("document.documentElement.scrollWidth") <= 400
    finally:
        narrow.close()


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("sign-in", id="sign-in"),
        pytest.param("/invite?token=not-a-token", id="message"),
    ],
)
def test_a_phone_lays_the_pages_out_at_its_own_width(
    run_server: Server, client: Client, browser: Browser, path: str
) -> None:
    phone = browser.new_context(viewport={"width": 400, "height": 800}, is_mobile=True, has_touch=True)
    try:
        page = phone.new_page()
        url = authorization(run_server, client).url if path == "sign-in" else run_server.base_url + path
        open_page(page, url)
        assert page.evaluate("window.innerWidth") == 400
    finally:
        phone.close()
