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
from chalicelib.tools.chat import (
    MODEL_NAME,
    REASONING_EFFORT,
    REASONING_SUMMARY,
    SEARCH_CONTEXT,
    SERVICE_TIER,
    VERBOSITY,
)
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
        "description": "OpenAI model name, e.g. gpt-5.4-mini (letters, digits and . _ : / -).",
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
    "reasoning_effort": {**REASONING_EFFORT, "description": "How hard a reasoning model thinks."},
    "verbosity": {**VERBOSITY, "description": "How long the answer of a GPT-5 family model is."},
    "reasoning_summary": {**REASONING_SUMMARY, "description": "Return a summary of the reasoning (Responses API)."},
    "service_tier": {**SERVICE_TIER, "description": "flex: cheaper and slower; priority: faster, dearer."},
    "web_search": {
        "type": ["boolean", "string"],
        "enum": [True, False, *SEARCH_CONTEXT["enum"]],
        "description": (
            "OpenAI's web search (Responses API, each search billed): a search context size (low, medium, high); "
            "true means medium, false none."
        ),
    },
}
OPTIONAL_SETTINGS = (
    "temperature",
    "top_p",
    "max_tokens",
    "system_prompt",
    "reasoning_effort",
    "verbosity",
    "reasoning_summary",
    "service_tier",
    "web_search",
)
STRING_OR_NULL = {"type": ["string", "null"]}
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
        "system_prompt": STRING_OR_NULL,
        "reasoning_effort": STRING_OR_NULL,
        "verbosity": STRING_OR_NULL,
        "reasoning_summary": STRING_OR_NULL,
        "service_tier": STRING_OR_NULL,
        "web_search": {**STRING_OR_NULL, "description": "The search context size; null: no web search."},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
    "required": ["name", "user_id", "model", *OPTIONAL_SETTINGS],
}
RATES: dict[str, Any] = {
    "type": "object",
    "properties": {
        "input_per_mtok": {"type": "number"},
        "cached_input_per_mtok": {"type": "number"},
        "cache_write_per_mtok": {"type": "number"},
        "output_per_mtok": {"type": "number"},
    },
    "required": ["input_per_mtok", "cached_input_per_mtok", "cache_write_per_mtok", "output_per_mtok"],
}
LONG_CONTEXT = {
    **RATES,
    "type": ["object", "null"],
    "description": "The rates of the whole call when the prompt exceeds above_tokens; null: no such tier.",
    "properties": {**RATES["properties"], "above_tokens": {"type": "integer"}},
}
TIER = {
    **RATES,
    "properties": {**RATES["properties"], "long_context": {**RATES, "type": ["object", "null"]}},
}
CAPABILITIES = {
    "type": ["object", "null"],
    "description": "What the model can do, from the catalogue; null: not in the catalogue.",
    "properties": {
        "reasoning": {"type": "boolean"},
        "efforts": {"type": "array", "items": {"type": "string"}, "description": "Accepted reasoning_effort values."},
        "default_effort": STRING_OR_NULL,
        "vision": {"type": "boolean"},
        "pdf": {"type": "boolean"},
        "function_calling": {"type": "boolean"},
        "structured_output": {"type": "boolean"},
        "web_search": {"type": "boolean"},
        "context_window": {"type": ["integer", "null"]},
        "max_output": {"type": ["integer", "null"]},
        "apis": {"type": "array", "items": {"type": "string", "enum": ["chat", "responses"]}},
    },
}
MODEL = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "priced": {"type": "boolean", "description": "false: no price is known, completions record no cost."},
        "input_per_mtok": NUMBER_OR_NULL,
        "cached_input_per_mtok": NUMBER_OR_NULL,
        "cache_write_per_mtok": NUMBER_OR_NULL,
        "output_per_mtok": NUMBER_OR_NULL,
        "long_context": LONG_CONTEXT,
        "tiers": {
            "type": "object",
            "description": "Rates at the flex, priority and ultrafast service tiers, where the model has them.",
            "additionalProperties": TIER,
        },
        "web_search_per_call": {
            "type": ["object", "null"],
            "description": "USD per web search call by search context size (a call is billed at medium).",
            "properties": {size: NUMBER_OR_NULL for size in ("low", "medium", "high")},
        },
        "effective_from": {"type": ["string", "null"], "format": "date-time"},
        "capabilities": CAPABILITIES,
        "shutdown_on": {"type": ["string", "null"], "format": "date"},
        "successor": STRING_OR_NULL,
        "retired": {"type": "boolean", "description": "Past its shutdown date: OpenAI no longer serves it."},
        "has_config": {"type": "boolean"},
        "config_names": {"type": "array", "items": {"type": "string"}},
    },
    "required": [
        "model",
        "priced",
        "input_per_mtok",
        "cached_input_per_mtok",
        "cache_write_per_mtok",
        "output_per_mtok",
        "long_context",
        "tiers",
        "web_search_per_call",
        "capabilities",
        "shutdown_on",
        "successor",
        "retired",
        "config_names",
    ],
}
ALIAS = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "model": {"type": "string"}},
    "required": ["name", "model"],
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
            "reasoning_effort": row["reasoning_effort"],
            "verbosity": row["verbosity"],
            "reasoning_summary": row["reasoning_summary"],
            "service_tier": row["service_tier"],
            "web_search": row["web_search"],
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        }
    )


