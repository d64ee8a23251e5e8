"""Database rows as the JSON that tools return, and pages of them that fit one answer."""

from __future__ import annotations

import base64
import binascii
import datetime
import decimal
import json
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from chalicelib.mcp import InvalidArguments

# What the items of one page may take in an answer; a page holds at least one item, and field limits and
# quotas keep every single item under 4.3 MB. So a page's answer stays under 5 MB (Lambda's limit is 6 MB).
PAGE_BYTES = 4_000_000
MAX_PAGE = 100
NEXT_CURSOR = {"type": ["string", "null"], "description": "Pass back as cursor for the next page; null: no more."}
T = TypeVar("T")


def page_arguments(default: int) -> dict[str, Any]:
    """The `limit` and `cursor` arguments of a paged list tool."""
    return {
        "limit": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_PAGE,
            "default": default,
            "description": f"At most this many per page (default {default}); a page also stays under 4 MB.",
        },
        "cursor": {
            "type": "string",
            "pattern": "^[A-Za-z0-9_-]{1,1000}$",
            "description": "The next_cursor of the previous page, unchanged.",
        },
    }


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


def answer_bytes(value: Any) -> int:
    """The bytes `value` adds to a tool's answer, which carries it twice: as JSON text for models to read
    (escaped again inside the JSON-RPC message) and as structuredContent."""
    text = json.dumps(value, default=str)
    structured = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return len(json.dumps(text)) + len(structured.encode())


def fill_page(records: list[dict[str, Any]], budget: int = PAGE_BYTES) -> list[dict[str, Any]]:
    """The leading records that fit in `budget` bytes of an answer; always at least the first."""
    page: list[dict[str, Any]] = []
    used = 0
    for record in records:
        size = answer_bytes(record)
        if page and used + size > budget:
            break
        page.append(record)
        used += size
    return page


def encode_cursor(position: dict[str, Any]) -> str:
    """An opaque cursor for the page after `position` (the sort key of the last item shown)."""
    return base64.urlsafe_b64encode(json.dumps(position, default=str).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, read: Callable[[dict[str, Any]], T]) -> T:
    """The position in a cursor of encode_cursor, as `read` makes it of the decoded object; InvalidArguments
    when the cursor is not one (when decoding it, or `read`, raises ValueError, KeyError or TypeError)."""
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(position, dict):
            raise TypeError("not an object")
        return read(position)
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InvalidArguments(
            "Invalid arguments: cursor: not a cursor this server issued; pass back a next_cursor unchanged",
            data={"field": "cursor"},
        ) from None
