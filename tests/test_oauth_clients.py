"""The official MCP Python SDK signs in to `make run`'s server the way claude.ai, Claude Desktop and the SDKs
do: discovery from the 401, dynamic registration, the authorization code flow with PKCE and the resource,
the sign-in page in a real browser (headless Chromium), then tools. Its refresh token rotates, and a rotated
one presented again revokes the whole grant."""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
from mcp.client.auth import OAuthClientProvider
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

from chalicelib.db import connection
from tests.browser import require_chromium, screenshot_path
from tests.clients import TokenMemory, post
from tests.conftest import PASSWORD, Server

# The client's loopback redirect URI. Nothing listens there: the browser's navigation to it is caught.
CALLBACK = "http://127.0.0.1:33418/callback"
BROWSER_TIMEOUT_MS = 30_000


class User:
    """The person at the browser: opens the authorization URL in Chromium, signs in, allows; the browser is sent
    on to the client's loopback redirect URI, where the client reads code, state and iss."""

    def __init__(self, browser: Any, login: str) -> None:
        self.browser = browser
        self.login = login
        self.result: AuthorizationCodeResult | None = None
        self.pages = 0

    async def redirect_handler(self, url: str) -> None:
        context = await self.browser.new_context()
        try:
            page = await context.new_page()
            page.set_default_timeout(BROWSER_TIMEOUT_MS)
            arrived: asyncio.Future[str] = asyncio.get_running_loop().create_future()

            async def callback(route: Any) -> None:
                if not arrived.done():
                    arrived.set_result(route.request.url)
                await route.fulfill(status=200, content_type="text/plain", body="signed in; back to the app")

            await page.route(lambda address: address.startswith(CALLBACK), callback)
            shown = await page.goto(url)
            assert shown is not None
            assert shown.status == 200, await shown.text()
            self.pages += 1
            await page.fill("input[name=login]", self.login)
            await page.fill("input[name=password]", PASSWORD)
            if self.pages == 1:
                await page.screenshot(path=str(screenshot_path("oauth-python-sdk-consent")), full_page=True)
            await page.click("button[value=allow]")
            redirected = await asyncio.wait_for(arrived, BROWSER_TIMEOUT_MS / 1000)
        finally:
            await context.close()
        query = parse_qs(urlsplit(redirected).query)
        assert "error" not in query, query
        self.result = AuthorizationCodeResult(
            code=query["code"][0], state=query["state"][0], iss=query.get("iss", [None])[0]
        )

    async def callback_handler(self) -> AuthorizationCodeResult:
        assert self.result is not None
        return self.result


def age_rotation(database_url: str, refresh_token: str) -> None:
    """As if the refresh token had been exchanged a minute ago (past the grace for concurrent refreshes)."""
    with connection(database_url) as conn:
        conn.run(
            "UPDATE oauth_refresh_tokens SET rotated_at = now() - interval '1 minute' WHERE token_hash = :h",
            h=hashlib.sha256(refresh_token.encode()).hexdigest(),
        )


def refresh_at(server: Server, refresh_token: str, client_id: str) -> httpx2.Response:
    """What a client sends to refresh: the token endpoint, straight."""
    return httpx2.post(
        f"{server.base_url}/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": client_id,
            "resource": server.mcp_url,
        },
        timeout=30,
    )


def call_with(server: Server, access_token: str) -> httpx2.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "chitty_chat_session_list"}}
    return post(server.mcp_url, body, token=access_token, headers={"MCP-Protocol-Version": "2025-11-25"})