def model_record(row: dict[str, Any]) -> dict[str, Any]:
    """A row of models_with_prices as chitty_models_list shows it."""
    rates = row["rates"] or {}
    info = row["info"] or {}
    return jsonable(
        {
            "model": row["model"],
            "priced": row["input_per_mtok"] is not None,
            "input_per_mtok": row["input_per_mtok"],
            "cached_input_per_mtok": row["cached_input_per_mtok"],
            "cache_write_per_mtok": rates.get("cache_write_per_mtok"),
            "output_per_mtok": row["output_per_mtok"],
            "long_context": rates.get("long_context"),
            "tiers": rates.get("tiers", {}),
            "web_search_per_call": rates.get("web_search_per_call"),
            "effective_from": row["effective_from"],
            "capabilities": {key: info[key] for key in CAPABILITIES["properties"]} if info else None,
            "shutdown_on": info.get("shutdown_on"),
            "successor": info.get("successor"),
            "retired": bool(info.get("retired")),
            "has_config": bool(row["config_names"]),
            "config_names": row["config_names"],
        }
    )


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema, or null (which clears an optional field)."""
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    nullable = {**schema, "type": [*types, "null"]}
    if "enum" in schema:
        nullable["enum"] = [*schema["enum"], None]
    return nullable


def search_context(value: bool | str | None) -> str | None:
    """web_search as stored: a search context size, or NULL for none (true means medium)."""
    if value is True:
        return "medium"
    return value or None


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
                reasoning_effort=args.get("reasoning_effort"),
                verbosity=args.get("verbosity"),
                reasoning_summary=args.get("reasoning_summary"),
                service_tier=args.get("service_tier"),
                web_search=search_context(args.get("web_search")),
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
        if "web_search" in changes:
            changes["web_search"] = search_context(changes["web_search"])
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
        args = call.arguments
        rows = db.all(
            "models_with_prices",
            user_id=acting_user(call),
            include_retired=args.get("include_retired", False),
            search=args.get("search"),
        )
        return {
            "models": [model_record(row) for row in rows],
            "aliases": [{"name": row["name"], "model": row["model"]} for row in db.all("list_model_aliases")],
        }

    owner = {"user_id": USER_ID_SCHEMA}
    name_argument = {"name": {**CONFIG_NAME, "description": "The config's name (configs are addressed by name)."}}
    registry.add_tool(
        Tool(
            name="chitty_model_config_create",
            title="Create model config",
            description=(
                "Save named model settings {name, model, temperature?, max_tokens?, top_p?, system_prompt?, "
                "reasoning_effort?, verbosity?, reasoning_summary?, service_tier?, web_search?}. "
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
                "OpenAI's models as the server prices and knows them, with the names of your configs that use "
                "each. Prices in USD per million tokens: input, cached input, cache write, output (a missing "
                "cached or cache-write price shows as input); long_context: the rates of a whole call whose "
                "prompt passes above_tokens; tiers: flex, priority and ultrafast rates (a call is billed at the "
                "tier that served it); web_search_per_call: USD per search. capabilities: reasoning and its "
                "efforts, vision, pdf, function calling, structured output, web search, context window, max "
                "output, apis (chat, responses). shutdown_on and successor: OpenAI's announced shutdown; "
                "retired: past it. Retired models are left out unless include_retired or a config uses them; "
                "search keeps the names that contain it. aliases: an upstream's own names for models."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    **owner,
                    "include_retired": {
                        "type": "boolean",
                        "default": False,
                        "description": "Also list models past their shutdown date.",
                    },
                    "search": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 200,
                        "description": "Only models whose name contains this (any case), e.g. gpt-5.",
                    },
                },
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": {
                    "models": {"type": "array", "items": MODEL},
                    "aliases": {"type": "array", "items": ALIAS},
                },
                "required": ["models", "aliases"],
            },
            handler=list_models,
            read_only=True,
            idempotent=True,
        )
    )
