"""Per-user limits: a monthly budget (calendar month, UTC) and per-minute request and token caps."""

from __future__ import annotations

import datetime
import json
from typing import Any

from chalicelib.config import get_settings
from chalicelib.db import Database
from chalicelib.mcp import Forbidden, NotFound, Registry, Tool, ToolCall
from chalicelib.tools.access import USER_ID_SCHEMA, acting_user, principal
from chalicelib.tools.records import jsonable

KINDS = ("monthly_budget_usd", "requests_per_minute", "tokens_per_minute")
LIMIT = {
    "type": "object",
    "properties": {
        "value": {"type": ["number", "null"]},
        "source": {"type": "string", "enum": ["user", "default", "none"]},
    },
    "required": ["value", "source"],
}
STATUS_SCHEMA = {
    "type": "object",
    "properties": {
        "user_id": {"type": "string"},
        "limits": {"type": "object", "properties": {kind: LIMIT for kind in KINDS}, "required": list(KINDS)},
        "month_start": {"type": "string"},
        "month_resets_at": {"type": "string"},
        "month_spent_usd": {"type": "number"},
        "reserved_usd": {"type": "number"},
        "requests_last_minute": {"type": "integer"},
        "tokens_last_minute": {"type": "integer"},
        "requests_in_progress": {"type": "integer"},
    },
    "required": ["user_id", "limits", "month_spent_usd", "month_resets_at"],
}


def register(registry: Registry, db: Database) -> None:
    """Add chitty_usage_limits_get and chitty_usage_limits_set."""
    defaults = json.dumps(get_settings().default_limits)

    def status(user_id: str) -> dict[str, Any]:
        row = db.one("limits_status", user_id=user_id, defaults=defaults)
        if row is None:
            raise NotFound(f"No user {user_id!r}.")
        month_start: datetime.datetime = row["month_start"]
        resets = (month_start.replace(day=28) + datetime.timedelta(days=4)).replace(day=1)
        return jsonable(
            {
                "user_id": row["user_id"],
                "limits": row["limits"],
                "month_start": month_start,
                "month_resets_at": resets,
                "month_spent_usd": row["spent_usd"],
                "reserved_usd": row["reserved_usd"],
                "requests_last_minute": row["requests_last_minute"],
                "tokens_last_minute": row["tokens_last_minute"],
                "requests_in_progress": row["reserved_requests"],
            }
        )

    def get_limits(call: ToolCall) -> dict[str, Any]:
        return status(acting_user(call))

    def set_limits(call: ToolCall) -> dict[str, Any]:
        if not principal(call).is_admin:
            raise Forbidden("Only admins may set limits.")
        user_id = call.arguments["user_id"]
        changes = {kind: call.arguments[kind] for kind in KINDS if kind in call.arguments}

        def apply(tx: Any) -> bool:
            return all(
                tx.one("set_limit", user_id=user_id, kind=kind, value=None if value is None else str(value))
                for kind, value in changes.items()
            )

        if changes and not db.transaction(apply):
            raise NotFound(f"No user {user_id!r}.")
        return status(user_id)

    description = (
        "Limits in force for a user (yourself unless you are an admin naming user_id), where each comes from "
        "(user, default, none), and what counts against them now: this calendar month's spend (UTC), calls in "
        "progress, and the last minute's requests and tokens."
    )
    registry.add_tool(
        Tool(
            name="chitty_usage_limits_get",
            title="Get usage limits",
            description=description,
            input_schema={
                "type": "object",
                "properties": {"user_id": USER_ID_SCHEMA},
                "additionalProperties": False,
            },
            output_schema=STATUS_SCHEMA,
            handler=get_limits,
            read_only=True,
            idempotent=True,
        )
    )
    limit_value = {"type": ["number", "null"], "minimum": 0}
    registry.add_tool(
        Tool(
            name="chitty_usage_limits_set",
            title="Set usage limits",
            description=(
                "Admins: set a user's monthly budget in USD (calendar month, UTC), requests per minute and tokens "
                "per minute. Omitted limits are unchanged; null removes that limit for the user (no limit, "
                "whatever the server's defaults). Calls over a limit are refused before reaching OpenAI."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "user_id": {**USER_ID_SCHEMA, "description": "The user whose limits to set."},
                    "monthly_budget_usd": {**limit_value, "maximum": 1_000_000},
                    "requests_per_minute": {**limit_value, "type": ["integer", "null"], "maximum": 1_000_000},
                    "tokens_per_minute": {**limit_value, "type": ["integer", "null"], "maximum": 1_000_000_000},
                },
                "required": ["user_id"],
                "additionalProperties": False,
            },
            output_schema=STATUS_SCHEMA,
            handler=set_limits,
            idempotent=True,
        )
    )
