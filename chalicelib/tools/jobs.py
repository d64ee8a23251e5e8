"""chatgpt_job_get, chatgpt_job_cancel, chatgpt_job_list: following background completions; and the same jobs
as MCP tasks (tasks/get, tasks/cancel) for clients that declare the tasks extension."""

from __future__ import annotations

import datetime
import time
import uuid
from typing import Any

from chalicelib import jobs
from chalicelib.config import get_settings
from chalicelib.db import Database
from chalicelib.mcp import NotFound, Registry, Tool, ToolCall
from chalicelib.mcp.registry import ERROR_META
from chalicelib.tools.access import USER_ID_SCHEMA, UUID_PATTERN, acting_user, caller_params
from chalicelib.tools.records import NEXT_CURSOR, decode_cursor, encode_cursor, jsonable, page_arguments

# How long chatgpt_job_get may wait for a change, and how often it looks.
MAX_WAIT_S = 20
WAIT_STEP_S = 0.25
STATUS = {"type": "string", "enum": ["queued", "running", "completed", "failed", "cancelled"]}
JOB = {
    "type": "object",
    "properties": {
        "job_id": {"type": "string"},
        "status": STATUS,
        "tool": {"type": "string"},
        "model": {"type": "string"},
        "session_id": {"type": ["string", "null"]},
        "turn_id": {"type": "string"},
        "content": {"type": "string", "description": "The text so far (all of it, once completed)."},
        "result": {
            "type": ["object", "null"],
            "description": "Once completed: the structuredContent the synchronous call would have answered.",
        },
        "error": {"type": ["string", "null"]},
        "error_data": {"type": ["object", "null"]},
        "poll_after_ms": {"type": "integer"},
        "created_at": {"type": "string"},
        "updated_at": {"type": "string"},
        "finished_at": {"type": ["string", "null"]},
    },
    "required": ["job_id", "status", "content", "result", "error", "created_at", "updated_at"],
}
JOB_ID = {"job_id": {"type": "string", "pattern": UUID_PATTERN}}


def job_record(row: dict[str, Any]) -> dict[str, Any]:
    result = row["result"]
    record = {
        "job_id": str(row["id"]),
        "status": row["status"],
        "tool": row["tool"],
        "model": row["model"],
        "session_id": None if row["session_id"] is None else str(row["session_id"]),
        "turn_id": str(row["turn_id"]),
        "content": row["content"],
        "result": None if result is None else result["structuredContent"],
        "error": row["error"],
        "error_data": row["error_data"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
        "finished_at": None if row["finished_at"] is None else row["finished_at"].isoformat(),
    }
    if row["status"] not in jobs.TERMINAL:
        record["poll_after_ms"] = jobs.POLL_AFTER_MS
    return jsonable(record)


def register(registry: Registry, db: Database) -> None:
    """Add the job tools, and the jobs as MCP tasks."""

    def read(job_id: str, caller: dict[str, Any]) -> dict[str, Any]:
        try:
            uuid.UUID(job_id)
        except ValueError:
            raise NotFound(f"No job {job_id}.") from None
        row = db.one("get_job", job_id=job_id, **caller)
        if row is not None and row["status"] in ("queued", "running") and _stale(row):
            jobs.reap(db)
            row = db.one("get_job", job_id=job_id, **caller)
        if row is None:
            # Another user's job answers exactly like one that does not exist.
            raise NotFound(f"No job {job_id}.")
        return row

    def get(call: ToolCall) -> dict[str, Any]:
        args, caller = call.arguments, caller_params(call)
        row = read(args["job_id"], caller)
        deadline = time.monotonic() + min(args.get("wait_seconds", 0), MAX_WAIT_S)
        seen = (row["status"], len(row["content"]))
        while row["status"] not in jobs.TERMINAL and time.monotonic() < deadline:
            time.sleep(WAIT_STEP_S)
            row = read(args["job_id"], caller)
            if (row["status"], len(row["content"])) != seen:
                break
        return job_record(row)

    def cancel(call: ToolCall) -> dict[str, Any]:
        caller = caller_params(call)
        cancel_job(call.arguments["job_id"], caller)
        return job_record(read(call.arguments["job_id"], caller))

    def cancel_job(job_id: str, caller: dict[str, Any]) -> None:
        read(job_id, caller)
        row = db.one("cancel_job", job_id=job_id, **caller)
        if row is not None and row["status"] == "cancelled":
            # It had not started: nothing was sent, so its reservation simply goes.
            db.one("release_reservation", turn_id=str(row["turn_id"]))

    def list_jobs(call: ToolCall) -> dict[str, Any]:
        args = call.arguments
        limit = args.get("limit", 20)
        after_time, after_id = decode_cursor(args["cursor"], _position) if args.get("cursor") else (None, None)
        rows = db.all(
            "list_jobs",
            user_id=acting_user(call),
            status=args.get("status"),
            after_time=after_time,
            after_id=None if after_id is None else str(after_id),
            limit=limit + 1,
        )
        page = rows[:limit]
        more = len(rows) > limit
        listed = [
            jsonable(
                {
                    "job_id": str(row["id"]),
                    "status": row["status"],
                    "tool": row["tool"],
                    "model": row["model"],
                    "session_id": None if row["session_id"] is None else str(row["session_id"]),
                    "characters": row["characters"],
                    "error": row["error"],
                    "created_at": row["created_at"].isoformat(),
                    "finished_at": None if row["finished_at"] is None else row["finished_at"].isoformat(),
                }
            )
            for row in page
        ]
        last = page[-1] if page else None
        cursor = encode_cursor({"t": last["created_at"].isoformat(), "i": str(last["id"])}) if more and last else None
        return {"jobs": listed, "next_cursor": cursor}

    registry.add_tool(
        Tool(
            name="chatgpt_job_get",
            title="A background completion",
            description=(
                "A background job started with background: true: its status (queued, running, completed, failed, "
                "cancelled), the text so far as content, and once completed the result the synchronous call would "
                "have given (usage, cost, message ids). wait_seconds (up to 20) waits for a change first."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    **JOB_ID,
                    "wait_seconds": {"type": "integer", "minimum": 0, "maximum": MAX_WAIT_S},
                },
                "required": ["job_id"],
                "additionalProperties": False,
            },
            output_schema=JOB,
            handler=get,
            read_only=True,
        )
    )
    registry.add_tool(
        Tool(
            name="chatgpt_job_cancel",
            title="Cancel a background completion",
            description=(
                "Stop a background job: a queued one at once (nothing is billed), a running one within a second "
                "(the stream from OpenAI is closed, and what was used is billed). A finished job stays as it is."
            ),
            input_schema={
                "type": "object",
                "properties": JOB_ID,
                "required": ["job_id"],
                "additionalProperties": False,
            },
            output_schema=JOB,
            handler=cancel,
            idempotent=True,
        )
    )
    registry.add_tool(
        Tool(
            name="chatgpt_job_list",
            title="List background completions",
            description="Your background jobs, newest first, a page at a time; status narrows them.",
            input_schema={
                "type": "object",
                "properties": {"status": STATUS, **page_arguments(20), "user_id": USER_ID_SCHEMA},
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": {"jobs": {"type": "array", "items": {"type": "object"}}, "next_cursor": NEXT_CURSOR},
                "required": ["jobs", "next_cursor"],
            },
            handler=list_jobs,
            read_only=True,
            idempotent=True,
        )
    )

    def task_of(task_id: str, principal: Any) -> dict[str, Any] | None:
        """A job as the tasks extension shows it; None for one that does not exist or is not the caller's."""
        caller = {"caller": principal.user_id, "caller_is_admin": principal.is_admin}
        try:
            row = read(task_id, caller)
        except NotFound:
            return None
        return _task(row)

    def cancel_task(task_id: str, principal: Any) -> bool:
        caller = {"caller": principal.user_id, "caller_is_admin": principal.is_admin}
        try:
            cancel_job(task_id, caller)
        except NotFound:
            return False
        return True

    registry.set_tasks(get=task_of, cancel=cancel_task)


