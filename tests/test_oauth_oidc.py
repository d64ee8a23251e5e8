"""Sign-in with an external OpenID provider: a real one (npm's oidc-provider, certified) run locally.

The sign-in page offers the provider; the user signs in there and comes back to /oidc/callback, where the
account is matched to a user by the operator's claim (a verified e-mail here), linked by its subject, or
refused unless sign-up is allowed; the consent that follows answers the client with a code."""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx2
import pytest

from chalicelib.db import connection
from tests.clients import post
from tests.conftest import Server, free_port, server_env, start_server
from tests.ts_client import MODULES, NODE, require_node

SCRIPT = Path(__file__).resolve().parent / "ts" / "oidc_provider.mjs"
REDIRECT = "http://127.0.0.1:9/callback"
CLIENT_SECRET = "oidc-test-secret-" + "x" * 24
SAME_SITE = {"Sec-Fetch-Site": "same-origin"}


class Provider:
    def __init__(self, process: subprocess.Popen[str], issuer: str) -> None:
        self.process, self.issuer = process, issuer


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"provider": free_port(), "closed": free_port(), "open": free_port()}


@pytest.fixture(scope="module")
def provider(ports) -> Iterator[Provider]:
    require_node()
    callbacks = [f"http://127.0.0.1:{ports[name]}/oidc/callback" for name in ("closed", "open")]
    process = subprocess.Popen(
        [str(NODE), str(SCRIPT), str(MODULES), str(ports["provider"]), "chitty", CLIENT_SECRET, *callbacks],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    seen = [process.stdout.readline() for _ in range(1)]
    while not seen[-1].startswith("ready") and seen[-1] and len(seen) < 20:  # its warnings come first
        seen.append(process.stdout.readline())
    line = seen[-1]
    assert line.startswith("ready"), "".join(seen)
    yield Provider(process, line.split()[1])
    assert process.stdin is not None
    process.stdin.close()
    process.wait(timeout=10)


def oidc_server(database_url, fake, tmp_path_factory, provider: Provider, port: int, sign_up: bool) -> Server:
    env = {
        **server_env(database_url, fake),
        "CHITTY_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "CHITTY_OIDC_ISSUER": provider.issuer,
        "CHITTY_OIDC_CLIENT_ID": "chitty",
        "CHITTY_OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "CHITTY_OIDC_NAME": "Example ID",
        "CHITTY_OIDC_SIGN_UP": "1" if sign_up else "0",
    }
    return start_server(tmp_path_factory.mktemp("oidc"), env, port=port)


@pytest.fixture(scope="module")
def closed(database_url, fake_openai_server, tmp_path_factory, provider, ports) -> Iterator[Server]:
    """A server that signs in only the users it knows."""
    running = oidc_server(database_url, fake_openai_server, tmp_path_factory, provider, ports["closed"], False)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def open_server(database_url, fake_openai_server, tmp_path_factory, provider, ports) -> Iterator[Server]:
    """A server that lets a new account sign up."""
    running = oidc_server(database_url, fake_openai_server, tmp_path_factory, provider, ports["open"], True)
    yield running
    running.stop()


def known_user(database_url: str, login: str) -> str:
    user_id = f"{login}@example.test"
    with connection(database_url) as conn:
        conn.run("INSERT INTO users (id, display_name) VALUES (:u, :u)", u=user_id)
    return user_id


def new_login(prefix: str = "person") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Flow:
    """One client's authorization request, taken through the page and the provider as a browser would."""

    def __init__(self, server: Server) -> None:
        import base64
        import hashlib
        import secrets

        self.server = server
        self.client_id = httpx2.post(
            server.base_url + "/register", json={"client_name": "Desk", "redirect_uris": [REDIRECT]}
        ).json()["client_id"]
        self.verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(self.verifier.encode()).digest()).rstrip(b"=").decode()
        self.params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": REDIRECT,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": "client-state",
            "scope": "mcp",
        }

    def to_provider(self) -> str:
        """Open the page, choose the provider: where the browser is sent."""
        page = httpx2.get(self.server.base_url + "/authorize", params=self.params)
        assert page.status_code == 200, page.text
        assert "Sign in with Example ID" in page.text
        hidden = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page.text))
        chosen = httpx2.post(
            self.server.base_url + "/authorize", data={**hidden, "decision": "oidc"}, headers=SAME_SITE
        )
        assert chosen.status_code == 302, chosen.text
        return chosen.headers["location"]

    def at_provider(self, location: str, login: str, *, refuse: bool = False) -> str:
        """Sign in (or refuse) at the provider's own pages; the URL it sends the browser back to."""
        with httpx2.Client(follow_redirects=False, timeout=10) as browser:
            url = location
            for _ in range(20):
                if url.startswith(self.server.base_url):
                    return url
                answer = browser.get(url)
                if answer.is_redirect:
                    url = urljoin(url, answer.headers["location"])
                    continue
                action = urljoin(url, unescape(re.search(r'action="([^"]+)"', answer.text)[1]))
                fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', answer.text))
                if fields.get("prompt") == "login":
                    fields.update(login=login, password="anything")
                if refuse and "/abort" in answer.text:
                    action = urljoin(url, re.search(r'href="([^"]+/abort)"', answer.text)[1])
                    url = urljoin(url, browser.get(action).headers["location"])
                    continue
                url = urljoin(url, browser.post(action, data=fields).headers["location"])
        raise AssertionError("the provider did not send the browser back")

    def back(self, url: str) -> httpx2.Response:
        return httpx2.get(url)

    def consent(self, page: httpx2.Response, decision: str = "allow") -> httpx2.Response:
        hidden = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page.text))
        return httpx2.post(
            self.server.base_url + "/authorize", data={**hidden, "decision": decision}, headers=SAME_SITE
        )

    def token(self, answer: httpx2.Response) -> dict:
        location = urlsplit(answer.headers["location"])
        query = parse_qs(location.query)
        assert query["state"] == ["client-state"]
        assert query["iss"] == [self.server.base_url]
        tokens = httpx2.post(
            self.server.base_url + "/token",
            data={
                "grant_type": "authorization_code",
                "code": query["code"][0],
                "redirect_uri": REDIRECT,
                "client_id": self.client_id,
                "code_verifier": self.verifier,
            },
        )
        assert tokens.status_code == 200, tokens.text
        return tokens.json()


