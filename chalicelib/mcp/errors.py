"""Errors the protocol layer turns into JSON-RPC errors or isError tool results."""

from __future__ import annotations

from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RESOURCE_NOT_FOUND = -32002
HEADER_MISMATCH = -32020
MISSING_CAPABILITY = -32021
UNSUPPORTED_PROTOCOL_VERSION = -32022
# Server-defined (-32000..-32099): the request needs a valid bearer token.
UNAUTHORIZED = -32001
FORBIDDEN = -32003
UNAVAILABLE = -32004


class JsonRpcError(Exception):
    """A request the server answers with a JSON-RPC error object (and this HTTP status)."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        http_status: int = 200,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status
        self.data = data
        self.headers = headers or {}

    def to_error(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class ToolError(Exception):
    """A tool call that failed in a way the model should see: answered as an isError result."""

    def __init__(self, message: str, *, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class NotFound(ToolError):
    """The thing asked for does not exist, or belongs to someone else (the two are not told apart)."""


class Forbidden(ToolError):
    """The caller may not do this."""


class InvalidArguments(ToolError):
    """The arguments are well-typed but make no sense (an end before a start, a bad cursor)."""


class Unavailable(ToolError):
    """A dependency (database, upstream) cannot answer right now; the call changed nothing."""


class InsufficientScope(Exception):
    """The token lacks a scope the call needs (its user has the right): answered 403 with a challenge naming the
    scopes, so the client can ask the user for them (step-up authorization)."""

    def __init__(self, message: str, scope: str) -> None:
        super().__init__(message)
        self.message, self.scope = message, scope


class Unauthenticated(Exception):
    """The bearer token turned out to be unknown, expired or revoked (found by a tool that checks it itself)."""
