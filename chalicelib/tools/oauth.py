"""chitty_oauth_grants_list and chitty_oauth_grants_revoke: the apps a user connected by signing in."""

from __future__ import annotations

from typing import Any

from chalicelib.db import Database
from chalicelib.mcp import NotFound, Registry, Tool, ToolCall
from chalicelib.tools.access import USER_ID_SCHEMA, UUID_PATTERN, acting_user
from chalicelib.tools.records import jsonable

GRANT = {
    "type": "object",
    "properties": {
        "grant_id": {"type": "string"},
        "client_id": {"type": "string"},
        "client_name": {"type": "string"},
        "redirect_host": {"type": ["string", "null"]},
        "scope": {"type": "string"},
        "created_at": {"type": "string"},
        "last_used_at": {"type": ["string", "null"]},
        "revoked_at": {"type": ["string", "null"]},
    },
    "required": ["grant_id", "client_id", "client_name", "scope", "created_at", "last_used_at", "revoked_at"],
}


def _grant(row: dict[str, Any]) -> dict[str, Any]:
    return jsonable(
        {
            "grant_id": str(row["id"]),
            "client_id": row["client_id"],
            "client_name": row["client_name"],
            "redirect_host": row["redirect_host"],
            "scope": row["scope"],
            "created_at": row["created_at"].isoformat(),
            "last_used_at": None if row["last_used_at"] is None else row["last_used_at"].isoformat(),
            "revoked_at": None if row["revoked_at"] is None else row["revoked_at"].isoformat(),
        }
    )


def register(registry: Registry, db: Database) -> None:
    """Add the connected-app tools."""

    def list_grants(call: ToolCall) -> dict[str, Any]:
        include_revoked = call.arguments.get("include_revoked", False)
        rows = db.all("list_grants", user_id=acting_user(call), include_revoked=include_revoked)
        return {"grants": [_grant(row) for row in rows]}

    def revoke_grant(call: ToolCall) -> dict[str, Any]:
        row = db.one("revoke_user_grant", grant_id=call.arguments["grant_id"], user_id=acting_user(call))
        if row is None:
            raise NotFound(f"No connected app {call.arguments['grant_id']}.")
        return _grant(row)

    registry.add_tool(
        Tool(
            name="chitty_oauth_grants_list",
            title="Connected apps",
            description=(
                "The apps you connected by signing in (claude.ai, ChatGPT, Claude Desktop, ...): each with its "
                "scopes, when you allowed it and when it last acted; include_revoked lists those you revoked too."
            ),
            input_schema={
                "type": "object",
                "properties": {"include_revoked": {"type": "boolean"}, "user_id": USER_ID_SCHEMA},
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": {"grants": {"type": "array", "items": GRANT}},
                "required": ["grants"],
            },
            handler=list_grants,
            read_only=True,
            idempotent=True,
        )
    )
    registry.add_tool(
        Tool(
            name="chitty_oauth_grants_revoke",
            title="Disconnect an app",
            description="Revoke a connected app: its tokens stop working at once; it must ask you to sign in again.",
            input_schema={
                "type": "object",
                "properties": {"grant_id": {"type": "string", "pattern": UUID_PATTERN}, "user_id": USER_ID_SCHEMA},
                "required": ["grant_id"],
                "additionalProperties": False,
            },
            output_schema=GRANT,
            handler=revoke_grant,
            destructive=True,
            idempotent=True,
        )
    )
