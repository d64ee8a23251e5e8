"""Official clients sign in the way claude.ai, Claude Desktop and the SDKs do: discovery from the 401, dynamic
registration, the authorization code flow with PKCE and the resource, then tools. The browser's part (the
sign-in page) is done over plain HTTP here, as a user's browser posts it."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from html import unescape
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx2
import pytest
from mcp.client.auth import OAuthClientProvider
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

from chalicelib.db import connection
from tests.conftest import Server, free_port, server_env, start_server

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def own_server(database_url, fake_openai_server, tmp_path_factory) -> Iterator[Server]:
    """A server whose public URL is its own address, as `make run` sets it."""
    port = free_port()
    env = {**server_env(database_url, fake_openai_server), "CHITTY_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    running = start_server(tmp_path_factory.mktemp("own"), env, port=port)
    yield running
    running.stop()


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


class Memory:
    """The client's token storage."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


class User:
    """The person at the browser: opens the page, signs in, allows, and hands the redirect to the client."""

    def __init__(self, login: str) -> None:
        self.login = login
        self.result: AuthorizationCodeResult | None = None
        self.pages = 0

    async def redirect_handler(self, url: str) -> None:
        async with httpx2.AsyncClient(follow_redirects=False) as http:
            page = await http.get(url)
            assert page.status_code == 200, page.text
            self.pages += 1
            action = unescape(re.search(r'action="([^"]+)"', page.text)[1])
            hidden = {name: unescape(value) for name, value in re.findall(r'name="([^"]+)" value="([^"]*)"', page.text)}
            answer = await http.post(
                urljoin(str(page.url), action),
                data={**hidden, "login": self.login, "password": PASSWORD, "decision": "allow"},
                headers={"Sec-Fetch-Site": "same-origin"},
            )
            assert answer.status_code == 302, answer.text
            query = parse_qs(urlsplit(answer.headers["location"]).query)
            self.result = AuthorizationCodeResult(
                code=query["code"][0], state=query["state"][0], iss=query.get("iss", [None])[0]
            )

    async def callback_handler(self) -> AuthorizationCodeResult:
        assert self.result is not None
        return self.result


def test_the_python_sdk_signs_in_lists_the_tools_and_calls_one(own_server, person):
    user, storage = User(person), Memory()
    provider = OAuthClientProvider(
        server_url=own_server.mcp_url,
        client_metadata=OAuthClientMetadata(
            client_name="Python SDK test",
            redirect_uris=["http://127.0.0.1:33418/callback"],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=user.redirect_handler,
        callback_handler=user.callback_handler,
    )

    async def work() -> tuple[list[str], dict]:
        http = httpx2.AsyncClient(auth=provider, timeout=30)
        transport = streamable_http_client(own_server.mcp_url, http_client=http)
        async with http, Client(transport, mode="legacy") as client:  # type: ignore[arg-type]
            tools = await client.list_tools()
            created = await client.call_tool("chitty_chat_session_create", {"session_name": "signed in"})
            return [tool.name for tool in tools.tools], created.structured_content

    names, created = asyncio.run(work())
    assert "chatgpt_complete" in names
    assert created["user_id"] == person
    assert user.pages == 1
    assert storage.tokens is not None
    assert storage.tokens.refresh_token
