"""The service behind the routes: the MCP endpoint, the health check and migrations, built once per container."""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from pg8000.exceptions import DatabaseError

from chalicelib import __version__, auth, telemetry
from chalicelib.config import ConfigError, get_settings
from chalicelib.db import Database, DatabaseUnavailable, get_database, sqlstate
from chalicelib.logs import logger, request_line
from chalicelib.mcp import HttpRequest, HttpResponse, JsonRpcError, McpServer, ServerInfo
from chalicelib.mcp.errors import UNAVAILABLE
from chalicelib.migrate import apply, expected_schema
from chalicelib.oauth.metadata import challenge, scope_challenge

if TYPE_CHECKING:
    from chalicelib.oauth.pages import OidcSignIn

UNDEFINED_TABLE = "42P01"
# Debug logs show only headers known to carry no credential: a token can hide in any other
# (Proxy-Authorization, X-Auth-Token, whatever a proxy or client invents).
LOGGED_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "content-length",
        "content-type",
        "host",
        "mcp-method",
        "mcp-name",
        "mcp-protocol-version",
        "origin",
        "user-agent",
        "x-amzn-requestid",
        "x-amzn-trace-id",
        "x-forwarded-for",
        "x-forwarded-port",
        "x-forwarded-proto",
    }
)
# A first migration may take a while; the migrate function's own timeout bounds it.
MIGRATE_DB_TIMEOUT = 240.0
INSTRUCTIONS = (
    "ChittyOS ChatGPT: ask OpenAI chat models through tools. chatgpt_complete (or chatgpt_stream) "
    "answers a list of messages; pass session_id to continue a conversation whose history the server "
    "keeps. Create sessions with chitty_chat_session_create (metadata links them to ChittyOS cases "
    "and documents). Every call's tokens and cost are recorded. Users may store their own OpenAI key "
    "with chitty_api_key_set."
)


def _authenticate(authorization: str | None, defer: bool) -> auth.Principal | auth.Credential | None:
    try:
        return auth.authenticate(get_database(), authorization, defer=defer, resource=get_settings().resource)
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
        challenge=lambda token_presented: challenge(settings.public_url, invalid_token=token_presented),
        scope_challenge=lambda scope, description: scope_challenge(settings.public_url, scope, description),
    )


def handle_mcp(request: HttpRequest, request_id: str | None = None) -> HttpResponse:
    """Answer POST /mcp (and refuse other methods) and write its log line, which carries its metrics.

    `request_id` (API Gateway's) is the correlation_id of every log line written for the request;
    the request's line also carries the JSON-RPC id as rpc_id.
    """
    started = time.perf_counter()
    logger.set_correlation_id(request_id)
    try:
        if logger.log_level <= logging.DEBUG:
            headers = {name: value for name, value in request.headers.items() if name in LOGGED_HEADERS}
            logger.debug("mcp request received", extra={"headers": headers, "body_bytes": len(request.body)})
        with telemetry.traced("## mcp request") as annotations:
            response = mcp_server().handle(request)
            fields = _request_fields(response, started)
            annotations.update({name: str(fields[name]) for name in ("rpc_method", "tool", "user") if fields[name]})
        metrics: list[telemetry.MetricSet] = response.log.pop("metrics", [])
        if not get_settings().metrics:
            metrics = []
        elif fields["tool"] and (fields.get("is_error") or "rpc_error" in fields):
            metrics.append(telemetry.tool_error(fields["tool"]))
        if logger.log_level <= logging.INFO:
            request_line({**fields, **telemetry.emf_members(metrics)} if metrics else fields, request_id)
        elif metrics:
            telemetry.write(metrics)
        return response
    finally:
        # The container's next invocation (a health check, a schedule) is not this request.
        logger.set_correlation_id(None)


def _request_fields(response: HttpResponse, started: float) -> dict[str, Any]:
    """The fields of a request's log line, from what the protocol layer noted while answering it."""
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
    return fields


def health() -> tuple[int, dict[str, Any]]:
    """The service's health: 200 when the database answers (`degraded` while migrations or
    definitions are pending), 503 when it does not."""
    expected_version, expected_definitions = expected_schema()
    try:
        schema_version, definitions = _schema_state()
    except DatabaseUnavailable as error:
        logger.warning("health check: database unreachable", extra={"detail": error.detail})
        return 503, {"status": "unavailable", "database": "unreachable", "version": __version__}
    pending = sorted(name for name, checksum in expected_definitions.items() if definitions.get(name) != checksum)
    return 200, {
        "status": "ok" if schema_version == expected_version and not pending else "degraded",
        "database": "ok",
        "schema_version": schema_version,
        "schema_expected": expected_version,
        "definitions_pending": pending,
        "version": __version__,
    }


def _schema_state() -> tuple[int, dict[str, str]]:
    """The last migration applied and the checksum of each definition file as applied."""
    try:
        row = get_database().one("schema_state")
    except DatabaseError as error:
        if sqlstate(error) != UNDEFINED_TABLE:
            raise
        # A database that `migrate` has not reached yet: nothing recorded, everything pending.
        return 0, {}
    return (row["version"], row["definitions"]) if row else (0, {})


def apply_migrations() -> dict[str, Any]:
    """Apply the pending migrations (the migrate function, invoked once after each deploy)."""
    url = get_settings().migration_database_url
    if not url:
        raise ConfigError("Neither CHITTY_MIGRATION_DATABASE_URL nor CHITTY_DATABASE_URL is set.")
    conn = Database(url=url, timeout=MIGRATE_DB_TIMEOUT).connect()
    try:
        applied = apply(conn)
        row = conn.run("SELECT coalesce(max(version), 0) FROM schema_migrations")
    finally:
        conn.close()
    answer = {"applied": applied.file_names, "schema_version": row[0][0]}
    logger.info("migrations applied", extra=answer)
    return answer


