"""ChittyOS ChatGPT MCP server: the routes and schedules. Each hands its work to chalicelib."""

from typing import Any

from chalice import Chalice, CORSConfig, Cron, Rate, Response
from chalice.app import CloudWatchEvent

from chalicelib import service, upkeep
from chalicelib.db import get_database
from chalicelib.mcp import HttpRequest

app = Chalice(app_name="chitty-chatgpt-mcp", configure_logs=False)
# JSON and event streams only: no body is binary, so no content type is checked against a binary list.
app.api.binary_types = []


@app.route("/mcp", methods=["POST", "GET", "DELETE", "OPTIONS"], content_types=["*/*"])
def mcp() -> Response:
    request = app.current_request
    raw = request.raw_body
    body = raw if isinstance(raw, bytes) else raw.encode("utf-8")
    headers = {name.lower(): value for name, value in request.headers.items()}
    answer = service.handle_mcp(
        HttpRequest(method=request.method, headers=headers, body=body), request_id=request.context.get("requestId")
    )
    return Response(body=answer.body, status_code=answer.status, headers=answer.headers)


@app.lambda_function(name="migrate")
def migrate(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Apply pending migrations; invoked once after each deploy (chitty-chatgpt-mcp-<stage>-migrate)."""
    return service.apply_migrations()


@app.lambda_function(name="jobs")
def jobs(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Run one background completion (chitty-chatgpt-mcp-<stage>-jobs, invoked asynchronously by /mcp)."""
    return service.run_job(event, context)


# Browser-based clients (the Inspector) discover, register and exchange codes from their own page; the
# TypeScript SDK adds MCP-Protocol-Version, so they ask first (a preflight).
OAUTH_CORS = CORSConfig(allow_origin="*", allow_headers=["MCP-Protocol-Version"], max_age=600)


@app.route("/.well-known/oauth-protected-resource", methods=["GET"], cors=OAUTH_CORS)
@app.route("/.well-known/oauth-protected-resource/mcp", methods=["GET"], cors=OAUTH_CORS)
def protected_resource_metadata() -> Response:
    return _discovery("protected_resource")


@app.route("/.well-known/oauth-authorization-server", methods=["GET"], cors=OAUTH_CORS)
def authorization_server_metadata() -> Response:
    return _discovery("authorization_server")


@app.route("/.well-known/openid-configuration", methods=["GET"], cors=OAUTH_CORS)
def openid_configuration() -> Response:
    return _discovery("openid")


@app.route("/jwks", methods=["GET"], cors=OAUTH_CORS)
def jwks() -> Response:
    return _discovery("jwks")


FORM = ["application/x-www-form-urlencoded"]


@app.route("/register", methods=["POST"], content_types=["application/json"], cors=OAUTH_CORS)
def register() -> Response:
    return _oauth("register")


@app.route("/token", methods=["POST"], content_types=FORM, cors=OAUTH_CORS)
def token() -> Response:
    return _oauth("token")


@app.route("/revoke", methods=["POST"], content_types=FORM, cors=OAUTH_CORS)
def revoke() -> Response:
    return _oauth("revoke")


@app.route("/authorize", methods=["GET", "POST"], content_types=[*FORM, "application/json"])
def authorize() -> Response:
    request = app.current_request
    query = request.query_params or {}
    raw = request.raw_body or b""
    status, body, headers = service.authorize(
        request.method,
        {name: query.getlist(name) for name in query},
        raw if isinstance(raw, bytes) else raw.encode("utf-8"),
        {name.lower(): value for name, value in request.headers.items()},
        (request.context.get("identity") or {}).get("sourceIp"),
    )
    return Response(body=body, status_code=status, headers=headers)


@app.route("/oidc/callback", methods=["GET"])
def oidc_callback() -> Response:
    status, body, headers = service.oidc_callback(dict(app.current_request.query_params or {}))
    return Response(body=body, status_code=status, headers=headers)


@app.route("/usage", methods=["GET"])
def usage() -> Response:
    return _usage("page")


@app.route("/usage/callback", methods=["GET"])
def usage_callback() -> Response:
    return _usage("callback")


@app.route("/usage/sign-out", methods=["POST"], content_types=[*FORM, "application/json"])
def usage_sign_out() -> Response:
    return _usage("sign_out")


def _usage(name: str) -> Response:
    request = app.current_request
    query = {key: value for key, value in (request.query_params or {}).items()}
    headers = {key.lower(): value for key, value in request.headers.items()}
    status, body, answer_headers = service.usage_page(name, query, headers.get("cookie"), headers)
    return Response(body=body, status_code=status, headers=answer_headers)


@app.route("/invite", methods=["GET", "POST"], content_types=[*FORM, "application/json"])
def invite() -> Response:
    request = app.current_request
    raw = request.raw_body or b""
    status, body, headers = service.invite(
        request.method,
        (request.query_params or {}).get("token", ""),
        raw if isinstance(raw, bytes) else raw.encode("utf-8"),
        {name.lower(): value for name, value in request.headers.items()},
    )
    return Response(body=body, status_code=status, headers=headers)


def _oauth(name: str) -> Response:
    raw = app.current_request.raw_body
    status, body, headers = service.oauth_endpoint(name, raw if isinstance(raw, bytes) else raw.encode("utf-8"))
    return Response(body=body, status_code=status, headers=headers)


def _discovery(document: str) -> Response:
    status, body = service.discovery(document)
    return Response(body=body, status_code=status, headers=dict(service.DISCOVERY_HEADERS))


@app.route("/health", methods=["GET"])
def health() -> Response:
    status, body = service.health()
    return Response(body=body, status_code=status, headers={"Cache-Control": "no-store"})


@app.schedule(Rate(5, unit=Rate.MINUTES))
def refresh_usage(event: CloudWatchEvent) -> dict[str, int | bool]:
    return upkeep.refresh_usage(get_database())


@app.schedule(Cron(17, 3, "*", "*", "?", "*"))
def daily_upkeep(event: CloudWatchEvent) -> dict[str, int | bool]:
    return upkeep.daily_upkeep(get_database())
