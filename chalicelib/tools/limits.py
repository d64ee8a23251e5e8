"""Per-user limits: a monthly budget (calendar month, UTC), per-minute request and token caps, and storage
quotas (how many sessions, templates, configs and keys a user keeps, and how big a session may grow).

The rules live in SQL (sql/definitions/limits.sql): a write over a quota is refused there, before anything
is written, and the refusal comes back as a value that quota_error turns into the tool's answer.
"""

from __future__ import annotations

import datetime
import json
import math
from typing import Any

from chalicelib.config import DEFAULT_QUOTAS, LIMIT_KINDS, MAX_METADATA_BYTES, get_settings
from chalicelib.db import Database
from chalicelib.mcp import Forbidden, InvalidArguments, NotFound, Registry, Tool, ToolCall, ToolError
from chalicelib.tools.access import USER_ID_SCHEMA, acting_user, principal, require_admin_scope
from chalicelib.tools.records import jsonable

KINDS = LIMIT_KINDS
REFUSAL_FIELDS = ("quota", "limit", "used", "requested")
LIMIT = {
    "type": "object",
    "properties": {
        "value": {"type": ["number", "null"]},
        "source": {"type": "string", "enum": ["user", "default", "none"]},
    },
    "required": ["value", "source"],
}
COUNT = {"type": "integer"}
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
        "stored": {
            "type": "object",
            "description": "What counts against the storage quotas now.",
            "properties": {kind: COUNT for kind in ("sessions", "session_templates", "model_configs", "api_keys")},
        },
    },
    "required": ["user_id", "limits", "month_spent_usd", "month_resets_at"],
}
QUOTA_DESCRIPTIONS = {
    "sessions": "Sessions a user keeps (active and archived).",
    "messages_per_session": "Messages one session holds (each turn stores its new messages and the reply).",
    "bytes_per_session": "Bytes of text one session holds: its system prompt and its messages.",
    "metadata_bytes_per_session": (
        f"Bytes of one session's metadata, as JSON text (also a template's default_metadata); at most "
        f"{MAX_METADATA_BYTES}, and null means that maximum."
    ),
    "session_templates": "Session templates a user keeps (built-ins do not count).",
    "model_configs": "Model configs a user keeps.",
    "api_keys": "OpenAI keys a user keeps, active and revoked; storing one at the quota deletes the oldest revoked.",
    "concurrent_jobs": "Background completions (jobs) a user has queued or running at once.",
}


def limit_defaults() -> str:
    """The configured default of every limit kind, as the SQL functions take it (a JSON object)."""
    return json.dumps(get_settings().default_limits)


def quota_error(refusal: dict[str, Any]) -> ToolError:
    """The tool answer to a write a storage quota refused: its sentence, and the numbers as data."""
    return ToolError(refusal["message"], data={field: refusal[field] for field in REFUSAL_FIELDS})


def register(registry: Registry, db: Database) -> None:
    """Add chitty_usage_limits_get and chitty_usage_limits_set."""
    defaults = limit_defaults()

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
                "stored": row["stored"],
            }
        )

    def get_limits(call: ToolCall) -> dict[str, Any]:
        return status(acting_user(call))

    def set_limits(call: ToolCall) -> dict[str, Any]:
        caller = principal(call)
        if not caller.is_admin:
            require_admin_scope(caller)
            raise Forbidden("Only admins may set limits.")
        user_id = call.arguments["user_id"]
        changes = {kind: call.arguments[kind] for kind in KINDS if kind in call.arguments}
        for kind, value in changes.items():
            # JSON has no NaN or Infinity, but Python's parser reads them, and NaN passes any minimum.
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidArguments(
                    f"Invalid arguments for chitty_usage_limits_set: {kind}: must be a finite number "
                    f"(not {value}); null removes the limit",
                    data={"field": kind},
                )

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
        "progress, the last minute's requests and tokens, and the sessions, templates, configs and keys stored."
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
    count = {"type": ["integer", "null"], "minimum": 0}
    quotas: dict[str, dict[str, Any]] = {
        kind: {**count, "maximum": 1_000_000_000_000 if kind == "bytes_per_session" else 1_000_000_000}
        for kind in DEFAULT_QUOTAS
    }
    quotas["metadata_bytes_per_session"]["maximum"] = MAX_METADATA_BYTES
    for kind, schema in quotas.items():
        schema["description"] = QUOTA_DESCRIPTIONS[kind]
    registry.add_tool(
        Tool(
            name="chitty_usage_limits_set",
            title="Set usage limits",
            description=(
                "Admins: set a user's monthly budget in USD (calendar month, UTC), requests per minute, tokens "
                "per minute, and storage quotas: sessions, messages_per_session, bytes_per_session, "
                "metadata_bytes_per_session, session_templates, model_configs, api_keys. Omitted limits are "
                "unchanged; null removes that limit for the user (no limit, whatever the server's defaults). "
                "Calls over a limit are refused before reaching OpenAI; writes over a quota before anything is "
                "stored."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "user_id": {**USER_ID_SCHEMA, "description": "The user whose limits to set."},
                    "monthly_budget_usd": {**limit_value, "maximum": 1_000_000},
                    "requests_per_minute": {**limit_value, "type": ["integer", "null"], "maximum": 1_000_000},
                    "tokens_per_minute": {**limit_value, "type": ["integer", "null"], "maximum": 1_000_000_000},
                    **quotas,
                },
                "required": ["user_id"],
                "additionalProperties": False,
            },
            output_schema=STATUS_SCHEMA,
            handler=set_limits,
            idempotent=True,
        )
    )