def run_job(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The jobs function: run the background completion the event names, as its worker."""
    from chalicelib import jobs

    job_id = str(event.get("job_id", ""))
    worker = f"lambda {getattr(context, 'aws_request_id', '?')}"
    status = jobs.run(get_database(), job_id, worker=worker)
    return {"job_id": job_id, "status": status}


DISCOVERY_HEADERS = {
    "Content-Type": "application/json",
    "Cache-Control": "public, max-age=3600",
    # Browser clients (the Inspector) read it from their own page.
    "Access-Control-Allow-Origin": "*",
}


def discovery(document: str) -> tuple[int, str]:
    """A discovery document of OAuth sign-in (`protected_resource`, `authorization_server`, `openid`, `jwks`):
    status and JSON body; 404 while CHITTY_PUBLIC_URL, the issuer, is not set."""
    from chalicelib.oauth import metadata

    public_url = get_settings().public_url
    if public_url is None:
        return 404, json.dumps(
            {"error": "not_found", "error_description": "Sign-in is not set up (CHITTY_PUBLIC_URL)."}
        )
    documents = {
        "protected_resource": lambda: metadata.protected_resource(public_url),
        "authorization_server": lambda: metadata.authorization_server(public_url),
        "openid": lambda: metadata.authorization_server(public_url, openid=True),
        "jwks": lambda: {"keys": []},
    }
    return 200, json.dumps(documents[document]())


def oauth_endpoint(name: str, body: bytes) -> tuple[int, str, dict[str, str]]:
    """/register, /token or /revoke: status, JSON body and headers; 404 while CHITTY_PUBLIC_URL is unset."""
    from chalicelib.oauth import protocol

    settings = get_settings()
    if settings.resource is None:
        return 404, json.dumps({"error": "not_found"}), {"Content-Type": "application/json"}
    db = get_database()
    if name == "register":
        answer = protocol.register(db, body)
    elif name == "token":
        answer = protocol.token(db, body, settings.resource)
    else:
        answer = protocol.revoke(db, body)
    return answer.status, json.dumps(answer.body), {**answer.headers, "Access-Control-Allow-Origin": "*"}


def authorize(
    method: str, query: dict[str, list[str]], body: bytes, headers: dict[str, str], source_ip: str | None
) -> tuple[int, str, dict[str, str]]:
    """GET or POST /authorize: the sign-in and consent page, or the redirect back to the client."""
    from chalicelib.oauth import pages

    settings = get_settings()
    if settings.public_url is None or settings.resource is None:
        return 404, "Sign-in is not set up (CHITTY_PUBLIC_URL).", {"Content-Type": "text/plain"}
    page = pages.authorize(
        get_database(),
        method=method,
        query=query,
        body=body,
        headers=headers,
        source_ip=source_ip,
        issuer=settings.public_url,
        resource=settings.resource,
        settings=settings,
        oidc=_oidc_sign_in(),
    )
    return page.status, page.body, page.headers


def _oidc_sign_in() -> OidcSignIn | None:
    """The external OpenID provider the sign-in page offers, if the operator configured one."""
    from chalicelib.oauth.pages import OidcSignIn

    settings = get_settings()
    secret = settings.secret("CHITTY_OIDC_CLIENT_SECRET")
    if settings.oidc is None:
        return None
    if not secret:
        raise ConfigError("CHITTY_OIDC_ISSUER is set but CHITTY_OIDC_CLIENT_SECRET is not.")
    return OidcSignIn(settings.oidc, secret)


def oidc_callback(query: dict[str, str]) -> tuple[int, str, dict[str, str]]:
    """GET /oidc/callback: back from the external OpenID provider; the consent page, or why not."""
    from chalicelib.oauth import pages

    settings = get_settings()
    oidc = _oidc_sign_in()
    if settings.public_url is None or oidc is None:
        return 404, "No OpenID provider is set up (CHITTY_OIDC_ISSUER).", {"Content-Type": "text/plain"}
    page = pages.provider_callback(get_database(), oidc, query, settings.public_url)
    return page.status, page.body, page.headers


def invite(method: str, token: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, dict[str, str]]:
    """GET or POST /invite: set a password with a single-use link."""
    from chalicelib.oauth import invites

    public_url = get_settings().public_url
    if public_url is None:
        return 404, "Sign-in is not set up (CHITTY_PUBLIC_URL).", {"Content-Type": "text/plain"}
    page = invites.page(get_database(), method=method, token=token, body=body, headers=headers, issuer=public_url)
    return page.status, page.body, page.headers


def usage_page(
    name: str, query: dict[str, str], cookie_header: str | None, headers: dict[str, str]
) -> tuple[int, str, dict[str, str | list[str]]]:
    """/usage (`page`), /usage/callback (`callback`) and /usage/sign-out (`sign_out`): status, HTML and headers
    (Set-Cookie as a list); 404 while CHITTY_PUBLIC_URL is unset."""
    from chalicelib.apps import pages

    settings = get_settings()
    if settings.public_url is None or settings.resource is None:
        return 404, "The usage page needs sign-in (CHITTY_PUBLIC_URL).", {"Content-Type": "text/plain"}
    site = pages.Site(settings.public_url, settings.resource)
    db = get_database()
    if name == "page":
        page = pages.usage_page(db, mcp_server().registry, site, query, cookie_header)
    elif name == "callback":
        page = pages.callback(db, site, query, cookie_header)
    else:
        page = pages.sign_out(db, site, cookie_header, headers)
    headers: dict[str, str | list[str]] = dict(page.headers)
    if page.cookies:
        headers["Set-Cookie"] = page.cookies
    return page.status, page.body, headers
