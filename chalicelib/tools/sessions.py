"""Conversation sessions: create, list, get, update, delete.

A session belongs to one user. Users see and change only their own; admins any. Another
user's session answers exactly like one that does not exist. A session may be created from a
session template (its rendered system prompt, default metadata and model config) and may name
a model config as the default of its completions.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import uuid
from typing import Any

from chalicelib.auth import Principal
from chalicelib.db import Database
from chalicelib.mcp.errors import InvalidArguments, NotFound
from chalicelib.mcp.registry import Registry, ResourceFamily, Tool, ToolCall
from chalicelib.tools.access import USER_ID_SCHEMA, UUID_PATTERN, acting_user, caller_params
from chalicelib.tools.configs import CONFIG_NAME, config_not_found
from chalicelib.tools.records import session_record
from chalicelib.tools.templates import TEMPLATE_NAME, VARIABLE_VALUES, render

MAX_PAGE = 100
DEFAULT_PAGE = 20
RESOURCE_PREFIX = "chitty://sessions/"
RECENT_RESOURCES = 50
TRANSCRIPT_MESSAGES = 500

SESSION_ID = {"type": "string", "pattern": UUID_PATTERN, "description": "The session's id (a UUID)."}
METADATA = {
    "type": "object",
    "description": "ChittyOS links and labels, e.g. case_id, case_type, document_ids.",
    "properties": {
        "case_id": {"type": "string", "maxLength": 200},
        "case_type": {"type": "string", "maxLength": 200},
        "document_ids": {"type": "array", "items": {"type": "string", "maxLength": 200}, "maxItems": 1000},
    },
}
STATUS = {"type": "string", "enum": ["active", "archived"]}
SESSION = {
    "type": "object",
    "properties": {
        "session_id": {"type": "string"},
        "user_id": {"type": "string"},
        "session_name": {"type": "string"},
        "system_prompt": {"type": ["string", "null"]},
        "metadata": {"type": "object"},
        "status": STATUS,
        "message_count": {"type": "integer"},
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_cost_usd": {"type": "number"},
        "model_config": {"type": ["string", "null"], "description": "Default model config of its completions."},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "last_activity_at": {"type": "string", "format": "date-time"},
    },
    "required": ["session_id", "user_id", "session_name", "metadata", "status", "created_at"],
}


def _encode_cursor(row: dict[str, Any]) -> str:
    payload = json.dumps({"t": row["created_at"].isoformat(), "i": str(row["id"])}).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime.datetime, uuid.UUID]:
    try:
        payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.datetime.fromisoformat(payload["t"]), uuid.UUID(payload["i"])
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InvalidArguments("cursor: not a cursor this server issued; pass back a next_cursor unchanged") from None


def transcript_markdown(session: dict[str, Any], messages: list[dict[str, Any]]) -> str:
    """A session as markdown: its facts, its system prompt, then each message in order."""
    record = session_record(session)
    lines = [
        f"# {record['session_name']}",
        "",
        f"- Session: {record['session_id']} ({record['status']})",
        f"- Created: {record['created_at']}; last activity: {record['last_activity_at']}",
        f"- Messages: {record['message_count']}; tokens: {record['prompt_tokens']} prompt, "
        f"{record['completion_tokens']} completion; cost: ${session['total_cost_usd']} USD",
    ]
    for key, value in sorted(record["metadata"].items()):
        lines.append(f"- {key}: {json.dumps(value) if not isinstance(value, str) else value}")
    if record["system_prompt"]:
        lines += ["", "## System prompt", "", record["system_prompt"]]
    if session["last_seq"] > len(messages) and messages:
        lines += ["", f"_Showing the latest {len(messages)} of {session['last_seq']} messages._"]
    for message in messages:
        heading = f"## {message['seq']}. {message['role']}"
        if message["role"] == "assistant" and message["model"]:
            heading += f" ({message['model']}, {message['prompt_tokens']}+{message['completion_tokens']} tokens"
            heading += f", ${message['cost_usd']})" if message["cost_usd"] is not None else ", unpriced)"
        if message["status"] == "error":
            heading += " [failed]"
        lines += ["", heading, f"_{message['created_at'].isoformat()}_", ""]
        if message["content"] is not None:
            lines.append(message["content"])
        if message["error"]:
            lines.append(f"> Error: {message['error']}")
    return "\n".join(lines) + "\n"


def register(registry: Registry, db: Database) -> None:
    """Add the session tools, and sessions as resources, to the registry."""

    def session_resources(caller: Principal) -> list[dict[str, Any]]:
        rows = db.all("recent_sessions", user_id=caller.user_id, limit=RECENT_RESOURCES)
        return [
            {
                "uri": f"{RESOURCE_PREFIX}{row['id']}",
                "name": row["session_name"],
                "title": row["session_name"],
                "description": f"{row['message_count']} messages, {row['status']}, "
                f"last activity {row['last_activity_at'].isoformat()}",
                "mimeType": "text/markdown",
            }
            for row in rows
        ]

    def read_session(caller: Principal, uri: str) -> dict[str, Any] | None:
        session_id = uri.removeprefix(RESOURCE_PREFIX)
        try:
            uuid.UUID(session_id)
        except ValueError:
            return None
        session = db.one("get_session", session_id=session_id, caller=caller.user_id, caller_is_admin=caller.is_admin)
        if session is None:
            return None
        messages = db.all("session_transcript", session_id=session_id, limit=TRANSCRIPT_MESSAGES)
        return {"uri": uri, "mimeType": "text/markdown", "text": transcript_markdown(session, messages)}

    registry.add_resources(
        ResourceFamily(
            uri_template=RESOURCE_PREFIX + "{session_id}",
            name="chat-session",
            title="Chat session transcript",
            description="A session's settings and its messages, as markdown.",
            mime_type="text/markdown",
            list_for=session_resources,
            read_for=read_session,
        )
    )

    def create(call: ToolCall) -> dict[str, Any]:
        user_id = acting_user(call)
        args = call.arguments
        system_prompt = args.get("initial_system_prompt")
        metadata = args.get("metadata") or {}
        model_config = args.get("model_config")
        if "template" in args:
            if system_prompt is not None:
                raise InvalidArguments(
                    "Give either template or initial_system_prompt: the template writes the system prompt."
                )
            template = db.one("usable_session_template", user_id=user_id, template_name=args["template"])
            if template is None:
                raise NotFound(f"No session template {args['template']!r}; see chitty_session_template_list.")
            system_prompt = render(template, args.get("variables", {}))
            metadata = {**template["default_metadata"], **metadata}
            model_config = model_config or template["model_config"]
        elif "variables" in args:
            raise InvalidArguments("variables fill a template's placeholders: name the template too.")
        row = db.one(
            "create_session",
            user_id=user_id,
            session_name=args["session_name"],
            system_prompt=system_prompt,
            metadata=json.dumps(metadata),
            model_config=model_config,
        )
        if row is None:
            if model_config is not None:
                raise config_not_found(model_config)
            raise NotFound(f"No user {user_id!r}.")
        return session_record(row)

    def list_sessions(call: ToolCall) -> dict[str, Any]:
        args = call.arguments
        limit = args.get("limit", DEFAULT_PAGE)
        after_created, after_id = _decode_cursor(args["cursor"]) if args.get("cursor") else (None, None)
        rows = db.all(
            "list_sessions",
            user_id=acting_user(call),
            status=args.get("status"),
            case_id=args.get("case_id"),
            after_created=after_created,
            after_id=str(after_id) if after_id else None,
            limit=limit + 1,
        )
        page = rows[:limit]
        next_cursor = _encode_cursor(page[-1]) if len(rows) > limit else None
        return {"sessions": [session_record(row) for row in page], "next_cursor": next_cursor}

    def get(call: ToolCall) -> dict[str, Any]:
        row = db.one("get_session", session_id=call.arguments["session_id"], **caller_params(call))
        if row is None:
            raise NotFound(f"No session {call.arguments['session_id']}.")
        return session_record(row)

    def update(call: ToolCall) -> dict[str, Any]:
        args = call.arguments
        metadata = args.get("metadata")
        row = db.one(
            "update_session",
            session_id=args["session_id"],
            session_name=args.get("session_name"),
            status=args.get("status"),
            metadata=None if metadata is None else json.dumps(metadata),
            change_model_config="model_config" in args,
            model_config=args.get("model_config"),
            **caller_params(call),
        )
        if row is None:
            session = db.one("get_session", session_id=args["session_id"], **caller_params(call))
            if session is None:
                raise NotFound(f"No session {args['session_id']}.")
            raise config_not_found(args["model_config"])
        return session_record(row)

    def delete(call: ToolCall) -> dict[str, Any]:
        row = db.one("delete_session", session_id=call.arguments["session_id"], **caller_params(call))
        if row is None:
            raise NotFound(f"No session {call.arguments['session_id']}.")
        return {"session_id": str(row["id"]), "deleted": True}

    registry.add_tool(
        Tool(
            name="chitty_chat_session_create",
            title="Create chat session",
            description=(
                "Start a conversation session with ChatGPT. Its system prompt is sent with every "
                "completion in the session; metadata links it to ChittyOS cases and documents. "
                "With template (see chitty_session_template_list) and variables, the system prompt is the "
                "template's with every {{variable}} filled (all required; unknown names are an error), the "
                "metadata is the template's default metadata with yours merged over it, and the model config "
                "is the template's unless you name one."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "user_id": USER_ID_SCHEMA,
                    "session_name": {"type": "string", "minLength": 1, "maxLength": 200},
                    "initial_system_prompt": {"type": "string", "maxLength": 100_000},
                    "metadata": METADATA,
                    "template": {**TEMPLATE_NAME, "description": "Start from this session template (by name)."},
                    "variables": VARIABLE_VALUES,
                    "model_config": {
                        **CONFIG_NAME,
                        "description": "Default model config of the session's completions (by name).",
                    },
                },
                "required": ["session_name"],
                "additionalProperties": False,
            },
            output_schema=SESSION,
            handler=create,
        )
    )
    registry.add_tool(
        Tool(
            name="chitty_chat_session_list",
            title="List chat sessions",
            description="List your sessions, newest first, optionally by status or ChittyOS case; paged by cursor.",
            input_schema={
                "type": "object",
                "properties": {
                    "user_id": USER_ID_SCHEMA,
                    "status": STATUS,
                    "case_id": {"type": "string", "maxLength": 200},
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
                    "cursor": {"type": "string", "maxLength": 500},
                },
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": {
                    "sessions": {"type": "array", "items": SESSION},
                    "next_cursor": {"type": ["string", "null"]},
                },
                "required": ["sessions", "next_cursor"],
            },
            handler=list_sessions,
            read_only=True,
            idempotent=True,
        )
    )
    registry.add_tool(
        Tool(
            name="chitty_chat_session_get",
            title="Get chat session",
            description="A session's settings, ChittyOS links and running totals (messages, tokens, cost).",
            input_schema={
                "type": "object",
                "properties": {"session_id": SESSION_ID},
                "required": ["session_id"],
                "additionalProperties": False,
            },
            output_schema=SESSION,
            handler=get,
            read_only=True,
            idempotent=True,
        )
    )
    registry.add_tool(
        Tool(
            name="chitty_chat_session_update",
            title="Update chat session",
            description=(
                "Rename a session, archive or reactivate it, change its metadata "
                "(merged: keys given replace, keys set to null are removed), or its default model_config "
                "(a config name; null removes it)."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "session_id": SESSION_ID,
                    "session_name": {"type": "string", "minLength": 1, "maxLength": 200},
                    "metadata": {**METADATA, "properties": {}},
                    "status": STATUS,
                    "model_config": {
                        **CONFIG_NAME,
                        "type": ["string", "null"],
                        "description": "Default model config of the session's completions (by name); null: none.",
                    },
                },
                "required": ["session_id"],
                "additionalProperties": False,
            },
            output_schema=SESSION,
            handler=update,
            idempotent=True,
        )
    )
    registry.add_tool(
        Tool(
            name="chitty_chat_session_delete",
            title="Delete chat session",
            description="Delete a session and its transcript. This cannot be undone.",
            input_schema={
                "type": "object",
                "properties": {"session_id": SESSION_ID},
                "required": ["session_id"],
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": {"session_id": {"type": "string"}, "deleted": {"type": "boolean"}},
                "required": ["session_id", "deleted"],
            },
            handler=delete,
            destructive=True,
            idempotent=True,
        )
    )
