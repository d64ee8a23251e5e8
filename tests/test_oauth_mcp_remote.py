"""mcp-remote (the stdio proxy Claude Desktop and other local-only clients use for remote servers) signs in to
`make run`'s server: discovery from the 401, dynamic registration, the authorization code with PKCE and the
resource, its own callback listener; then it carries MCP between its stdin/stdout and the server.

The person at the browser is played over plain HTTP. mcp-remote's "browser" (BROWSER, which the xdg-open it
runs obeys when there is no desktop) only writes down the URL it was given."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import threading
import time
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx2

from tests.conftest import PASSWORD, free_port
from tests.ts_client import MODULES, NODE, require_node

PROXY = MODULES / "mcp-remote" / "dist" / "proxy.js"  # the `mcp-remote` bin; dist/client.js is a one-shot lister
PROMPT = "Please authorize this client by visiting:"
# What makes xdg-open find a desktop (and a real browser) instead of BROWSER.
DESKTOP = (
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "XDG_CURRENT_DESKTOP",
    "DESKTOP_SESSION",
    "KDE_FULL_SESSION",
    "GNOME_DESKTOP_SESSION_ID",
    "DBUS_SESSION_BUS_ADDRESS",
)
WAIT_S = 60
# Its log lines begin with its process id, in brackets (once or twice).
LINE = r"^(?:\[\d+\] )*"


class Proxy:
    """mcp-remote's stdio proxy: its stderr log as it comes, and JSON-RPC over its stdin/stdout."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.log: list[str] = []
        self.log_changed = threading.Condition()
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read_log, daemon=True).start()
        threading.Thread(target=self._read_messages, daemon=True).start()

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self.log_changed:
                self.log.append(line.rstrip("\n"))
                self.log_changed.notify_all()

    def _read_messages(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip():
                self.messages.put(json.loads(line))

    def log_text(self) -> str:
        return "\n".join(self.log)

    def wait_for_log(self, pattern: str) -> re.Match[str]:
        """The first match of the pattern in the log, waiting for it to be written."""
        deadline = time.monotonic() + WAIT_S
        with self.log_changed:
            while True:
                found = re.search(pattern, self.log_text(), flags=re.MULTILINE)
                if found:
                    return found
                assert self.process.poll() is None, f"mcp-remote exited {self.process.returncode}:\n{self.log_text()}"
                left = deadline - time.monotonic()
                assert left > 0, f"mcp-remote never logged {pattern!r}:\n{self.log_text()}"
                self.log_changed.wait(min(left, 0.5))

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def request(self, request_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                message = self.messages.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no answer to {method}:\n{self.log_text()}") from None
            if message.get("id") == request_id:
                return message


def sign_in(url: str, login: str) -> str:
    """The person at the browser: open the page, sign in, allow; the redirect (to mcp-remote's callback)."""
    with httpx2.Client(follow_redirects=False, timeout=30) as http:
        page = http.get(url)
        assert page.status_code == 200, page.text
        assert "It runs on this computer" in page.text  # a loopback redirect is named as such
        action = unescape(re.search(r'action="([^"]+)"', page.text)[1])
        hidden = {name: unescape(value) for name, value in re.findall(r'name="([^"]+)" value="([^"]*)"', page.text)}
        answer = http.post(
            urljoin(str(page.url), action),
            data={**hidden, "login": login, "password": PASSWORD, "decision": "allow"},
            headers={"Sec-Fetch-Site": "same-origin"},
        )
        assert answer.status_code == 302, answer.text
        return answer.headers["location"]


def test_mcp_remote_signs_in_and_proxies_tools(run_server, person, tmp_path):
    require_node()
    opened = tmp_path / "opened-url"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\nprintf %s "$1" > {opened}\n')
    browser.chmod(0o755)
    callback_port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in DESKTOP}
    env |= {"MCP_REMOTE_CONFIG_DIR": str(tmp_path / "mcp-auth"), "BROWSER": str(browser)}
    command = [str(NODE), str(PROXY), run_server.mcp_url, str(callback_port), "--transport", "http-only"]
    command += ["--host", "127.0.0.1"]
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        proxy = Proxy(process)
        # Discovery: the 401's resource metadata, then the authorization server's.
        proxy.wait_for_log(rf"{LINE}Discovered authorization server: {re.escape(run_server.base_url)}/?$")
        url = proxy.wait_for_log(rf"^{re.escape(PROMPT)}\n(\S+)$")[1]
        query = parse_qs(urlsplit(url).query)
        assert url.startswith(f"{run_server.base_url}/authorize?")
        assert query["redirect_uri"] == [f"http://127.0.0.1:{callback_port}/oauth/callback"]
        assert query["code_challenge_method"] == ["S256"]
        assert query["resource"] == [run_server.mcp_url]
        assert query["scope"] == ["mcp"]
        proxy.wait_for_log(rf"{LINE}Browser opened automatically\.$")
        assert opened.read_text() == url  # the "browser" got the URL it printed

        proxy.wait_for_log(rf"{LINE}OAuth callback server running at http://127\.0\.0\.1:{callback_port}$")
        location = sign_in(url, person)
        assert location.startswith(f"http://127.0.0.1:{callback_port}/oauth/callback?")
        assert parse_qs(urlsplit(location).query)["iss"] == [run_server.base_url]
        assert httpx2.get(location, timeout=30).status_code == 200  # mcp-remote's callback listener takes the code
        proxy.wait_for_log(rf"{LINE}Proxy established successfully")

        initialized = proxy.request(
            1,
            "initialize",
            {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "pytest", "version": "1"}},
        )
        assert initialized["result"]["protocolVersion"] == "2025-11-25", initialized
        assert initialized["result"]["serverInfo"]["name"], initialized
        proxy.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        listed = proxy.request(2, "tools/list", {})
        names = {tool["name"] for tool in listed["result"]["tools"]}
        assert {"chatgpt_complete", "chitty_chat_session_create"} <= names, listed
        created = proxy.request(
            3, "tools/call", {"name": "chitty_chat_session_create", "arguments": {"session_name": "via mcp-remote"}}
        )
        result = created["result"]
        assert not result.get("isError"), result
        assert result["structuredContent"]["user_id"] == person
        assert result["structuredContent"]["session_name"] == "via mcp-remote"

        # It kept the tokens (a refresh token among them) where a second run would find them.
        saved = [json.loads(path.read_text()) for path in Path(tmp_path / "mcp-auth").rglob("*_tokens.json")]
        assert saved, list(Path(tmp_path / "mcp-auth").rglob("*"))
        assert saved[0]["refresh_token"]
        assert saved[0]["access_token"]
    finally:
        process.kill()
        process.wait(timeout=10)