def create_session(server: Server, token: str) -> dict:
    answer = post(
        server.mcp_url,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "chitty_chat_session_create", "arguments": {"session_name": "via provider"}},
        },
        token=token,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["result"]["structuredContent"]


def test_a_known_user_signs_in_at_the_provider_consents_and_uses_the_tools(closed, database_url):
    login = new_login()
    user_id = known_user(database_url, login)
    flow = Flow(closed)
    page = flow.back(flow.at_provider(flow.to_provider(), login))
    assert page.status_code == 200, page.text
    assert f"Signed in as <b>{user_id}</b> with Example ID" in page.text
    assert 'name="password"' not in page.text
    tokens = flow.token(flow.consent(page))
    assert create_session(closed, tokens["access_token"])["user_id"] == user_id
    with connection(database_url) as conn:
        linked = conn.run("SELECT user_id FROM user_identities WHERE subject = :s", s=login)
        stored = conn.run("SELECT request::text FROM oidc_sign_ins WHERE user_id = :u", u=user_id)
    assert linked == [[user_id]]
    assert stored
    assert CLIENT_SECRET not in stored[0][0]


def test_a_linked_account_is_found_by_its_subject_even_when_its_claim_no_longer_names_the_user(closed, database_url):
    login = new_login()
    user_id = known_user(database_url, login)
    flow = Flow(closed)
    flow.token(flow.consent(flow.back(flow.at_provider(flow.to_provider(), login))))
    renamed = f"renamed-{uuid.uuid4().hex[:8]}"
    with connection(database_url) as conn:
        conn.run("INSERT INTO users (id, display_name) VALUES (:r, :r)", r=renamed)
        conn.run("UPDATE user_identities SET user_id = :r WHERE subject = :s", r=renamed, s=login)
    again = Flow(closed)
    page = again.back(again.at_provider(again.to_provider(), login))
    assert f"Signed in as <b>{renamed}</b>" in page.text
    assert user_id not in page.text


