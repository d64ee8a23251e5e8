"""The stateless MCP server: one POST in, one JSON (or event-stream) answer out.

Two eras share the endpoint. A request whose `_meta` names a protocol version (or whose
MCP-Protocol-Version header is a modern one) is served by the 2026-07-28 rules; anything
else by the handshake-era rules of 2025-11-25, 2025-06-18 and 2025-03-26. No session id
is ever issued: every request is answered from itself and the database.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from chalicelib.mcp.errors import (
    FORBIDDEN,
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    MISSING_CAPABILITY,
    PARSE_ERROR,
    RESOURCE_NOT_FOUND,
    UNAUTHORIZED,
    UNSUPPORTED_PROTOCOL_VERSION,
    InsufficientScope,
    InvalidArguments,
    JsonRpcError,
    ToolError,
    Unauthenticated,
)
from chalicelib.mcp.http import (
    MAX_BODY_BYTES,
    HttpRequest,
    HttpResponse,
    accepts,
    host_allowed,
    json_response,
    origin_allowed,
    sse_response,
)
from chalicelib.mcp.registry import Registry, ToolCall, ToolResult, error_result
from chalicelib.mcp.wire import Parsed, TooDeep, find_unfit, parse_json

MODERN_VERSIONS = ("2026-07-28",)
HANDSHAKE_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")
# CORS: the request headers MCP clients send, and the answer headers they read.
CORS_ALLOWED_HEADERS = (
    "Authorization, Content-Type, Accept, MCP-Protocol-Version, Mcp-Method, Mcp-Name, Mcp-Session-Id, Last-Event-ID"
)
CORS_EXPOSED = "WWW-Authenticate, Mcp-Session-Id, MCP-Protocol-Version, x-amzn-RequestId"
# The one protocol version whose servers must accept JSON-RPC batches (later versions removed them).
BATCH_VERSION = "2025-03-26"
SUPPORTED_VERSIONS = MODERN_VERSIONS + HANDSHAKE_VERSIONS
# A handshake-era request without the header is read as 2025-03-26, which predates it.
DEFAULT_HANDSHAKE_VERSION = "2025-03-26"

META_PROTOCOL_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
NAME_BEARING = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
    "tasks/get": "taskId",
    "tasks/cancel": "taskId",
    "tasks/update": "taskId",
}
# The tasks extension (modelcontextprotocol/experimental-ext-tasks), for 2026-07-28 clients that declare it.
TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
TOOLS_LIST_TTL_MS = 300_000

Authenticator = Callable[[str | None], Any]


class ExceptionLogger(Protocol):
    def exception(self, msg: object, *args: object, **kwargs: Any) -> None: ...


@dataclass(frozen=True)
class ServerInfo:
    name: str
    version: str
    title: str
    instructions: str


@dataclass
class _Request:
    """A parsed JSON-RPC request and what the protocol layer learned about it."""

    id: str | int
    method: str
    params: dict[str, Any]
    modern: bool
    version: str
    principal: Any
    want_events: bool
    want_json: bool
    authorization: str = ""
    non_finite: bool = False

    @property
    def declares_tasks(self) -> bool:
        """Whether this request's client takes tasks: declared in its per-request capabilities (2026-07-28)."""
        if not self.modern:
            return False
        capabilities = self.params["_meta"].get(META_CLIENT_CAPABILITIES) or {}
        extensions = capabilities.get("extensions")
        return isinstance(extensions, dict) and TASKS_EXTENSION in extensions


def _rpc_error(request_id: str | int | None, error: JsonRpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.to_error()}


