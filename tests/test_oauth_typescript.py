"""The official TypeScript MCP clients sign in to `make run`'s server with their own OAuth code: discovery from
the 401, dynamic client registration, the authorization code flow with PKCE and the resource; the sign-in page
in headless Chromium; then they list the tools and call one. The v1 SDK (`@modelcontextprotocol/sdk` 1.32.2,
the base of Claude Code, Cursor, VS Code and the Inspector) and the v2 client (`@modelcontextprotocol/client`
2.4.0, which checks the callback's `iss`).

Then the same behind API Gateway's stage prefix (https://host/api): the issuer has a path, and of the places the
SDKs look for its metadata only the one under the prefix can be routed."""

from __future__ import annotations

import http.client
import json
import queue
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.browser import require_chromium, screenshot_path
from tests.conftest import PASSWORD, Server, add_person, start_make_run
from tests.ts_client import MODULES, NODE, SDKS, require_node

SCRIPT = Path(__file__).resolve().parent / "ts" / "oauth_client.mjs"
VERSIONS = {"v1": "2025-11-25", "v2": "2026-07-28"}
# Each SDK's loopback redirect URI; nothing listens there: Chromium's navigation to it is caught.
REDIRECTS = {"v1": "http://127.0.0.1:33419/callback", "v2": "http://127.0.0.1:33420/callback"}
MESSAGE_TIMEOUT_S = 90
BROWSER_TIMEOUT_MS = 30_000
STAGE = "/api"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Chromium (playwright's sync Browser) of this module's own. Not the session's `browser`
    fixture: while playwright's sync API is up, the main thread counts as running an event loop, and every
    later test's asyncio.run() fails ("cannot be called from a running event loop"); this one ends with the
    module."""
    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            launched.close()


class NodeClient:
    """tests/ts/oauth_client.mjs running one SDK: JSON lines out, the callback URL in."""

    def __init__(self, plan: dict[str, Any]) -> None:
        require_node()
        self.process = subprocess.Popen(
            [str(NODE), str(SCRIPT), json.dumps({"modules": str(MODULES), **plan})],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                self.messages.put(json.loads(line))
        self.messages.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        self.stderr.extend(self.process.stderr)

    def next(self, key: str) -> Any:
        """The next message, which must carry `key`."""
        try:
            message = self.messages.get(timeout=MESSAGE_TIMEOUT_S)
        except queue.Empty:
            raise AssertionError(
                f"no {key!r} from the client in {MESSAGE_TIMEOUT_S} s:\n{''.join(self.stderr)}"
            ) from None
        assert message is not None, f"the client ended without {key!r}:\n{''.join(self.stderr)}"
        assert key in message, f"{json.dumps(message, indent=1)}\n{''.join(self.stderr)}"
        return message[key]

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


def sign_in(browser: Any, authorization_url: str, redirect: str, login: str, screenshot: str | None = None) -> str:
    """The user in Chromium: the sign-in page, login and password, Allow; the URL the browser was sent back to."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(BROWSER_TIMEOUT_MS)
        arrived: list[str] = []

        def callback(route: Any) -> None:
            arrived.append(route.request.url)
            route.fulfill(status=200, content_type="text/plain", body="signed in; back to the app")

        page.route(lambda address: address.startswith(redirect), callback)
        shown = page.goto(authorization_url)
        assert shown is not None
        assert shown.status == 200, shown.text()
        page.fill("input[name=login]", login)
        page.fill("input[name=password]", PASSWORD)
        if screenshot:
            page.screenshot(path=str(screenshot_path(screenshot)), full_page=True)
        page.click("button[value=allow]")
        page.wait_for_url(lambda address: address.startswith(redirect))
        assert arrived, page.content()
        return arrived[0]
    finally:
        context.close()


def run_flow(
    browser: Any, sdk: str, mcp_url: str, login: str, screenshot: str | None = None
) -> tuple[dict[str, Any], str, str]:
    """One SDK through the whole flow; what it reported, the authorization URL, and its stderr."""
    plan = {
        "sdk": sdk,
        "url": mcp_url,
        "redirect": REDIRECTS[sdk],
        "tool": {"name": "chitty_chat_session_create", "arguments": {"session_name": f"signed in with ts {sdk}"}},
        "probeIssuer": sdk == "v2",
    }
    node = NodeClient(plan)
    try:
        authorization_url = node.next("authorize")
        node.send(sign_in(browser, authorization_url, REDIRECTS[sdk], login, screenshot))
        done = node.next("done")
        node.process.wait(timeout=30)
    finally:
        node.stop()
    return done, authorization_url, "".join(node.stderr)


def assert_signed_in(done: dict[str, Any], sdk: str, login: str, public_url: str) -> None:
    assert done["firstError"]["class"] == "UnauthorizedError", done["firstError"]
    assert done["registered"], done
    assert done["callbackParams"] == ["code", "state", "iss"], done["callbackParams"]
    assert done["protocolVersion"] == VERSIONS[sdk]
    assert {"chatgpt_complete", "chitty_chat_session_create", "chitty_oauth_grants_list"} <= set(done["tools"])
    assert done["result"]["isError"] is False, done["result"]
    assert done["result"]["structuredContent"]["user_id"] == login
    assert done["tokens"] == {"token_type": "Bearer", "scope": "mcp", "expires_in": 3600, "has_refresh_token": True}
    assert done["invalidated"] == []
    registrations = [line for line in done["requests"] if line.startswith(f"POST {public_url}/register ")]
    assert registrations == [f"POST {public_url}/register 201"], done["requests"]
    assert done["discoveredIssuer"] == public_url


@pytest.mark.parametrize("sdk", SDKS)
def test_a_typescript_client_signs_in_in_chromium_lists_the_tools_and_calls_one(
    run_server, database_url, chromium, sdk
):
    login = add_person(database_url)
    done, authorization_url, stderr = run_flow(chromium, sdk, run_server.mcp_url, login)

    query = parse_qs(urlsplit(authorization_url).query)
    assert authorization_url.startswith(f"{run_server.base_url}/authorize?")
    assert {key: values for key, values in query.items() if key not in ("code_challenge", "state")} == {
        "response_type": ["code"],
        "client_id": [done["registered"]],
        "code_challenge_method": ["S256"],
        "redirect_uri": [REDIRECTS[sdk]],
        "scope": ["mcp"],
        "resource": [run_server.mcp_url],
    }
    assert_signed_in(done, sdk, login, run_server.base_url)
    assert done["requests"][:2] == [
        f"POST {run_server.mcp_url} 401",
        f"GET {run_server.base_url}/.well-known/oauth-protected-resource/mcp 200",
    ], done["requests"]
    if sdk == "v2":
        # The v2 client reads iss from the callback and refuses a code whose iss is forged or missing (the server
        # advertises authorization_response_iss_parameter_supported); the refusals leave the code unspent.
        probes = done["issuerProbes"]
        assert probes["forged"]["name"] == probes["missing"]["name"] == "IssuerMismatchError", probes
        # With saveDiscoveryState/discoveryState implemented the v2 client has nothing to warn about.
        assert "[mcp-sdk]" not in stderr, stderr


class StagePrefixProxy:
    """API Gateway's execute-api URL in front of the server: requests under the stage (/api/...) are forwarded
    with the prefix stripped; anything else is answered as API Gateway answers a path it has no route for."""

    HOP_BY_HOP = frozenset(
        {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
        | {"content-length"}  # set again for the body as read
    )

    def __init__(self) -> None:
        self.upstream_port: int | None = None
        self.seen: list[str] = []  # "METHOD /path status", as the clients asked
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                body = self._body()
                path = urlsplit(self.path).path
                if path == STAGE or path.startswith(STAGE + "/"):
                    status, headers, answer = proxy.forward(self.command, self.path[len(STAGE) :] or "/", self, body)
                else:
                    status, answer = 403, b'{"message":"Missing Authentication Token"}'
                    headers = [
                        ("Content-Type", "application/json"),
                        ("x-amzn-ErrorType", "MissingAuthenticationTokenException"),
                    ]
                proxy.seen.append(f"{self.command} {path} {status}")
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            do_GET = do_POST = do_DELETE = do_OPTIONS = do_HEAD = do_PUT = do_PATCH = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="stage-proxy", daemon=True)
        self.thread.start()

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{STAGE}"

    def forward(
        self, method: str, path: str, request: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        assert self.upstream_port is not None
        headers = {name: value for name, value in request.headers.items() if name.lower() not in self.HOP_BY_HOP}
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            upstream.request(
                method, path, body=body if body or method in ("POST", "PUT", "PATCH") else None, headers=headers
            )
            response = upstream.getresponse()
            answer = response.read()
            kept = [(name, value) for name, value in response.getheaders() if name.lower() not in self.HOP_BY_HOP]
            return response.status, kept, answer
        finally:
            upstream.close()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def staged(database_url, fake_openai_server, tmp_path_factory) -> Iterator[tuple[StagePrefixProxy, Server]]:
    """`make run`'s server behind the stage-prefix proxy, its public URL the proxy's http://127.0.0.1:PORT/api
    (make run keeps a CHITTY_PUBLIC_URL it is given)."""
    proxy = StagePrefixProxy()
    try:
        server = start_make_run(
            tmp_path_factory.mktemp("oauth-ts-staged"),
            database_url,
            fake_openai_server,
            {"CHITTY_PUBLIC_URL": proxy.public_url},
        )
        proxy.upstream_port = server.port
        try:
            yield proxy, server
        finally:
            server.stop()
    finally:
        proxy.stop()


@pytest.mark.parametrize("sdk", SDKS)
def test_a_typescript_client_signs_in_behind_an_api_gateway_stage_prefix(staged, database_url, chromium, sdk):
    proxy, _ = staged
    login = add_person(database_url)
    public = proxy.public_url
    proxy.seen.clear()
    done, authorization_url, stderr = run_flow(
        chromium, sdk, f"{public}/mcp", login, screenshot=f"oauth-ts-{sdk}-stage-prefix-consent"
    )

    assert authorization_url.startswith(f"{public}/authorize?"), authorization_url
    assert parse_qs(urlsplit(authorization_url).query)["resource"] == [f"{public}/mcp"]
    assert_signed_in(done, sdk, login, public)
    # The challenge's resource_metadata is the routable path-suffixed PRM under the stage; of the authorization
    # server metadata locations, the two RFC 8414 ones (well-known inserted before /api) hit API Gateway's 403 and
    # the SDK moves on to OpenID discovery appended to the issuer, which the server answers.
    seen = proxy.seen
    assert seen[0] == "POST /api/mcp 401", seen
    assert "GET /api/.well-known/oauth-protected-resource/mcp 200" in seen, seen
    discovery = [line for line in seen if "oauth-authorization-server" in line or "openid-configuration" in line]
    assert discovery[:3] == [
        "GET /.well-known/oauth-authorization-server/api 403",
        "GET /.well-known/openid-configuration/api 403",
        "GET /api/.well-known/openid-configuration 200",
    ], seen
    # The browser's part went through the stage too: the page, and the form posted back to <public>/authorize.
    assert {
        "POST /api/register 201",
        "GET /api/authorize 200",
        "POST /api/authorize 302",
        "POST /api/token 200",
    } <= set(seen), seen
    if sdk == "v2":
        assert "[mcp-sdk]" not in stderr, stderr
