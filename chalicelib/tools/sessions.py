"""Conversation sessions: create, list, get, update, delete.

A session belongs to one user. Users see and change only their own; admins any. Another
user's session answers exactly like one that does not exist. A session may be created from a
session template (its rendered system prompt, default metadata and model config) and may name
a model config as the default of its completions.
"""

from __future__ import annotations

import datetime
import json
import re
import uuid
from typing import Any

from chalicelib.auth import Principal
from chalicelib.db import Database
from chalicelib.mcp.errors import InvalidArguments, NotFound
from chalicelib.mcp.registry import Registry, ResourceFamily, Tool, ToolCall
from chalicelib.tools.access import USER_ID_SCHEMA, UUID_PATTERN, acting_user, caller_params
from chalicelib.tools.configs import CONFIG_NAME, config_not_found
from chalicelib.tools.limits import limit_defaults, quota_error
from chalicelib.tools.records import (
    NEXT_CURSOR,
    PAGE_BYTES,
    decode_cursor,
    encode_cursor,
    fill_page,
    jsonable,
    page_arguments,
    session_record,
)
from chalicelib.tools.templates import TEMPLATE_NAME, VARIABLE_VALUES, render

DEFAULT_PAGE = 20
MAX_SYSTEM_PROMPT = 100_000
RESOURCE_PREFIX = "chitty://sessions/"
RECENT_RESOURCES = 50
# A session's transcript, and each later part of a long one: ?from=<message seq>, and &offset=<characters>
# when the part starts inside a message too long for one part. Nothing else names a transcript.
TRANSCRIPT_URI = re.compile(
    r"chitty://sessions/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"(?:\?from=([1-9][0-9]{0,9})(?:&offset=([1-9][0-9]{0,9}))?)?"
)
MAX_SEQ = 2**31 - 1
# One part of a transcript: at most this many bytes of text in the answer (Lambda answers at most 6 MB),
# and at most this many messages.
TRANSCRIPT_PART_BYTES = 4_000_000
TRANSCRIPT_PART_MESSAGES = 1000
# Kept free in every part for its last line, which says where the next part starts.
TRANSCRIPT_FOOTER_BYTES = 1000

