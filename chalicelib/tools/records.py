"""Database rows as the JSON that tools return."""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any


def jsonable(value: Any) -> Any:
    """A value fit for JSON: times as ISO 8601, UUIDs as strings, money as exact-enough numbers."""
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [jsonable(item) for item in value]
    return value


def session_record(row: dict[str, Any]) -> dict[str, Any]:
    """A chat_sessions row as tools show it."""
    return jsonable(
        {
            "session_id": row["id"],
            "user_id": row["user_id"],
            "session_name": row["session_name"],
            "system_prompt": row["system_prompt"],
            "metadata": row["metadata"],
            "status": row["status"],
            "message_count": row["message_count"],
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "total_cost_usd": row["total_cost_usd"],
            "model_config": row["model_config"],
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
            "last_activity_at": row["last_activity_at"],
        }
    )
