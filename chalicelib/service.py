"""The service behind the routes: the MCP endpoint and the health check, built once per container."""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from chalicelib import __version__, auth
from chalicelib.config import get_settings
from chalicelib.db import DatabaseUnavailable, get_database
from chalicelib.logs import logger
from chalicelib.mcp import HttpRequest, HttpResponse, JsonRpcError, McpServer, ServerInfo
from chalicelib.mcp.errors import UNAVAILABLE
from chalicelib.migrate import discover

SECRET_HEADERS = frozenset({"authorization", "cookie", "x-api-key"})
INSTRUCTIONS = (
    "ChittyOS ChatGPT: ask OpenAI chat models through tools. chatgpt_complete (or chatgpt_stream) "
    "answers a list of messages; pass session_id to continue a conversation whose history the server "
    "keeps. Create sessions with chitty_chat_session_create (metadata links them to ChittyOS cases "
    "and documents). Every call's tokens and cost are recorded. Users may store their own OpenAI key "
    "with chitty_api_key_set."
)


def _authenticate(authorization: str | None, defer: bool) -> auth.Principal | auth.Credential | None:
    try:
        return auth.authenticate(get_database(), authorization, defer=defer)
    except DatabaseUnavailable as error:
        raise JsonRpcError(UNAVAILABLE, str(error), http_status=503) from None


@functools.lru_cache(maxsize=1)
def mcp_server() -> McpServer:
    """The container's MCP server (tools registered once, on first use)."""
    from chalicelib.tools import build_registry

    settings = get_settings()
    return McpServer(
        registry=build_registry(get_database()),
        authenticate=_authenticate,
        info=ServerInfo(
            name="chitty-chatgpt-mcp", title="ChittyOS ChatGPT", version=__version__, instructions=INSTRUCTIONS
        ),
        allowed_hosts=settings.allowed_hosts,
        allowed_origins=settings.allowed_origins,
        logger=logger,
    )


def handle_mcp(request: HttpRequest) -> HttpResponse:
    """Answer POST /mcp (and refuse other methods), logging one line for the request."""
    started = time.perf_counter()
    if logger.log_level <= logging.DEBUG:
        headers = {name: value for name, value in request.headers.items() if name not in SECRET_HEADERS}
        logger.debug("mcp request received", extra={"headers": headers, "body_bytes": len(request.body)})
    response = mcp_server().handle(request)
    log = response.log
    principal = log.pop("principal", None)
    user = principal.user_id if isinstance(principal, auth.Principal) else log.get("user")
    fields: dict[str, Any] = {
        "http_status": response.status,
        "rpc_method": log.get("rpc_method"),
        "tool": log.get("tool"),
        "user": user,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
    }
    for key in ("rpc_error", "is_error", "protocol_version", "id"):
        if key in log:
            fields["rpc_id" if key == "id" else key] = log[key]
    logger.info("mcp request", extra=fields)
    return response


def health() -> tuple[int, dict[str, Any]]:
    """The service's health: 200 when the database answers, 503 when it does not."""
    expected = max((migration.version for migration in discover()), default=0)
    try:
        row = get_database().one("schema_version")
    except DatabaseUnavailable:
        logger.warning("health check: database unreachable")
        return 503, {"status": "unavailable", "database": "unreachable", "version": __version__}
    schema_version = row["version"] if row else 0
    return 200, {
        "status": "ok" if schema_version == expected else "degraded",
        "database": "ok",
        "schema_version": schema_version,
        "schema_expected": expected,
        "version": __version__,
    }