def test_the_python_sdk_signs_in_in_chromium_lists_the_tools_calls_one_and_refreshes(run_server, person, database_url):
    executable = require_chromium()
    storage = TokenMemory()
    sent: list[str] = []  # every request the SDK sent, with its answer: "METHOD /path status"

    async def log(response: httpx2.Response) -> None:
        sent.append(f"{response.request.method} {response.request.url.path} {response.status_code}")

    async def work() -> dict[str, Any]:
        from playwright.async_api import async_playwright

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=executable, headless=True)
            user = User(browser, person)
            provider = OAuthClientProvider(
                server_url=run_server.mcp_url,
                client_metadata=OAuthClientMetadata(
                    client_name="Python SDK test",
                    redirect_uris=[CALLBACK],
                    grant_types=["authorization_code", "refresh_token"],
                    response_types=["code"],
                    token_endpoint_auth_method="none",
                ),
                storage=storage,
                redirect_handler=user.redirect_handler,
                callback_handler=user.callback_handler,
            )
            http = httpx2.AsyncClient(auth=provider, timeout=30, event_hooks={"response": [log]})
            transport = streamable_http_client(run_server.mcp_url, http_client=http)
            out: dict[str, Any] = {}
            try:
                async with http, Client(transport, mode="legacy") as client:  # type: ignore[arg-type]
                    tools = await client.list_tools()
                    created = await client.call_tool("chitty_chat_session_create", {"session_name": "signed in"})
                    out.update(names=[tool.name for tool in tools.tools], created=created.structured_content)
                    out["first"], out["pages_before_refresh"] = storage.tokens, user.pages
                    sent.append("-- refresh forced --")

                    # Make the SDK believe its access token expired: it refreshes before the next request.
                    provider.context.token_expiry_time = 1.0
                    listed = await client.call_tool("chitty_chat_session_list", {})
                    out["after_refresh"], out["listed"] = storage.tokens, listed.structured_content
                    out["pages_after_refresh"] = user.pages

                    # The old refresh token presented again, later than a concurrent refresh would be: a replay,
                    # which revokes the whole grant.
                    old_refresh = out["first"].refresh_token
                    await asyncio.to_thread(age_rotation, database_url, old_refresh)
                    client_id = storage.client.client_id if storage.client else ""
                    out["replayed"] = await asyncio.to_thread(refresh_at, run_server, old_refresh, client_id)
                    current = out["after_refresh"]
                    out["current_call"] = await asyncio.to_thread(call_with, run_server, current.access_token)
                    out["current_refresh"] = await asyncio.to_thread(
                        refresh_at, run_server, current.refresh_token, client_id
                    )
                    sent.append("-- grant revoked --")

                    # The SDK's next call meets the 401 and signs in again, in the browser.
                    again = await client.call_tool("chitty_chat_session_list", {})
                    out["again"], out["pages_at_end"] = again, user.pages
            finally:
                await browser.close()
            return out

    # In a thread of its own: if another module's playwright sync API is up, the main thread counts as running
    # an event loop, and asyncio.run() refuses to start there.
    with ThreadPoolExecutor(1) as pool:
        out = pool.submit(asyncio.run, work()).result(timeout=300)

    assert {"chatgpt_complete", "chitty_chat_session_create"} <= set(out["names"])
    assert out["created"]["user_id"] == person
    assert out["pages_before_refresh"] == 1
    assert screenshot_path("oauth-python-sdk-consent").stat().st_size > 0
    first = out["first"]
    assert first.refresh_token
    assert first.scope == "mcp"
    assert storage.client is not None
    assert storage.client.client_id
    assert sent[:2] == ["POST /mcp 401", "GET /.well-known/oauth-protected-resource/mcp 200"], sent
    assert {"POST /register 201", "POST /token 200"} <= set(sent), sent

    # The forced refresh: one POST /token, then the call works, with a new access token and a new refresh token.
    refreshed = out["after_refresh"]
    after = sent[sent.index("-- refresh forced --") + 1 :]
    assert after[:2] == ["POST /token 200", "POST /mcp 200"], sent
    assert out["pages_after_refresh"] == 1
    assert refreshed.access_token != first.access_token
    assert refreshed.refresh_token
    assert refreshed.refresh_token != first.refresh_token
    assert out["listed"]["sessions"], out["listed"]

    # The replayed refresh token is refused, and the grant behind it is gone: the current access token gets the
    # invalid_token challenge, and the current (newest) refresh token is refused too.
    assert out["replayed"].status_code == 400, out["replayed"].text
    assert out["replayed"].json()["error"] == "invalid_grant"
    assert out["current_call"].status_code == 401, out["current_call"].text
    challenge = out["current_call"].headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge, challenge
    assert f'resource_metadata="{run_server.base_url}/.well-known/oauth-protected-resource/mcp"' in challenge
    assert out["current_refresh"].status_code == 400, out["current_refresh"].text
    assert out["current_refresh"].json()["error"] == "invalid_grant"

    # The SDK recovers as a real client does: the 401 sends it through sign-in again (no second registration).
    assert out["again"].is_error is False
    assert out["pages_at_end"] == 2
    revoked = sent[sent.index("-- grant revoked --") + 1 :]
    assert revoked[0] == "POST /mcp 401", sent
    assert revoked[-1] == "POST /mcp 200", sent
    assert "POST /token 200" in revoked, sent
    assert "POST /register 201" not in revoked, sent
