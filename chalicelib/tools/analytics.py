"""chitty_usage_analytics: requests, tokens, cost and latency by hour, day, week or month.

The answer is exact at any moment: usage_report (SQL) adds the hours already rolled up into
usage_analytics to the completions still queued in usage_pending, in one snapshot. Buckets in a
time zone whose offset is not a whole number of hours (Asia/Kolkata), and grouping by session,
are computed from chat_messages directly.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from pg8000.exceptions import DatabaseError

from chalicelib.db import Database, error_message, sqlstate
from chalicelib.mcp import InvalidArguments, NotFound, Registry, Tool, ToolCall
from chalicelib.tools.access import acting_user
from chalicelib.tools.records import jsonable

ALL_USERS = "*"
GRANULARITIES = ("hour", "day", "week", "month")
GROUPINGS = ("none", "model", "session")
DATE_OR_TIME = {
    "type": "string",
    "pattern": r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?)?$",
}
# IANA names only: PostgreSQL would also take abbreviations (PST) and POSIX rules (EST5), which do not
# follow daylight saving time the way users expect.
TIMEZONE = {
    "type": "string",
    "pattern": r"^(UTC|GMT|Etc/(UTC|GMT([+-]\d{1,2})?)|[A-Za-z_]+(/[A-Za-z_-]+){1,2})$",
    "description": "An IANA time zone name such as UTC, America/New_York or Asia/Kolkata (default UTC).",
    "default": "UTC",
}
FIGURES: dict[str, Any] = {
    "requests": {"type": "integer", "description": "Completions, failed ones included."},
    "errors": {"type": "integer", "description": "Completions that failed upstream."},
    "unpriced_requests": {"type": "integer", "description": "Completions of a model without a price (cost 0)."},
    "prompt_tokens": {"type": "integer"},
    "completion_tokens": {"type": "integer"},
    "cached_tokens": {"type": "integer"},
    "reasoning_tokens": {"type": "integer"},
    "cost_usd": {"type": "number"},
    "avg_latency_ms": {"type": ["number", "null"]},
    "max_latency_ms": {"type": ["integer", "null"]},
}
BUCKET = {
    "type": "object",
    "properties": {
        "start": {"type": "string", "format": "date-time"},
        "end": {"type": "string", "format": "date-time"},
        "model": {"type": ["string", "null"]},
        "session_id": {"type": ["string", "null"]},
        **FIGURES,
    },
    "required": ["start", "end", *FIGURES],
}
OUTPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "user_id": {"type": "string", "description": "The user, or * for all users."},
        "start": {"type": "string", "format": "date-time"},
        "end": {"type": "string", "format": "date-time", "description": "Exclusive."},
        "timezone": {"type": "string"},
        "granularity": {"type": "string", "enum": list(GRANULARITIES)},
        "group_by": {"type": "string", "enum": list(GROUPINGS)},
        "computed_from": {"type": "string", "enum": ["rollup", "messages"]},
        "buckets": {"type": "array", "items": BUCKET},
        "totals": {"type": "object", "properties": FIGURES, "required": list(FIGURES)},
    },
    "required": ["user_id", "start", "end", "timezone", "granularity", "group_by", "buckets", "totals"],
}
INPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "user_id": {
            "type": "string",
            "pattern": r"^(\*|[A-Za-z0-9][A-Za-z0-9._@-]{0,127})$",
            "description": "Whose usage (admins only; default: yours). * means all users.",
        },
        "start_date": {
            **DATE_OR_TIME,
            "description": "First day (YYYY-MM-DD, in timezone), or an ISO 8601 date-time; with an offset "
            "it is that instant, without one a time in timezone.",
        },
        "end_date": {
            **DATE_OR_TIME,
            "description": "Last day, included (YYYY-MM-DD, in timezone), or an ISO 8601 date-time, excluded.",
        },
        "granularity": {"type": "string", "enum": list(GRANULARITIES), "default": "day"},
        "group_by": {"type": "string", "enum": list(GROUPINGS), "default": "none"},
        "timezone": TIMEZONE,
    },
    "required": ["start_date", "end_date"],
    "additionalProperties": False,
}
DESCRIPTION = (
    "Your usage of ChatGPT through this server: completions, errors, prompt/completion/cached/reasoning "
    "tokens, cost in USD and latency, in buckets of an hour, day, week (from Monday) or month in a time "
    "zone, optionally per model or per session, with totals. Exact up to the last completion. Dates are "
    "YYYY-MM-DD days in the time zone, both included; ISO 8601 date-times also work (with an offset an "
    "instant, without one a time in the time zone; an end date-time is excluded). The range may span at "
    "most 31 days by hour and 400 days otherwise. Only buckets with usage are listed. By session, "
    "completions outside a session and those of deleted sessions have session_id null. Admins may pass "
    "user_id for another user, or user_id * for everyone."
)


@dataclass(frozen=True)
class Bound:
    """One end of the range: an instant (an offset was given) or a wall-clock time in the time zone."""

    at: datetime.datetime | None
    local: datetime.datetime | None


def parse_bound(name: str, text: str, *, end: bool) -> Bound:
    """A start_date or end_date argument as a bound; a date end is the midnight after that day."""
    try:
        if len(text) == len("YYYY-MM-DD"):
            day = datetime.date.fromisoformat(text) + datetime.timedelta(days=1 if end else 0)
            return Bound(at=None, local=datetime.datetime.combine(day, datetime.time()))
        value = datetime.datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        raise InvalidArguments(
            f"{name}: {text!r} is not a date (YYYY-MM-DD) or an ISO 8601 date-time that exists"
        ) from None
    return Bound(at=value, local=None) if value.tzinfo else Bound(at=None, local=value)


def _figures(row: dict[str, Any]) -> dict[str, Any]:
    return jsonable({name: row[name] for name in FIGURES})


def register(registry: Registry, db: Database) -> None:
    """Add chitty_usage_analytics to the registry."""

    def report(call: ToolCall) -> dict[str, Any]:
        args = call.arguments
        user_id = acting_user(call)
        timezone = args.get("timezone", "UTC")
        start = parse_bound("start_date", args["start_date"], end=False)
        end = parse_bound("end_date", args["end_date"], end=True)
        granularity = args.get("granularity", "day")
        group_by = args.get("group_by", "none")
        try:
            rows = db.all(
                "usage_report",
                user_id=None if user_id == ALL_USERS else user_id,
                start_at=start.at,
                start_local=start.local,
                end_at=end.at,
                end_local=end.local,
                granularity=granularity,
                group_by=group_by,
                timezone=timezone,
            )
        except DatabaseError as error:
            message = error_message(error)
            if sqlstate(error) == "22023" and message.startswith("time zone"):
                raise InvalidArguments(
                    f"timezone: {timezone!r} is not a time zone this server knows; "
                    "use an IANA name such as UTC, America/New_York or Asia/Kolkata"
                ) from None
            if sqlstate(error) == "22023":
                raise InvalidArguments(message) from None
            if sqlstate(error) == "P0002":
                raise NotFound(f"No user {user_id!r}.") from None
            raise
        *buckets, totals = rows
        listed = []
        for row in buckets:
            bucket = {"start": row["bucket_start"], "end": row["bucket_end"]}
            if group_by != "none":
                key = "model" if group_by == "model" else "session_id"
                bucket[key] = jsonable(row[key])
            listed.append({**bucket, **_figures(row)})
        return {
            "user_id": user_id,
            "start": totals["bucket_start"],
            "end": totals["bucket_end"],
            "timezone": timezone,
            "granularity": granularity,
            "group_by": group_by,
            "computed_from": totals["computed_from"],
            "buckets": listed,
            "totals": _figures(totals),
        }

    registry.add_tool(
        Tool(
            name="chitty_usage_analytics",
            title="Usage analytics",
            description=DESCRIPTION,
            input_schema=INPUT_SCHEMA,
            output_schema=OUTPUT_SCHEMA,
            handler=report,
            read_only=True,
            idempotent=True,
        )
    )
