"""Who may act for whom: users act for themselves, admins for anyone."""

from __future__ import annotations

from typing import Any

from chalicelib.auth import Principal
from chalicelib.mcp.errors import Forbidden, InsufficientScope
from chalicelib.mcp.registry import ToolCall

USER_ID_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": "^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$",
    "description": "Act for this user (admins only; default: yourself).",
}
UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


def principal(call: ToolCall) -> Principal:
    assert isinstance(call.principal, Principal)
    return call.principal


def require_admin_scope(caller: Principal) -> None:
    """An admin whose app was not granted the admin scope is asked to grant it (403, step-up), not refused."""
    if caller.admin_scope_missing:
        raise InsufficientScope(
            "This needs your admin rights, which this app was not granted: sign in again and allow them.",
            "mcp mcp:admin",
        )


def acting_user(call: ToolCall) -> str:
    """The user the call acts for: `user_id` if given and allowed, else the caller."""
    caller = principal(call)
    requested = call.arguments.get("user_id")
    if requested is None or requested == caller.user_id:
        return caller.user_id
    if not caller.is_admin:
        require_admin_scope(caller)
        raise Forbidden("Only admins may act for another user; leave user_id out to act for yourself.")
    return str(requested)


def caller_params(call: ToolCall) -> dict[str, Any]:
    """The caller, as the named queries take it."""
    caller = principal(call)
    return {"caller": caller.user_id, "caller_is_admin": caller.is_admin}