def _decode_header_value(value: str) -> str:
    """Mcp-Name values may arrive as =?base64?...?= to carry non-ASCII text."""
    if value.startswith("=?base64?") and value.endswith("?="):
        try:
            return base64.b64decode(value[9:-2], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise JsonRpcError(
                HEADER_MISMATCH, "Header mismatch: Mcp-Name is not valid base64", http_status=400
            ) from None
    return value


def _read_body(body: bytes) -> Parsed:
    """The JSON of a body: one JSON-RPC message, or a batch of them (a list)."""
    try:
        return parse_json(body)
    except TooDeep as error:
        raise JsonRpcError(INVALID_REQUEST, f"Invalid Request: {error}", http_status=400) from None
    except ValueError:
        raise JsonRpcError(PARSE_ERROR, "Parse error: the body is not valid JSON", http_status=400) from None


def _check_message(message: Any) -> dict[str, Any]:
    """A JSON-RPC message: a request, a notification, or a client's response."""
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        raise JsonRpcError(INVALID_REQUEST, "Invalid Request: expected a JSON-RPC 2.0 object", http_status=400)
    if "method" not in message:
        if _is_valid_id(message.get("id")) and ("result" in message or "error" in message):
            return message
        raise JsonRpcError(INVALID_REQUEST, "Invalid Request: no method", http_status=400)
    if not isinstance(message["method"], str) or not message["method"]:
        raise JsonRpcError(INVALID_REQUEST, "Invalid Request: method must be a string", http_status=400)
    return message


def _not_json_numbers() -> JsonRpcError:
    return JsonRpcError(PARSE_ERROR, "Parse error: NaN, Infinity and -Infinity are not JSON numbers", http_status=400)


def _refuse_unfit(params: dict[str, Any], status: int) -> None:
    """Invalid params naming a string parameter (or argument, or key) that holds U+0000 or a lone surrogate."""
    unfit = find_unfit(params, max_depth=2)
    if unfit is not None:
        raise JsonRpcError(
            INVALID_PARAMS,
            f"Invalid params: {unfit.field}: {unfit.problem}",
            http_status=status,
            data={"field": unfit.field},
        )


# The WWW-Authenticate value of a 401, given whether a token was presented (app.py hands it in: where the
# client learns to sign in is the authorization layer's to say).
Challenge = Callable[[bool], str]


def _plain_challenge(token_presented: bool) -> str:
    return 'Bearer error="invalid_token"' if token_presented else "Bearer"


# The WWW-Authenticate value of a 403 for a missing scope: the scopes the call needs, and why.
ScopeChallenge = Callable[[str, str], str]


def _plain_scope_challenge(scope: str, description: str) -> str:
    return f'Bearer error="insufficient_scope", scope="{scope}"'


def _unauthorized(token_presented: bool, challenge: Challenge = _plain_challenge) -> JsonRpcError:
    message = (
        "Unauthorized: the bearer token is unknown, expired or revoked"
        if token_presented
        else "Unauthorized: send Authorization: Bearer <token>"
    )
    return JsonRpcError(
        UNAUTHORIZED, message, http_status=401, headers={"WWW-Authenticate": challenge(token_presented)}
    )


def _is_valid_id(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


class McpServer:
    """Answers POST /mcp. Knows nothing of SQL or OpenAI: tools come from the registry."""

    def __init__(
        self,
        registry: Registry,
        authenticate: Authenticator,
        info: ServerInfo,
        allowed_hosts: tuple[str, ...],
        allowed_origins: tuple[str, ...],
        logger: ExceptionLogger,
        challenge: Challenge = _plain_challenge,
        scope_challenge: ScopeChallenge = _plain_scope_challenge,
    ) -> None:
        self.challenge = challenge
        self.scope_challenge = scope_challenge
        self.registry = registry
        self.authenticate = authenticate
        self.info = info
        self.allowed_hosts = allowed_hosts
        self.allowed_origins = allowed_origins
        self.logger = logger

    # HTTP

    def handle(self, request: HttpRequest) -> HttpResponse:
        """Answer one HTTP request to the MCP endpoint."""
        response = self._handle(request)
        if request.header("origin") is not None and response.status != 403:
            # A browser on an allowed origin may read the answer (a disallowed one got 403 above).
            response.headers.update(
                {
                    "Access-Control-Allow-Origin": request.header("origin") or "",
                    "Access-Control-Expose-Headers": CORS_EXPOSED,
                }
            )
            response.headers["Vary"] = "Origin"
        return response

    def _handle(self, request: HttpRequest) -> HttpResponse:
        rejection = self._check_http(request)
        if rejection is not None:
            return rejection
        authorization = request.header("authorization")
        if not authorization:
            return self._error(None, _unauthorized(False, self.challenge))
        log: dict[str, Any] = {}
        try:
            response = self._handle_message(request, authorization, log)
        except JsonRpcError as error:
            response = self._error(log.get("id"), error)
            log["rpc_error"] = error.code
        response.log.update(log)
        return response

    def _principal(self, authorization: str, log: dict[str, Any], *, defer: bool = False) -> Any:
        """The caller, or a 401 error. With `defer`, an unverified credential the tool will check."""
        principal = self.authenticate(authorization, defer)
        if principal is None:
            raise _unauthorized(True, self.challenge)
        log["principal"] = principal
        return principal

    def _check_http(self, request: HttpRequest) -> HttpResponse | None:
        if not host_allowed(request.header("host"), self.allowed_hosts):
            return self._error(None, JsonRpcError(FORBIDDEN, "Forbidden: Host not allowed", http_status=403))
        if not origin_allowed(request.header("origin"), self.allowed_origins):
            return self._error(None, JsonRpcError(FORBIDDEN, "Forbidden: Origin not allowed", http_status=403))
        if request.method == "OPTIONS":
            # The CORS preflight of a browser-based client: what it may send. No token is needed to ask.
            return HttpResponse(
                status=204,
                body="",
                headers={
                    "Access-Control-Allow-Methods": "POST, GET, DELETE",
                    "Access-Control-Allow-Headers": CORS_ALLOWED_HEADERS,
                    "Access-Control-Max-Age": "600",
                },
            )
        if request.method != "POST":
            error = JsonRpcError(INVALID_REQUEST, "Method Not Allowed: this endpoint takes POST only", http_status=405)
            return self._error(None, error, {"Allow": "POST"})
        if len(request.body) > MAX_BODY_BYTES:
            error = JsonRpcError(INVALID_REQUEST, "Request body over 1 MiB", http_status=413)
            return self._error(None, error)
        content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            error = JsonRpcError(INVALID_REQUEST, "Content-Type must be application/json", http_status=415)
            return self._error(None, error)
        accept = request.header("accept")
        if not accepts(accept, "application/json") and not accepts(accept, "text/event-stream"):
            error = JsonRpcError(
                INVALID_REQUEST, "Not Acceptable: accept application/json or text/event-stream", http_status=406
            )
            return self._error(None, error)
        return None

    def _error(
        self, request_id: str | int | None, error: JsonRpcError, headers: dict[str, str] | None = None
    ) -> HttpResponse:
        response = json_response(error.http_status, _rpc_error(request_id, error), {**error.headers, **(headers or {})})
        response.log["rpc_error"] = error.code
        return response

    # JSON-RPC

    def _handle_message(self, request: HttpRequest, authorization: str, log: dict[str, Any]) -> HttpResponse:
        try:
            parsed = _read_body(request.body)
            if isinstance(parsed.value, list):
                return self._handle_batch(request, parsed, authorization, log)
            message = _check_message(parsed.value)
            # In the arguments of a tool call they are named like any bad argument; anywhere else, not JSON.
            if parsed.non_finite and not (message.get("method") == "tools/call" and "id" in message):
                raise _not_json_numbers()
        except JsonRpcError:
            self._principal(authorization, log)  # an unauthenticated caller learns nothing about its body
            raise
        reply, events, stream = self._answer(request, message, parsed.non_finite, authorization, log)
        if reply is None:
            return HttpResponse(status=202)
        if stream:
            return sse_response([*events, reply])
        return json_response(200, reply)

    def _handle_batch(
        self, request: HttpRequest, parsed: Parsed, authorization: str, log: dict[str, Any]
    ) -> HttpResponse:
        """A JSON-RPC batch: accepted under 2025-03-26 only (the one version whose servers must take them),
        answered as one JSON array; a batch of notifications and responses only gets 202."""
        version = request.header("mcp-protocol-version")
        if version not in (None, "", BATCH_VERSION):
            raise JsonRpcError(
                INVALID_REQUEST, f"Invalid Request: batches are not supported under {version}", http_status=400
            )
        if not parsed.value:
            raise JsonRpcError(INVALID_REQUEST, "Invalid Request: an empty batch", http_status=400)
        if parsed.non_finite:
            raise _not_json_numbers()
        # The caller first: one with a dead token learns nothing about the messages of its batch.
        self._principal(authorization, log)
        replies: list[dict[str, Any]] = []
        for item in parsed.value:
            item_log: dict[str, Any] = {}
            try:
                message = _check_message(item)
                if message.get("method") == "initialize":
                    raise JsonRpcError(INVALID_REQUEST, "Invalid Request: initialize cannot be part of a batch")
                reply, _, _ = self._answer(request, message, False, authorization, item_log)
            except JsonRpcError as error:
                if error.http_status == 401:
                    raise
                # An error about a notification is not answered; any other message gets its error.
                request_id = item.get("id") if isinstance(item, dict) else None
                if isinstance(item, dict) and "method" in item and "id" not in item:
                    continue
                reply = _rpc_error(request_id if _is_valid_id(request_id) else None, error)
            finally:
                if "principal" in item_log:
                    log["principal"] = item_log["principal"]
            if reply is not None:
                replies.append(reply)
        log["rpc_method"] = f"(batch of {len(parsed.value)})"
        if not replies:
            return HttpResponse(status=202)
        return json_response(200, replies)

    def _answer(
        self, request: HttpRequest, message: dict[str, Any], non_finite: bool, authorization: str, log: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]], bool]:
        """The reply to one message (None for a notification or a response), the events that go before
        it, and whether they go as an event stream."""
        method = message.get("method")
        if method is None:
            self._principal(authorization, log)
            log["rpc_method"] = "(response)"
            return None, [], False
        log["rpc_method"] = method
        if "id" not in message:
            self._principal(authorization, log)
            return None, [], False  # A notification: accepted, nothing to answer.
        params = message.get("params", {})
        name = params.get("name") if method == "tools/call" and isinstance(params, dict) else None
        tool = self.registry.tools.get(name) if isinstance(name, str) else None
        principal = self._principal(authorization, log, defer=tool is not None and tool.verifies_credentials)
        request_id = message["id"]
        if not _is_valid_id(request_id):
            raise JsonRpcError(INVALID_REQUEST, "Invalid Request: id must be a string or an integer", http_status=400)
        log["id"] = request_id
        params = message.get("params", {})
        if not isinstance(params, dict):
            raise JsonRpcError(INVALID_PARAMS, "Invalid params: params must be an object", http_status=400)
        negotiated = self._negotiate(request, request_id, method, params, principal)
        negotiated.authorization = authorization
        negotiated.non_finite = non_finite
        log["protocol_version"] = negotiated.version
        result, events = self._dispatch(negotiated, log)
        reply = {"jsonrpc": "2.0", "id": request_id, "result": result}
        return reply, events, negotiated.want_events and bool(events or not negotiated.want_json)

    def _negotiate(
        self, request: HttpRequest, request_id: str | int, method: str, params: dict[str, Any], principal: Any
    ) -> _Request:
        meta = params.get("_meta")
        header_version = request.header("mcp-protocol-version")
        meta_version = meta.get(META_PROTOCOL_VERSION) if isinstance(meta, dict) else None
        accept = request.header("accept")
        common = {
            "id": request_id,
            "method": method,
            "params": params,
            "principal": principal,
            "want_events": bool(accept) and accepts(accept, "text/event-stream"),
            "want_json": accepts(accept, "application/json"),
        }
        if meta_version is None and header_version not in MODERN_VERSIONS:
            if header_version is not None and header_version not in HANDSHAKE_VERSIONS:
                raise self._unsupported(header_version)
            return _Request(modern=False, version=header_version or DEFAULT_HANDSHAKE_VERSION, **common)
        if (
            not isinstance(meta, dict)
            or not isinstance(meta_version, str)
            or not isinstance(meta.get(META_CLIENT_CAPABILITIES), dict)
        ):
            raise JsonRpcError(
                INVALID_PARAMS,
                f"Invalid params: _meta must carry {META_PROTOCOL_VERSION} and {META_CLIENT_CAPABILITIES}",
                http_status=400,
            )
        if header_version is None:
            raise JsonRpcError(
                HEADER_MISMATCH, "Header mismatch: MCP-Protocol-Version header is missing", http_status=400
            )
        if header_version != meta_version:
            raise JsonRpcError(
                HEADER_MISMATCH,
                f"Header mismatch: MCP-Protocol-Version header '{header_version[:40]}' "
                f"does not match _meta '{meta_version[:40]}'",
                http_status=400,
            )
        if request.header("mcp-method") != method:
            raise JsonRpcError(
                HEADER_MISMATCH,
                f"Header mismatch: Mcp-Method header does not match body method '{method}'",
                http_status=400,
            )
        if method in NAME_BEARING:
            header_name = request.header("mcp-name")
            body_name = params.get(NAME_BEARING[method])
            if header_name is None or _decode_header_value(header_name) != body_name:
                raise JsonRpcError(
                    HEADER_MISMATCH, "Header mismatch: Mcp-Name header does not match the body", http_status=400
                )
        if meta_version not in MODERN_VERSIONS:
            raise self._unsupported(meta_version)
        return _Request(modern=True, version=meta_version, **common)

    def _unsupported(self, requested: str) -> JsonRpcError:
        return JsonRpcError(
            UNSUPPORTED_PROTOCOL_VERSION,
            f"Unsupported protocol version: {requested}",
            http_status=400,
            data={"supported": list(SUPPORTED_VERSIONS), "requested": requested},
        )

    # Methods

    def _dispatch(self, request: _Request, log: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        events: list[dict[str, Any]] = []
        method = request.method
        if request.modern:
            handlers: dict[str, Callable[[_Request], dict[str, Any]]] = {
                "server/discover": self._discover,
                "tools/list": self._tools_list,
            }
        else:
            handlers = {"initialize": self._initialize, "ping": lambda _: {}, "tools/list": self._tools_list}
        if self.registry.resources:
            handlers.update(
                {
                    "resources/list": self._resources_list,
                    "resources/templates/list": self._resource_templates_list,
                    "resources/read": self._resources_read,
                }
            )
        if self.registry.prompts:
            handlers.update({"prompts/list": self._prompts_list, "prompts/get": self._prompts_get})
        if request.modern and self.registry.task_get is not None:
            handlers.update(
                {"tasks/get": self._tasks_get, "tasks/cancel": self._tasks_cancel, "tasks/update": self._tasks_update}
            )
        if method == "tools/call":
            result = self._tools_call(request, events, log)
        elif method in handlers:
            result = handlers[method](request)
        else:
            raise JsonRpcError(
                METHOD_NOT_FOUND, f"Method not found: {method}", http_status=404 if request.modern else 200
            )
        if request.modern:
            result = {"resultType": "complete", **result}
            result.setdefault("_meta", {})[META_SERVER_INFO] = self._server_info()
        return result, events

    def _server_info(self) -> dict[str, str]:
        return {"name": self.info.name, "title": self.info.title, "version": self.info.version}

    def _capabilities(self, modern: bool = False) -> dict[str, Any]:
        capabilities: dict[str, Any] = {"tools": {"listChanged": False}}
        extensions = dict(self.registry.extensions)
        if modern and self.registry.task_get is not None:
            extensions[TASKS_EXTENSION] = {}
        if extensions:
            capabilities["extensions"] = extensions
        if self.registry.resources:
            capabilities["resources"] = {"subscribe": False, "listChanged": False}
        if self.registry.prompts:
            capabilities["prompts"] = {"listChanged": False}
        return capabilities

    def _no_cursor(self, request: _Request) -> None:
        if request.params.get("cursor") is not None:
            raise JsonRpcError(
                INVALID_PARAMS, "Invalid params: unknown cursor (this list has one page)", http_status=400
            )

    def _resources_list(self, request: _Request) -> dict[str, Any]:
        self._no_cursor(request)
        listed = [entry for family in self.registry.resources for entry in family.list_for(request.principal)]
        result: dict[str, Any] = {"resources": listed}
        return _cache_hints(request, result, ttl_ms=0, scope="private")

    def _resource_templates_list(self, request: _Request) -> dict[str, Any]:
        self._no_cursor(request)
        result: dict[str, Any] = {
            "resourceTemplates": [family.describe() for family in self.registry.resources if family.templated]
        }
        return _cache_hints(request, result, ttl_ms=TOOLS_LIST_TTL_MS, scope="public")

    def _resources_read(self, request: _Request) -> dict[str, Any]:
        status = 400 if request.modern else 200
        uri = request.params.get("uri")
        if not isinstance(uri, str) or not uri:
            raise JsonRpcError(INVALID_PARAMS, "Invalid params: uri must be a string", http_status=status)
        _refuse_unfit({"uri": uri}, status)
        family = next((family for family in self.registry.resources if family.owns(uri)), None)
        contents = family.read_for(request.principal, uri) if family else None
        if contents is None:
            # 2026-07-28 answers a missing resource with -32602; the handshake era used -32002.
            code = INVALID_PARAMS if request.modern else RESOURCE_NOT_FOUND
            raise JsonRpcError(code, "Resource not found", http_status=status, data={"uri": uri})
        result: dict[str, Any] = {"contents": [contents]}
        return _cache_hints(request, result, ttl_ms=0, scope="private")

    def _prompts_list(self, request: _Request) -> dict[str, Any]:
        self._no_cursor(request)
        listed = [prompt for family in self.registry.prompts for prompt in family.list_for(request.principal)]
        result: dict[str, Any] = {"prompts": listed}
        # Prompts are per user and change whenever the user edits a template: never cached, never shared.
        return _cache_hints(request, result, ttl_ms=0, scope="private")

    def _prompts_get(self, request: _Request) -> dict[str, Any]:
        status = 400 if request.modern else 200
        name = request.params.get("name")
        if not isinstance(name, str) or not name:
            raise JsonRpcError(INVALID_PARAMS, "Invalid params: name must be a string", http_status=status)
        arguments = request.params.get("arguments") or {}
        if not isinstance(arguments, dict) or not all(isinstance(value, str) for value in arguments.values()):
            raise JsonRpcError(
                INVALID_PARAMS, "Invalid params: arguments must be an object of strings", http_status=status
            )
        _refuse_unfit({"name": name, "arguments": arguments}, status)
        for family in self.registry.prompts:
            try:
                prompt = family.get_for(request.principal, name, arguments)
            except InvalidArguments as error:
                raise JsonRpcError(
                    INVALID_PARAMS, f"Invalid params: {error.message}", http_status=status, data=error.data
                ) from None
            if prompt is not None:
                return prompt
        raise JsonRpcError(INVALID_PARAMS, f"Unknown prompt: {name}", http_status=status, data={"name": name})

    def _initialize(self, request: _Request) -> dict[str, Any]:
        requested = request.params.get("protocolVersion")
        if not isinstance(requested, str):
            raise JsonRpcError(INVALID_PARAMS, "Invalid params: protocolVersion must be a string")
        version = requested if requested in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[0]
        return {
            "protocolVersion": version,
            "capabilities": self._capabilities(),
            "serverInfo": self._server_info(),
            "instructions": self.info.instructions,
        }

    def _discover(self, _: _Request) -> dict[str, Any]:
        return {
            "supportedVersions": list(SUPPORTED_VERSIONS),
            "capabilities": self._capabilities(modern=True),
            "instructions": self.info.instructions,
            "ttlMs": TOOLS_LIST_TTL_MS,
            "cacheScope": "public",
        }

    def _tools_list(self, request: _Request) -> dict[str, Any]:
        self._no_cursor(request)
        result: dict[str, Any] = {"tools": [tool.describe() for tool in self.registry.tools.values()]}
        return _cache_hints(request, result, ttl_ms=TOOLS_LIST_TTL_MS, scope="public")

    def _tools_call(self, request: _Request, events: list[dict[str, Any]], log: dict[str, Any]) -> dict[str, Any]:
        status = 400 if request.modern else 200
        name = request.params.get("name")
        if not isinstance(name, str):
            raise JsonRpcError(INVALID_PARAMS, "Invalid params: name must be a string", http_status=status)
        log["tool"] = name
        arguments = request.params.get("arguments", {})
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise JsonRpcError(INVALID_PARAMS, "Invalid params: arguments must be an object", http_status=status)
        try:
            tool = self.registry.tool(name)
        except JsonRpcError as error:
            error.http_status = status
            raise
        call = ToolCall(
            name=name,
            arguments=arguments,
            principal=request.principal,
            request_id=request.id,
            task_requested=request.declares_tasks,
        )
        meta = request.params.get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        if request.want_events and _is_valid_id(token):
            call.progress = _progress_collector(token, events)
        try:
            try:
                tool.validate(arguments)
                if request.non_finite:  # none in the arguments, so elsewhere in the body
                    raise _not_json_numbers()
            except (ToolError, JsonRpcError):
                if tool.verifies_credentials:
                    self._principal(request.authorization, log)  # a dead token hears 401, not about its request
                raise
            answer = tool.handler(call)
        except Unauthenticated:
            raise _unauthorized(True, self.challenge) from None
        except InsufficientScope as error:
            raise JsonRpcError(
                FORBIDDEN,
                error.message,
                http_status=403,
                headers={"WWW-Authenticate": self.scope_challenge(error.scope, error.message)},
            ) from None
        except ToolError as error:
            log["is_error"] = True
            log.update(call.log_fields)
            return error_result(error)
        except JsonRpcError:
            raise
        except Exception:
            self.logger.exception("tool failed", extra={"tool": name})
            raise JsonRpcError(INTERNAL_ERROR, "Internal error", http_status=500) from None
        log["is_error"] = False
        log.update(call.log_fields)
        if isinstance(answer, ToolResult) and answer.task is not None:
            return {"resultType": "task", **answer.task}  # CreateTaskResult: the task, durably created
        return answer.to_result() if isinstance(answer, ToolResult) else ToolResult(structured=answer).to_result()

    # The tasks extension

    def _task_id(self, request: _Request) -> str:
        if not request.declares_tasks:
            raise JsonRpcError(
                MISSING_CAPABILITY,
                f"Missing required client capability: {request.method} needs the {TASKS_EXTENSION} extension "
                "declared in this request's clientCapabilities",
                http_status=400,
                data={"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}},
            )
        task_id = request.params.get("taskId")
        if not isinstance(task_id, str):
            raise JsonRpcError(INVALID_PARAMS, "Invalid params: taskId must be a string", http_status=400)
        return task_id

    def _unknown_task(self, task_id: str) -> JsonRpcError:
        # Another principal's task answers exactly like one that does not exist.
        return JsonRpcError(INVALID_PARAMS, f"Unknown task: {task_id[:100]}", http_status=400)

    def _tasks_get(self, request: _Request) -> dict[str, Any]:
        task_id = self._task_id(request)
        assert self.registry.task_get is not None
        task = self.registry.task_get(task_id, request.principal)
        if task is None:
            raise self._unknown_task(task_id)
        return task

    def _tasks_cancel(self, request: _Request) -> dict[str, Any]:
        task_id = self._task_id(request)
        assert self.registry.task_cancel is not None
        if not self.registry.task_cancel(task_id, request.principal):
            raise self._unknown_task(task_id)
        return {}

    def _tasks_update(self, request: _Request) -> dict[str, Any]:
        # No task of this server ever asks for input: an update of a known task is acknowledged.
        task_id = self._task_id(request)
        assert self.registry.task_get is not None
        if self.registry.task_get(task_id, request.principal) is None:
            raise self._unknown_task(task_id)
        return {}


def _cache_hints(request: _Request, result: dict[str, Any], *, ttl_ms: int, scope: str) -> dict[str, Any]:
    """2026-07-28 list and read results say how long they may be cached, and by whom; earlier eras do not."""
    if request.modern:
        result.update(ttlMs=ttl_ms, cacheScope=scope)
    return result


def _progress_collector(
    token: str | int, events: list[dict[str, Any]]
) -> Callable[[float, float | None, str | None], None]:
    last: list[float] = []

    def report(progress: float, total: float | None, message: str | None) -> None:
        if last and progress <= last[0]:
            return  # progress must strictly increase
        last[:] = [progress]
        params: dict[str, Any] = {"progressToken": token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        events.append({"jsonrpc": "2.0", "method": "notifications/progress", "params": params})

    return report