def test_an_unknown_account_is_refused_and_no_user_is_made(closed, database_url):
    login = new_login("stranger")
    flow = Flow(closed)
    page = flow.back(flow.at_provider(flow.to_provider(), login))
    assert page.status_code == 403
    assert f"{login}@example.test has no account on this server" in page.text
    with connection(database_url) as conn:
        assert conn.run("SELECT count(*) FROM users WHERE id = :u", u=f"{login}@example.test") == [[0]]
        assert conn.run("SELECT count(*) FROM user_identities WHERE subject = :s", s=login) == [[0]]


def test_an_unverified_email_names_nobody(closed, database_url):
    login = new_login("unverified")
    known_user(database_url, login)
    flow = Flow(closed)
    page = flow.back(flow.at_provider(flow.to_provider(), login))
    assert page.status_code == 403
    assert "has no account on this server" in page.text


def test_sign_up_makes_a_new_user_when_the_operator_allows_it(open_server, database_url):
    login = new_login("newcomer")
    flow = Flow(open_server)
    page = flow.back(flow.at_provider(flow.to_provider(), login))
    assert page.status_code == 200, page.text
    tokens = flow.token(flow.consent(page))
    assert create_session(open_server, tokens["access_token"])["user_id"] == f"{login}@example.test"
    with connection(database_url) as conn:
        assert conn.run("SELECT role FROM users WHERE id = :u", u=f"{login}@example.test") == [["user"]]


def test_a_callback_is_used_once_and_a_ticket_once(closed, database_url):
    login = new_login()
    known_user(database_url, login)
    flow = Flow(closed)
    callback = flow.at_provider(flow.to_provider(), login)
    page = flow.back(callback)
    assert page.status_code == 200
    replayed = flow.back(callback)
    assert replayed.status_code == 400
    assert "expired or was used already" in replayed.text
    flow.token(flow.consent(page))
    again = flow.consent(page)
    assert again.status_code == 400
    assert "expired or was used already" in again.text


def test_deny_after_the_provider_answers_the_client_access_denied(closed, database_url):
    login = new_login()
    known_user(database_url, login)
    flow = Flow(closed)
    denied = flow.consent(flow.back(flow.at_provider(flow.to_provider(), login)), decision="deny")
    assert denied.status_code == 302
    query = parse_qs(urlsplit(denied.headers["location"]).query)
    assert query["error"] == ["access_denied"]
    assert query["state"] == ["client-state"]
    assert "code" not in query


def test_a_forged_callback_without_a_state_is_refused(closed):
    answer = httpx2.get(closed.base_url + "/oidc/callback", params={"code": "made-up", "state": "made-up"})
    assert answer.status_code == 400
    assert "expired or was used already" in answer.text


def test_a_user_who_cancels_at_the_provider_sends_the_client_access_denied(closed, database_url):
    login = new_login()
    known_user(database_url, login)
    flow = Flow(closed)
    answer = flow.back(flow.at_provider(flow.to_provider(), login, refuse=True))
    assert answer.status_code == 302
    query = parse_qs(urlsplit(answer.headers["location"]).query)
    assert query["error"] == ["access_denied"]
    assert query["state"] == ["client-state"]
    assert query["iss"] == [closed.base_url]


def test_a_provider_that_cannot_be_reached_is_a_clear_error():
    from chalicelib.oauth import oidc

    with pytest.raises(oidc.SignInFailed, match="could not be reached"):
        oidc.provider_metadata(f"http://127.0.0.1:{free_port()}")