SESSION_ID = {"type": "string", "pattern": UUID_PATTERN, "description": "The session's id (a UUID)."}
METADATA = {
    "type": "object",
    "description": (
        "ChittyOS links and labels, e.g. case_id, case_type, document_ids: links, not documents (at most "
        "metadata_bytes_per_session bytes as JSON text, 16 KiB unless an admin sets otherwise)."
    ),
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


# A page of chitty_chat_session_messages: at most this many messages, cut after the one that takes it past
# this many bytes of text.
MESSAGES_PAGE = 100
MESSAGES_PAGE_BYTES = 1_000_000
MESSAGE = {
    "type": "object",
    "properties": {
        "seq": {"type": "integer"},
        "role": {"type": "string"},
        "text": {"type": "string", "description": "The message as the transcript shows it (parts and calls too)."},
        "model": {"type": ["string", "null"]},
        "status": {"type": "string"},
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "cost_usd": {"type": ["number", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
    },
    "required": ["seq", "role", "text", "prompt_tokens", "completion_tokens", "cost_usd", "created_at"],
}


def _message_record(row: dict[str, Any]) -> dict[str, Any]:
    return jsonable(
        {
            "seq": row["seq"],
            "role": row["role"],
            "text": _message_body(row),
            "model": row["model"],
            "status": row["status"],
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "cost_usd": row["cost_usd"],
            "created_at": row["created_at"],
        }
    )


def _session_position(position: dict[str, Any]) -> tuple[datetime.datetime, uuid.UUID]:
    return datetime.datetime.fromisoformat(position["t"]), uuid.UUID(position["i"])


def _json_bytes(text: str) -> int:
    """The bytes `text` takes inside a JSON answer, escapes included (additive: each character on its own)."""
    return len(json.dumps(text, ensure_ascii=False).encode()) - 2


def _fitting_prefix(text: str, room: int) -> int:
    """The most leading characters of `text` whose JSON takes at most `room` bytes."""
    low, high = 0, min(len(text), max(room, 0))  # a character takes 1 to 6 bytes
    while low < high:
        middle = (low + high + 1) // 2
        if _json_bytes(text[:middle]) <= room:
            low = middle
        else:
            high = middle - 1
    return low


def _message_body(message: dict[str, Any]) -> str:
    lines = [] if message["content"] is None else [message["content"]]
    lines.extend(_part_text(part) for part in message.get("parts") or [])
    if message.get("tool_call_id"):
        lines.insert(0, f"_Result of call {message['tool_call_id']}:_")
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        lines.append(f"_Calls {function.get('name')}({function.get('arguments')}) as {call.get('id')}_")
    if message["error"]:
        lines.append(f"> Error: {message['error']}")
    return "\n".join(lines)


def _part_text(part: dict[str, Any]) -> str:
    """A content part in a transcript: its text, or what was attached (an address, never inline data)."""
    if part.get("type") == "image_url":
        url = (part.get("image_url") or {}).get("url") or ""
        return f"[image: {url if url.startswith('https:') else 'attached inline'}]"
    if part.get("type") == "file":
        file = part.get("file") or {}
        return f"[file: {file.get('filename') or file.get('file_url') or 'attached inline'}]"
    return str(part.get("text") or "")


def _message_heading(message: dict[str, Any], offset: int) -> str:
    heading = f"## {message['seq']}. {message['role']}"
    if message["role"] == "assistant" and message["model"]:
        heading += f" ({message['model']}, {message['prompt_tokens']}+{message['completion_tokens']} tokens"
        heading += f", ${message['cost_usd']})" if message["cost_usd"] is not None else ", unpriced)"
    if message["status"] == "error":
        heading += " [failed]"
    if offset:
        heading += f" (continued from character {offset})"
    return f"\n{heading}\n_{message['created_at'].isoformat()}_\n\n"


def transcript_uri(session_id: str, seq: int | None = None, offset: int = 0) -> str:
    """The address of a transcript, or of its part starting at message `seq` (and character `offset` of it)."""
    uri = f"{RESOURCE_PREFIX}{session_id}"
    if seq is not None:
        uri += f"?from={seq}" + (f"&offset={offset}" if offset else "")
    return uri


def transcript_header(session: dict[str, Any]) -> str:
    """The start of a transcript: the session's facts, metadata and system prompt."""
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
    return "\n".join(lines) + "\n"


def transcript_part(
    session: dict[str, Any], messages: list[dict[str, Any]], start: tuple[int, int] | None
) -> tuple[str, tuple[int, int] | None]:
    """One part of a session's transcript as markdown, and where the next part starts (message seq and
    character), or None when this part ends the transcript.

    The first part (`start` None) opens with the session's facts; a later part starts at message
    `start[0]`, character `start[1]`. `messages` are the session's messages from there on, oldest first.
    A part stops before the message that would take it past TRANSCRIPT_PART_BYTES; a message longer than
    that alone is cut, and the next part goes on from the character where this one stopped.
    """
    session_id = str(session["id"])
    if start is None:
        text = transcript_header(session)
    else:
        where = f"message {start[0]}" + (f", character {start[1]}" if start[1] else "")
        text = f"# {session['session_name']} (continued)\n\n- Session: {session_id}\n- This part starts at {where}\n"
    parts = [text]
    used = _json_bytes(text)
    room = TRANSCRIPT_PART_BYTES - TRANSCRIPT_FOOTER_BYTES
    following: tuple[int, int] | None = None
    for index, message in enumerate(messages):
        offset = start[1] if start is not None and index == 0 else 0
        heading = _message_heading(message, offset)
        body = _message_body(message)[offset:]
        size = _json_bytes(heading) + _json_bytes(body) + 1
        if used + size <= room:
            parts += [heading, body, "\n"]
            used += size
            continue
        # Only a message that opens its part is cut (else it opens the next one), and only when a good
        # piece of it fits: a first part whose facts fill it leaves the message to the next part.
        fits = _fitting_prefix(body, room - used - _json_bytes(heading) - 1)
        if index > 0 or fits < min(len(body), 1000):
            following = (message["seq"], offset)
            break
        parts += [heading, body[:fits], "\n"]
        following = (message["seq"], offset + fits)
        break
    else:
        if messages and messages[-1]["seq"] < session["last_seq"]:
            following = (messages[-1]["seq"] + 1, 0)
    if following is not None:
        next_uri = transcript_uri(session_id, *following)
        parts.append(f"\n---\n\n_The transcript goes on in its next part: {next_uri}_\n")
    elif session["last_seq"]:
        parts.append(f"\n---\n\n_End of the transcript (messages 1 to {session['last_seq']})._\n")
    else:
        parts.append("\n---\n\n_End of the transcript (no messages yet)._\n")
    return "".join(parts), following


def register(registry: Registry, db: Database) -> None:
    """Add the session tools, and sessions as resources, to the registry."""
    defaults = limit_defaults()

    def session_resources(caller: Principal) -> list[dict[str, Any]]:
        rows = db.all("recent_sessions", user_id=caller.user_id, limit=RECENT_RESOURCES)
        return [
            {
                "uri": transcript_uri(str(row["id"])),
                "name": row["session_name"],
                "title": row["session_name"],
                "description": f"{row['message_count']} messages, {row['status']}, "
                f"last activity {row['last_activity_at'].isoformat()}",
                "mimeType": "text/markdown",
            }
            for row in rows
        ]

    def read_session(caller: Principal, uri: str) -> dict[str, Any] | None:
        match = TRANSCRIPT_URI.fullmatch(uri)
        if match is None:
            return None
        session_id, seq, offset = match.group(1), match.group(2), match.group(3)
        start = None if seq is None else (int(seq), int(offset or 0))
        if start is not None and start[0] > MAX_SEQ:
            return None
        session = db.one("get_session", session_id=session_id, caller=caller.user_id, caller_is_admin=caller.is_admin)
        if session is None or (start is not None and start[0] > session["last_seq"]):
            return None
        messages = db.all(
            "session_transcript_part",
            session_id=session_id,
            from_seq=1 if start is None else start[0],
            limit=TRANSCRIPT_PART_MESSAGES,
            budget=TRANSCRIPT_PART_BYTES,
        )
        if start is not None and (not messages or start[1] >= max(len(_message_body(messages[0])), 1)):
            return None  # no such part: past the end of its message
        text, _ = transcript_part(session, messages, start)
        return {"uri": uri, "mimeType": "text/markdown", "text": text}

    registry.add_resources(
        ResourceFamily(
            uri_template=RESOURCE_PREFIX + "{session_id}",
            name="chat-session",
            title="Chat session transcript",
            description=(
                "A session's settings and its messages, as markdown. A long transcript comes in parts of up to "
                "4 MB: each part but the last ends with the address of the next "
                "(chitty://sessions/{session_id}?from=<message>)."
            ),
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
            if len(system_prompt) > MAX_SYSTEM_PROMPT:
                raise InvalidArguments(
                    f"variables: with these values, template {args['template']!r} makes a system prompt of "
                    f"{len(system_prompt)} characters; a session's system prompt has at most {MAX_SYSTEM_PROMPT}.",
                    data={"field": "variables"},
                )
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
            defaults=defaults,
        )
        assert row is not None
        if row["refusal"] is not None:
            raise quota_error(row["refusal"])
        if row["id"] is None:
            if model_config is not None:
                raise config_not_found(model_config)
            raise NotFound(f"No user {user_id!r}.")
        return session_record(row)

    def list_sessions(call: ToolCall) -> dict[str, Any]:
        args = call.arguments
        limit = args.get("limit", DEFAULT_PAGE)
        after_created, after_id = (
            decode_cursor(args["cursor"], _session_position) if args.get("cursor") else (None, None)
        )
        rows = db.all(
            "list_sessions",
            user_id=acting_user(call),
            status=args.get("status"),
            case_id=args.get("case_id"),
            after_created=after_created,
            after_id=str(after_id) if after_id else None,
            limit=limit + 1,
            budget=PAGE_BYTES,
        )
        page = fill_page([session_record(row) for row in rows[:limit]])
        more = bool(rows) and rows[0]["candidates"] > len(page)
        last = rows[len(page) - 1] if page else None
        next_cursor = encode_cursor({"t": last["created_at"].isoformat(), "i": str(last["id"])}) if more else None
        return {"sessions": page, "next_cursor": next_cursor}

    def get(call: ToolCall) -> dict[str, Any]:
        row = db.one("get_session", session_id=call.arguments["session_id"], **caller_params(call))
        if row is None:
            raise NotFound(f"No session {call.arguments['session_id']}.")
        return session_record(row)

    def messages(call: ToolCall) -> dict[str, Any]:
        args = call.arguments
        session = db.one("get_session", session_id=args["session_id"], **caller_params(call))
        if session is None:
            raise NotFound(f"No session {args['session_id']}.")
        from_seq = args.get("from_seq", 1)
        rows = db.all(
            "session_transcript_part",
            session_id=args["session_id"],
            from_seq=from_seq,
            limit=args.get("limit", MESSAGES_PAGE),
            budget=MESSAGES_PAGE_BYTES,
        )
        last = rows[-1]["seq"] if rows else None
        more = last is not None and last < session["last_seq"]
        return {
            "session": session_record(session),
            "messages": [_message_record(row) for row in rows],
            "next_from_seq": last + 1 if more else None,
        }

    def update(call: ToolCall) -> dict[str, Any]:
        args = call.arguments
        metadata = None if args.get("metadata") is None else json.dumps(args["metadata"])
        row = db.one(
            "update_session",
            session_id=args["session_id"],
            session_name=args.get("session_name"),
            status=args.get("status"),
            metadata=metadata,
            change_model_config="model_config" in args,
            model_config=args.get("model_config"),
            defaults=defaults,
            **caller_params(call),
        )
        if row is not None:
            return session_record(row)
        # Nothing changed: the session is not the caller's, or its metadata would pass the quota, or the
        # model config is not its owner's.
        if db.one("get_session", session_id=args["session_id"], **caller_params(call)) is None:
            raise NotFound(f"No session {args['session_id']}.")
        if metadata is not None:
            refused = db.one(
                "session_metadata_change_refusal",
                session_id=args["session_id"],
                metadata=metadata,
                defaults=defaults,
                **caller_params(call),
            )
            if refused is not None and refused["refusal"] is not None:
                raise quota_error(refused["refusal"])
        if args.get("model_config") is not None:
            raise config_not_found(args["model_config"])
        raise NotFound(f"No session {args['session_id']}.")

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
            description=(
                "List your sessions, newest first, optionally by status or ChittyOS case. A page holds at most "
                "`limit` sessions (default 20, at most 100), fewer when they are big (a page stays under 4 MB); "
                "pass next_cursor back as cursor for the next page, until next_cursor is null."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "user_id": USER_ID_SCHEMA,
                    "status": STATUS,
                    "case_id": {"type": "string", "maxLength": 200},
                    **page_arguments(DEFAULT_PAGE),
                },
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": {
                    "sessions": {"type": "array", "items": SESSION},
                    "next_cursor": NEXT_CURSOR,
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
            name="chitty_chat_session_messages",
            title="Chat session messages",
            description=(
                "A session's messages, oldest first, each with its role, text, model, status, tokens and cost, "
                "and the session with its totals (its message_count counts the messages that succeeded; failed "
                "ones are listed too, with status error); a page at a time (limit, default 100): pass "
                "next_from_seq back as from_seq until it is null."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "session_id": SESSION_ID,
                    "from_seq": {"type": "integer", "minimum": 1, "maximum": MAX_SEQ, "default": 1},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 500, "default": MESSAGES_PAGE},
                },
                "required": ["session_id"],
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": {
                    "session": SESSION,
                    "messages": {"type": "array", "items": MESSAGE},
                    "next_from_seq": {"type": ["integer", "null"]},
                },
                "required": ["session", "messages", "next_from_seq"],
            },
            handler=messages,
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
