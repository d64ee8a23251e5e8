"""Users' own OpenAI keys: stored sealed, listed masked, revoked on request."""

from __future__ import annotations

import datetime
import re
import uuid
from typing import Any

from pg8000.exceptions import DatabaseError

from chalicelib.crypto import KeyServiceError
from chalicelib.db import Database, Row, Transaction, sqlstate
from chalicelib.mcp import InvalidArguments, NotFound, Registry, Tool, ToolCall, ToolError
from chalicelib.tools.access import USER_ID_SCHEMA, UUID_PATTERN, acting_user, caller_params, principal
from chalicelib.tools.chat import sealer
from chalicelib.tools.limits import limit_defaults, quota_error
from chalicelib.tools.records import NEXT_CURSOR, decode_cursor, encode_cursor, fill_page, jsonable, page_arguments

# Checked here, not by the schema: a schema error quotes the value, and this value is a secret.
_API_KEY_SHAPE = re.compile(r"[!-~]{8,512}")
UNIQUE_VIOLATION = "23505"
DEFAULT_PAGE = 20
KEY = {
    "type": "object",
    "properties": {
        "key_id": {"type": "string"},
        "label": {"type": ["string", "null"]},
        "masked_key": {"type": "string"},
        "last_four": {"type": "string"},
        "status": {"type": "string", "enum": ["active", "revoked"]},
        "created_at": {"type": "string"},
        "revoked_at": {"type": ["string", "null"]},
        "last_used_at": {"type": ["string", "null"]},
    },
    "required": ["key_id", "masked_key", "last_four", "status"],
}


def _key_record(row: dict[str, Any]) -> dict[str, Any]:
    return jsonable(
        {
            "key_id": row["id"],
            "label": row["label"],
            "masked_key": f"sk-...{row['last_four']}",
            "last_four": row["last_four"],
            "status": row["status"],
            "created_at": row["created_at"],
            "revoked_at": row.get("revoked_at"),
            "last_used_at": row.get("last_used_at"),
        }
    )


def _key_position(position: dict[str, Any]) -> tuple[datetime.datetime, uuid.UUID]:
    return datetime.datetime.fromisoformat(position["t"]), uuid.UUID(position["i"])


def register(registry: Registry, db: Database) -> None:
    """Add chitty_api_key_set, chitty_api_key_list and chitty_api_key_revoke."""
    defaults = limit_defaults()

    def set_key(call: ToolCall) -> dict[str, Any]:
        user_id = principal(call).user_id
        secret = call.arguments["api_key"]
        if not _API_KEY_SHAPE.fullmatch(secret):
            raise InvalidArguments(
                "Invalid arguments for chitty_api_key_set: api_key: must be 8 to 512 printable characters "
                "without spaces or line breaks (the value is not repeated here).",
                data={"field": "api_key"},
            )
        key_id = str(uuid.uuid4())
        try:
            sealed = sealer().seal(secret, user_id, key_id)
        except KeyServiceError as error:
            raise ToolError(str(error)) from None
        params = {
            "key_id": key_id,
            "user_id": user_id,
            "label": call.arguments.get("label"),
            "last_four": secret[-4:],
            "ciphertext": sealed.ciphertext,
            "nonce": sealed.nonce,
            "fingerprint": sealed.fingerprint,
            "wrapped_data_key": sealed.wrapped_data_key,
        }

        def store(tx: Transaction) -> Row | None:
            room = tx.one("make_room_for_api_key", user_id=user_id, defaults=defaults)
            if room is not None and room["refusal"] is not None:
                raise quota_error(room["refusal"])
            return tx.one("store_api_key", **params)

        try:
            row = db.transaction(store)
        except DatabaseError as error:
            if sqlstate(error) != UNIQUE_VIOLATION:
                raise
            # Another set for this user committed its key between our snapshot and insert: rotate again.
            row = db.transaction(store)
        assert row is not None
        return {**_key_record(row), "replaced_key_id": row["replaced_key_id"]}

    def list_keys(call: ToolCall) -> dict[str, Any]:
        args = call.arguments
        limit = args.get("limit", DEFAULT_PAGE)
        after_created, after_id = decode_cursor(args["cursor"], _key_position) if args.get("cursor") else (None, None)
        rows = db.all(
            "list_api_keys",
            user_id=acting_user(call),
            after_created=after_created,
            after_id=str(after_id) if after_id else None,
            limit=limit + 1,
        )
        page = fill_page([_key_record(row) for row in rows[:limit]])
        last = rows[len(page) - 1] if page else None
        more = len(rows) > len(page)
        next_cursor = encode_cursor({"t": last["created_at"].isoformat(), "i": str(last["id"])}) if more else None
        return {"keys": page, "next_cursor": next_cursor}

    def revoke_key(call: ToolCall) -> dict[str, Any]:
        row = db.one("revoke_api_key", key_id=call.arguments["key_id"], **caller_params(call))
        if row is None:
            raise NotFound(f"No API key {call.arguments['key_id']}.")
        return _key_record(row)

    registry.add_tool(
        Tool(
            name="chitty_api_key_set",
            title="Store your OpenAI API key",
            description=(
                "Store your own OpenAI API key (encrypted with AES-256-GCM); your completions use it instead of "
                "the server's. Setting a new key revokes the previous one; past your api_keys quota, your oldest "
                "revoked keys are deleted. Only the last four characters are ever shown again."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "api_key": {
                        "type": "string",
                        "description": "Your OpenAI key: 8 to 512 printable characters, no spaces or line breaks.",
                    },
                    "label": {"type": "string", "maxLength": 100},
                },
                "required": ["api_key"],
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": {**KEY["properties"], "replaced_key_id": {"type": ["string", "null"]}},
                "required": KEY["required"],
            },
            handler=set_key,
        )
    )
    registry.add_tool(
        Tool(
            name="chitty_api_key_list",
            title="List your OpenAI API keys",
            description=(
                "Your stored OpenAI keys (admins: any user's), masked to their last four characters, newest first, "
                "a page at a time: pass next_cursor back as cursor for the next page, until next_cursor is null."
            ),
            input_schema={
                "type": "object",
                "properties": {"user_id": USER_ID_SCHEMA, **page_arguments(DEFAULT_PAGE)},
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": {"keys": {"type": "array", "items": KEY}, "next_cursor": NEXT_CURSOR},
                "required": ["keys", "next_cursor"],
            },
            handler=list_keys,
            read_only=True,
            idempotent=True,
        )
    )
    registry.add_tool(
        Tool(
            name="chitty_api_key_revoke",
            title="Revoke an OpenAI API key",
            description=(
                "Revoke one of your stored keys (admins: anyone's); completions fall back to the server's key."
            ),
            input_schema={
                "type": "object",
                "properties": {"key_id": {"type": "string", "pattern": UUID_PATTERN, "description": "A UUID."}},
                "required": ["key_id"],
                "additionalProperties": False,
            },
            output_schema=KEY,
            handler=revoke_key,
            destructive=True,
            idempotent=True,
        )
    )