def _task(row: dict[str, Any]) -> dict[str, Any]:
    """A job as a task of the tasks extension: working until it ends; a failed turn is a completed task
    whose result is the tool's error, as a synchronous call would have answered."""
    status = {"queued": "working", "running": "working"}.get(row["status"], row["status"])
    task: dict[str, Any] = {
        "taskId": str(row["id"]),
        "status": "completed" if row["status"] == "failed" else status,
        "createdAt": _iso(row["created_at"]),
        "lastUpdatedAt": _iso(row["updated_at"]),
        "ttlMs": int(get_settings().job_retention_days * 86_400_000),
        "pollIntervalMs": jobs.POLL_AFTER_MS,
    }
    if status == "working":
        task["statusMessage"] = f"{row['status']}: {len(row['content'])} characters so far"
    elif row["status"] == "completed":
        result = row["result"]
        task["result"] = {
            "content": [{"type": "text", "text": result["text"]}],
            "structuredContent": result["structuredContent"],
            "isError": False,
        }
    elif row["status"] == "failed":
        task["statusMessage"] = row["error"]
        task["result"] = {
            "content": [{"type": "text", "text": row["error"] or "The job failed."}],
            "isError": True,
            "_meta": {ERROR_META: row["error_data"] or {}},
        }
    else:
        task["statusMessage"] = "cancelled"
    return jsonable(task)


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def _stale(row: dict[str, Any]) -> bool:
    """Whether the job's worker looks dead: no heartbeat for CHITTY_JOB_STALE_SECONDS (or never taken)."""
    now = datetime.datetime.now(datetime.UTC)
    if row["status"] == "queued":
        return (now - row["created_at"]).total_seconds() > jobs.QUEUED_TIMEOUT_S
    beat = row["heartbeat_at"] or row["created_at"]
    return (now - beat).total_seconds() > get_settings().job_stale_seconds


def _position(position: dict[str, Any]) -> tuple[datetime.datetime, uuid.UUID]:
    return datetime.datetime.fromisoformat(position["t"]), uuid.UUID(position["i"])
