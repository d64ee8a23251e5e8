"""Model configs (a user's named model settings) and the models on offer with their prices.

A config is addressed by its name, unique per user, everywhere: here, as `model_config` in
chatgpt_complete and chatgpt_stream, and as a session's or a template's default. Another user's
config answers exactly like a missing one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pg8000.exceptions import DatabaseError

from chalicelib.db import Database, sqlstate
from chalicelib.mcp import NotFound, Registry, Tool, ToolCall, ToolError
from chalicelib.tools.access import USER_ID_SCHEMA, acting_user
from chalicelib.tools.chat import MODEL_NAME
from chalicelib.tools.limits import limit_defaults, quota_error
from chalicelib.tools.records import (
    NEXT_CURSOR,
    PAGE_BYTES,
    decode_cursor,
    encode_cursor,
    fill_page,
    jsonable,
    page_arguments,
)

UNIQUE_VIOLATION = "23505"
DEFAULT_PAGE = 50
NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
CONFIG_NAME: dict[str, Any] = {
    "type": "string",
    "pattern": NAME_PATTERN,
    "description": "Up to 100 letters, digits, '.', '_' or '-', starting with a letter or digit.",
}
SETTINGS: dict[str, dict[str, Any]] = {
    "model": {
        **MODEL_NAME,
        "description": "OpenAI model name, e.g. gpt-4o-mini (letters, digits and . _ : / -).",
    },
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 200_000},
    "system_prompt": {
        "type": "string",
        "minLength": 1,
        "maxLength": 100_000,
        "description": "Sent first in completions whose session has no system prompt of its own.",
    },
}
OPTIONAL_SETTINGS = ("temperature", "top_p", "max_tokens", "system_prompt")
NUMBER_OR_NULL = {"type": ["number", "null"]}
CONFIG = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "user_id": {"type": "string"},
        "model": {"type": "string"},
        "temperature": NUMBER_OR_NULL,
        "top_p": NUMBER_OR_NULL,
        "max_tokens": {"type": ["integer", "null"]},
        "system_prompt": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
    "required": ["name", "user_id", "model", "temperature", "top_p", "max_tokens", "system_prompt"],
}
MODEL = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "priced": {"type": "boolean", "description": "false: no price is known, completions record no cost."},
        "input_per_mtok": NUMBER_OR_NULL,
        "cached_input_per_mtok": NUMBER_OR_NULL,
        "output_per_mtok": NUMBER_OR_NULL,
        "effective_from": {"type": ["string", "null"], "format": "date-time"},
        "has_config": {"type": "boolean"},
        "config_names": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["model", "priced", "input_per_mtok", "cached_input_per_mtok", "output_per_mtok", "config_names"],
}


def config_not_found(name: str) -> NotFound:
    """The answer to a config name the user does not have (theirs or not, it reads the same)."""
    return NotFound(f"No model config {name!r}; see chitty_model_config_list.")


@contextmanager
def unique_name(message: str) -> Iterator[None]:
    """Answer the database's refusal of a name already taken with a ToolError saying `message`."""
    try:
        yield
    except DatabaseError as error:
        if sqlstate(error) != UNIQUE_VIOLATION:
            raise
        raise ToolError(message) from None


def config_record(row: dict[str, Any]) -> dict[str, Any]:
    """A model_configs row as tools show it."""
    return jsonable(
        {
            "name": row["name"],
            "user_id": row["user_id"],
            "model": row["model"],
            "temperature": row["temperature"],
            "top_p": row["top_p"],
            "max_tokens": row["max_tokens"],
            "system_prompt": row["system_prompt"],
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        }
    )


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "type": [schema["type"], "null"]}


