"""Session templates: system prompts with {{variable}} placeholders, as tools and as MCP prompts.

A template is addressed by its name. Built-in templates (shipped by migrations, owned by no user)
are visible to everyone and read-only; a user's own template of the same name shadows the built-in
for that user. Another user's template answers exactly like a missing one.

Every placeholder is a required variable. Rendering fills each with the caller's value; a missing
(or blank) value and a value for a variable the template does not have are both errors, so a typo
in a variable name never goes unnoticed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from chalicelib.auth import Principal
from chalicelib.db import Database, Row, Transaction
from chalicelib.mcp import Forbidden, InvalidArguments, NotFound, PromptFamily, Registry, Tool, ToolCall, ToolError
from chalicelib.tools.access import USER_ID_SCHEMA, acting_user
from chalicelib.tools.configs import CONFIG_NAME, NAME_PATTERN, config_not_found, unique_name
from chalicelib.tools.limits import MAX_METADATA_BYTES, limit_defaults, quota_error
from chalicelib.tools.records import (
    NEXT_CURSOR,
    PAGE_BYTES,
    decode_cursor,
    encode_cursor,
    fill_page,
    jsonable,
    page_arguments,
)

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# A session takes values for at most this many variables (VARIABLE_VALUES), so no template has more.
MAX_VARIABLES = 100
DEFAULT_PAGE = 50
# prompts/list is one answer, not paged: when the full list would pass this, arguments go without descriptions.
PROMPTS_BYTES = 4_000_000
TEMPLATE_NAME: dict[str, Any] = {
    "type": "string",
    "pattern": NAME_PATTERN,
    "description": "A template's name: up to 100 letters, digits, '.', '_' or '-', e.g. legal-research.",
}
FIELDS: dict[str, dict[str, Any]] = {
    "title": {"type": "string", "minLength": 1, "maxLength": 200, "description": "Display name (default: name)."},
    "description": {"type": "string", "minLength": 1, "maxLength": 2000, "description": "What the template is for."},
    "system_prompt": {
        "type": "string",
        "minLength": 1,
        "maxLength": 100_000,
        "description": "The session's system prompt, with {{variable}} placeholders (letters, digits, _).",
    },
    "variable_descriptions": {
        "type": "object",
        "additionalProperties": {"type": "string", "maxLength": 500},
        "maxProperties": MAX_VARIABLES,
        "description": 'Help text per placeholder, e.g. {"jurisdiction": "Governing law, e.g. Delaware"}.',
    },
    "model_config": {**CONFIG_NAME, "description": "Model config of sessions created from the template."},
    "default_metadata": {
        "type": "object",
        "description": (
            "Metadata of sessions created from the template; metadata given at creation is merged over it. "
            f"Bounded like a session's metadata (metadata_bytes_per_session, at most {MAX_METADATA_BYTES} bytes)."
        ),
    },
}
VARIABLE_VALUES: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {"type": "string", "maxLength": 20_000},
    "maxProperties": 100,
    "description": "A value for each {{placeholder}} of the template; all are required, unknown names are an error.",
}
TEMPLATE = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "system_prompt": {"type": "string"},
        "variables": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "description": {"type": ["string", "null"]}},
                "required": ["name", "description"],
            },
        },
        "model_config": {"type": ["string", "null"]},
        "default_metadata": {"type": "object"},
        "builtin": {"type": "boolean", "description": "Shipped with the server, visible to everyone, read-only."},
        "shadowed": {"type": "boolean", "description": "A built-in hidden, for you, by your template of its name."},
        "user_id": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
    "required": ["name", "title", "description", "system_prompt", "variables", "model_config", "builtin"],
}


def variables_of(system_prompt: str) -> list[str]:
    """The placeholder names of a template, in order of first appearance."""
    return list(dict.fromkeys(PLACEHOLDER.findall(system_prompt)))


def render(template: Row, values: Mapping[str, str]) -> str:
    """The template's system prompt with every placeholder filled (values are inserted as they are).

    Raises InvalidArguments naming the variables that are missing or blank, or that the template lacks.
    """
    names = variables_of(template["system_prompt"])
    takes = f"it takes: {', '.join(names)}" if names else "it takes none"
    missing = [name for name in names if not values.get(name, "").strip()]
    if missing:
        raise InvalidArguments(
            f"Template {template['name']!r} needs a value for {', '.join(missing)} ({takes}).",
            data={"missing": missing},
        )
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise InvalidArguments(
            f"Template {template['name']!r} has no variable {', '.join(unknown)} ({takes}).",
            data={"unknown": unknown},
        )
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], template["system_prompt"])


def _check_variables(row: Row) -> None:
    """Refuse more variables than a session can fill, and help text for a name that is not a placeholder of
    the system prompt (most likely a typo)."""
    names = variables_of(row["system_prompt"])
    if len(names) > MAX_VARIABLES:
        raise InvalidArguments(
            f"system_prompt: {len(names)} distinct {{{{variable}}}} placeholders; a template has at most "
            f"{MAX_VARIABLES}.",
            data={"field": "system_prompt"},
        )
    stray = sorted(set(row["variable_descriptions"]) - set(names))
    if stray:
        raise InvalidArguments(
            f"variable_descriptions: {', '.join(stray)} is not a placeholder of the system prompt "
            f"(placeholders: {', '.join(names) or 'none'}).",
            data={"field": "variable_descriptions"},
        )


def template_record(row: Row) -> dict[str, Any]:
    """A session_templates row as tools show it."""
    descriptions = row["variable_descriptions"]
    return jsonable(
        {
            "name": row["name"],
            "title": row["title"] or row["name"],
            "description": row["description"],
            "system_prompt": row["system_prompt"],
            "variables": [
                {"name": name, "description": descriptions.get(name)} for name in variables_of(row["system_prompt"])
            ],
            "model_config": row["model_config"],
            "default_metadata": row["default_metadata"],
            "builtin": row["user_id"] is None,
            "shadowed": bool(row.get("shadowed")),
            "user_id": row["user_id"],
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        }
    )


def prompt_entry(row: Row, *, described: bool = True) -> dict[str, Any]:
    """A template as an MCP prompt: its variables are the prompt's arguments, all required (with their help
    text unless `described` is False)."""
    descriptions = row["variable_descriptions"] if described else {}
    arguments = []
    for name in variables_of(row["system_prompt"]):
        argument: dict[str, Any] = {"name": name, "required": True}
        if descriptions.get(name):
            argument["description"] = descriptions[name]
        arguments.append(argument)
    return {
        "name": row["name"],
        "title": row["title"] or row["name"],
        "description": row["description"],
        "arguments": arguments,
    }


def prompt_list(rows: list[Row], budget: int = PROMPTS_BYTES) -> list[dict[str, Any]]:
    """Templates as the prompts of one prompts/list answer, kept under `budget` bytes: with their arguments'
    help text when it fits, else without it; past the budget even so, the list stops (chitty_session_template_list
    pages through every template, and prompts/get takes any of them by name)."""
    entries = [prompt_entry(row) for row in rows]
    if _json_bytes(entries) <= budget:
        return entries
    listed: list[dict[str, Any]] = []
    used = 0
    for row in rows:
        entry = prompt_entry(row, described=False)
        used += _json_bytes(entry) + 1
        if used > budget:
            break
        listed.append(entry)
    return listed


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def register(registry: Registry, db: Database) -> None:
    """Add the session template tools, and templates as MCP prompts, to the registry."""
    defaults = limit_defaults()

    def refusal(user_id: str, name: str, model_config: str | None, default_metadata: Any) -> ToolError:
        """Why a change to the user's template `name` touched no row."""
        usable = db.one("usable_session_template", user_id=user_id, template_name=name)
        if usable is None:
            return NotFound(f"No session template {name!r}; see chitty_session_template_list.")
        if usable["user_id"] is None:
            return Forbidden(
                f"{name!r} is a built-in template and is read-only. To adapt it, create your own template "
                f"named {name!r}: yours then replaces the built-in for you."
            )
        if default_metadata is not None:
            refused = db.one(
                "metadata_refusal",
                user_id=user_id,
                metadata=json.dumps(default_metadata),
                current=json.dumps(usable["default_metadata"]),
                defaults=defaults,
            )
            if refused is not None and refused["refusal"] is not None:
                return quota_error(refused["refusal"])
        assert model_config is not None  # the user has the template: only the model config can be missing
        return config_not_found(model_config)

    def prompts_for(caller: Principal) -> list[dict[str, Any]]:
        return prompt_list(db.all("usable_session_templates", user_id=caller.user_id))

    def get_prompt(caller: Principal, name: str, arguments: dict[str, str]) -> dict[str, Any] | None:
        row = db.one("usable_session_template", user_id=caller.user_id, template_name=name)
        if row is None:
            return None
        # MCP prompt messages are "user" or "assistant" only: the rendered system prompt becomes the
        # user's opening instruction, which is how a client puts a prompt into its conversation.
        text = render(row, arguments)
        return {
            "description": row["description"],
            "messages": [{"role": "user", "content": {"type": "text", "text": text}}],
        }

    registry.add_prompts(PromptFamily(list_for=prompts_for, get_for=get_prompt))

    def create(call: ToolCall) -> dict[str, Any]:
        user_id = acting_user(call)
        args = call.arguments
        template = {
            "name": args["name"],
            "system_prompt": args["system_prompt"],
            "variable_descriptions": args.get("variable_descriptions", {}),
        }
        _check_variables(template)
        taken = (
            f"You already have a session template named {args['name']!r}; choose another name, "
            "or change it with chitty_session_template_update."
        )
        with unique_name(taken):
            row = db.one(
                "create_session_template",
                user_id=user_id,
                template_name=args["name"],
                title=args.get("title"),
                description=args["description"],
                system_prompt=args["system_prompt"],
                variable_descriptions=json.dumps(template["variable_descriptions"]),
                model_config=args.get("model_config"),
                default_metadata=json.dumps(args.get("default_metadata", {})),
                defaults=defaults,
            )
        assert row is not None
        if row["refusal"] is not None:
            raise quota_error(row["refusal"])
        if row["id"] is None:
            if args.get("model_config") is not None:
                raise config_not_found(args["model_config"])
            raise NotFound(f"No user {user_id!r}.")
        return template_record(row)

    def list_templates(call: ToolCall) -> dict[str, Any]:
        args = call.arguments
        limit = args.get("limit", DEFAULT_PAGE)
        after_name, after_builtin = (
            decode_cursor(args["cursor"], lambda position: (str(position["n"]), bool(position["b"])))
            if args.get("cursor")
            else (None, None)
        )
        rows = db.all(
            "list_session_templates",
            user_id=acting_user(call),
            after_name=after_name,
            after_builtin=after_builtin,
            limit=limit + 1,
            budget=PAGE_BYTES,
        )
        page = fill_page([template_record(row) for row in rows[:limit]])
        more = bool(rows) and rows[0]["candidates"] > len(page)
        next_cursor = encode_cursor({"n": page[-1]["name"], "b": page[-1]["builtin"]}) if more else None
        return {"templates": page, "next_cursor": next_cursor}

    def update(call: ToolCall) -> dict[str, Any]:
        user_id = acting_user(call)
        args = call.arguments
        changes = {key: args[key] for key in ("new_name", *FIELDS) if key in args}

        def change(tx: Transaction) -> Row | None:
            row = tx.one(
                "update_session_template",
                user_id=user_id,
                template_name=args["name"],
                changes=json.dumps(changes),
                defaults=defaults,
            )
            if row is not None:
                _check_variables(row)  # of the result: the prompt and the help text may change separately
            return row

        with unique_name(f"You already have a session template named {args.get('new_name')!r}; choose another."):
            row = db.transaction(change)
        if row is None:
            raise refusal(user_id, args["name"], args.get("model_config"), args.get("default_metadata"))
        return template_record(row)

    def delete(call: ToolCall) -> dict[str, Any]:
        user_id = acting_user(call)
        row = db.one("delete_session_template", user_id=user_id, template_name=call.arguments["name"])
        if row is None:
            raise refusal(user_id, call.arguments["name"], None, None)
        return {"name": row["name"], "deleted": True}

    owner = {"user_id": USER_ID_SCHEMA}
    name_argument = {"name": {**TEMPLATE_NAME, "description": "The template's name (templates are addressed by name)."}}
    registry.add_tool(
        Tool(
            name="chitty_session_template_create",
            title="Create session template",
            description=(
                "Save a session template: a system prompt with {{variable}} placeholders, an optional model config "
                "and default metadata. Start a session from it with chitty_chat_session_create {template, variables}; "
                "it is also offered as an MCP prompt. Names are unique per user; a template named like a built-in "
                "replaces the built-in for you."
            ),
            input_schema={
                "type": "object",
                "properties": {**owner, **name_argument, **FIELDS},
                "required": ["name", "description", "system_prompt"],
                "additionalProperties": False,
            },
            output_schema=TEMPLATE,
            handler=create,
        )
    )
    registry.add_tool(
        Tool(
            name="chitty_session_template_list",
            title="List session templates",
            description=(
                "Your session templates and the built-in ones (legal research, contract review, case analysis, "
                "document analysis, financial analysis, fact-checking), with their variables, by name, a page at "
                "a time: pass next_cursor back as cursor for the next page, until next_cursor is null."
            ),
            input_schema={
                "type": "object",
                "properties": {**owner, **page_arguments(DEFAULT_PAGE)},
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": {"templates": {"type": "array", "items": TEMPLATE}, "next_cursor": NEXT_CURSOR},
                "required": ["templates", "next_cursor"],
            },
            handler=list_templates,
            read_only=True,
            idempotent=True,
        )
    )
    registry.add_tool(
        Tool(
            name="chitty_session_template_update",
            title="Update session template",
            description=(
                "Change one of your session templates, found by its name: fields given replace, title and "
                "model_config given as null are cleared, new_name renames it. Built-in templates are read-only. "
                "Sessions already created from it keep their system prompt."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    **owner,
                    **name_argument,
                    "new_name": TEMPLATE_NAME,
                    **FIELDS,
                    "title": {**FIELDS["title"], "type": ["string", "null"]},
                    "model_config": {**FIELDS["model_config"], "type": ["string", "null"]},
                },
                "required": ["name"],
                "additionalProperties": False,
            },
            output_schema=TEMPLATE,
            handler=update,
            idempotent=True,
        )
    )
    registry.add_tool(
        Tool(
            name="chitty_session_template_delete",
            title="Delete session template",
            description=(
                "Delete one of your session templates, found by its name. Built-in templates are read-only; "
                "sessions already created from it are not affected."
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
