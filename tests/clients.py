"""How tests talk to the server: raw HTTP for the protocol's edges, the official MCP client for the rest."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx2
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
MODERN = "2026-07-28"
ACCEPT_BOTH = "application/json, text/event-stream"
CLIENT_MODES = ("legacy", MODERN)


def error_details(result: dict[str, Any]) -> dict[str, Any]:
    """The machine-readable details of an isError tool result (field, limit, upstream_status, ...)."""
    assert result["isError"] is True, result
    assert "structuredContent" not in result, "an error result must not carry structuredContent"
    return result["_meta"]["chittyos/error"]


def modern_meta(version: str = MODERN, **extra: Any) -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": version,
        "io.modelcontextprotocol/clientInfo": {"name": "tests", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
        **extra,
    }


def modern_request(method: str, params: dict[str, Any] | None = None, request_id: int | str = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**(params or {}), "_meta": modern_meta()}}


def modern_headers(method: str, name: str | None = None, version: str = MODERN) -> dict[str, str]:
    headers = {"MCP-Protocol-Version": version, "Mcp-Method": method}
    if name is not None:
        headers["Mcp-Name"] = name
    return headers


def post(
    url: str,
    body: dict[str, Any] | list[Any] | str | bytes,
    *,
    token: str | None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> httpx2.Response:
    """One HTTP request to the MCP endpoint, as a client would send it unless told otherwise."""
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    sent = {"Content-Type": "application/json", "Accept": ACCEPT_BOTH}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    sent.update(headers or {})
    return httpx2.request(method, url, content=content, headers=sent, timeout=30)


def sse_messages(text: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages of an event-stream body, in order."""
    messages = []
    for event in text.replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].strip() for line in event.split("\n") if line.startswith("data:")]
        if data:
            messages.append(json.loads("\n".join(data)))
    return messages


def with_client(url: str, token: str, mode: str, work: Callable[[Client], Awaitable[T]]) -> T:
    """Run `work` with the official MCP client connected in `mode` ("legacy" or "2026-07-28")."""

    async def session() -> T:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:  # type: ignore[arg-type]
            return await work(client)

    return asyncio.run(session())


def run_cli(*args: str, database_url: str | None) -> subprocess.CompletedProcess[str]:
    """`python -m chalicelib.cli ARGS` as an operator runs it, against this database (or none)."""
    env = {key: value for key, value in os.environ.items() if key not in ("DEBUG", "CHITTY_DATABASE_URL")}
    if database_url is not None:
        env["CHITTY_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "chalicelib.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TokenMemory:
    """An OAuth client's token storage (the SDK's TokenStorage), in memory."""

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