def register(registry: Registry, db: Database) -> None:
    """Add the model config tools and chitty_models_list to the registry."""
    defaults = limit_defaults()

    def create(call: ToolCall) -> dict[str, Any]:
        user_id = acting_user(call)
        args = call.arguments
        taken = (
            f"A model config named {args['name']!r} already exists; choose another name, "
            "or change it with chitty_model_config_update."
        )
        with unique_name(taken):
            row = db.one(
                "create_model_config",
                user_id=user_id,
                config_name=args["name"],
                model=args["model"],
                temperature=args.get("temperature"),
                top_p=args.get("top_p"),
                max_tokens=args.get("max_tokens"),
                system_prompt=args.get("system_prompt"),
                defaults=defaults,
            )
        assert row is not None
        if row["refusal"] is not None:
            raise quota_error(row["refusal"])
        if row["id"] is None:
            raise NotFound(f"No user {user_id!r}.")
        return config_record(row)

    def list_configs(call: ToolCall) -> dict[str, Any]:
        args = call.arguments
        limit = args.get("limit", DEFAULT_PAGE)
        after = decode_cursor(args["cursor"], lambda position: str(position["n"])) if args.get("cursor") else None
        rows = db.all(
            "list_model_configs", user_id=acting_user(call), after_name=after, limit=limit + 1, budget=PAGE_BYTES
        )
        page = fill_page([config_record(row) for row in rows[:limit]])
        more = bool(rows) and rows[0]["candidates"] > len(page)
        return {"configs": page, "next_cursor": encode_cursor({"n": page[-1]["name"]}) if more else None}

    def update(call: ToolCall) -> dict[str, Any]:
        args = call.arguments
        changes = {key: args[key] for key in ("new_name", *SETTINGS) if key in args}
        with unique_name(f"A model config named {args.get('new_name')!r} already exists; choose another new_name."):
            row = db.one(
                "update_model_config", user_id=acting_user(call), config_name=args["name"], changes=json.dumps(changes)
            )
        if row is None:
            raise config_not_found(args["name"])
        return config_record(row)

    def delete(call: ToolCall) -> dict[str, Any]:
        row = db.one("delete_model_config", user_id=acting_user(call), config_name=call.arguments["name"])
        if row is None:
            raise config_not_found(call.arguments["name"])
        return {"name": row["name"], "deleted": True}

    def list_models(call: ToolCall) -> dict[str, Any]:
        rows = db.all("models_with_prices", user_id=acting_user(call))
        return {
            "models": [
                jsonable(
                    {
                        "model": row["model"],
                        "priced": row["input_per_mtok"] is not None,
                        "input_per_mtok": row["input_per_mtok"],
                        "cached_input_per_mtok": row["cached_input_per_mtok"],
                        "output_per_mtok": row["output_per_mtok"],
                        "effective_from": row["effective_from"],
                        "has_config": bool(row["config_names"]),
                        "config_names": row["config_names"],
                    }
                )
                for row in rows
            ]
        }

    owner = {"user_id": USER_ID_SCHEMA}
    name_argument = {"name": {**CONFIG_NAME, "description": "The config's name (configs are addressed by name)."}}
    registry.add_tool(
        Tool(
            name="chitty_model_config_create",
            title="Create model config",
            description=(
                "Save named model settings {name, model, temperature?, max_tokens?, top_p?, system_prompt?}. "
                "Use the name as model_config in chatgpt_complete and chatgpt_stream, or as a session's or "
                "template's default. Names are unique per user; a taken name is an error."
            ),
            input_schema={
                "type": "object",
                "properties": {**owner, **name_argument, **SETTINGS},
                "required": ["name", "model"],
                "additionalProperties": False,
            },
            output_schema=CONFIG,
            handler=create,
        )
    )
    registry.add_tool(
        Tool(
            name="chitty_model_config_list",
            title="List model configs",
            description=(
                "Your model configs, by name, a page at a time: pass next_cursor back as cursor for the next page, "
                "until next_cursor is null."
            ),
            input_schema={
                "type": "object",
                "properties": {**owner, **page_arguments(DEFAULT_PAGE)},
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": {"configs": {"type": "array", "items": CONFIG}, "next_cursor": NEXT_CURSOR},
                "required": ["configs", "next_cursor"],
            },
            handler=list_configs,
            read_only=True,
            idempotent=True,
        )
    )
    registry.add_tool(
        Tool(
            name="chitty_model_config_update",
            title="Update model config",
            description=(
                "Change a model config, found by its name: fields given replace, optional fields given as null "
                "are cleared, new_name renames it. Sessions and templates using it follow the change."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    **owner,
                    **name_argument,
                    "new_name": CONFIG_NAME,
                    "model": SETTINGS["model"],
                    **{key: _nullable(SETTINGS[key]) for key in OPTIONAL_SETTINGS},
                },
                "required": ["name"],
                "additionalProperties": False,
            },
            output_schema=CONFIG,
            handler=update,
            idempotent=True,
        )
    )
    registry.add_tool(
        Tool(
            name="chitty_model_config_delete",
            title="Delete model config",
            description=(
                "Delete a model config, found by its name. Sessions and templates that used it keep going without one."
            ),
            input_schema={
                "type": "object",
                "properties": {**owner, **name_argument},
                "required": ["name"],
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": {"name": {"type": "string"}, "deleted": {"type": "boolean"}},
                "required": ["name", "deleted"],
            },
            handler=delete,
            destructive=True,
            idempotent=True,
        )
    )
    registry.add_tool(
        Tool(
            name="chitty_models_list",
            title="List models and prices",
            description=(
                "The models with a price in force (USD per million tokens: input, cached input, output; cached "
                "input is billed as input when a model has no cached price), plus any model your configs use "
                "that has no price, each with the names of your configs that use it."
            ),
            input_schema={"type": "object", "properties": owner, "additionalProperties": False},
            output_schema={
                "type": "object",
                "properties": {"models": {"type": "array", "items": MODEL}},
                "required": ["models"],
            },
            handler=list_models,
            read_only=True,
            idempotent=True,
        )
    )
