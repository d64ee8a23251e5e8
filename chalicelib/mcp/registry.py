"""The tools the server offers, and what a tool sees when it is called."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chalicelib.mcp.errors import INVALID_PARAMS, JsonRpcError, ToolError
from chalicelib.mcp.wire import MAX_ARGUMENT_DEPTH, IntegerFields, coerce_integers, find_unfit, integer_fields

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")

ProgressReporter = Callable[[float, "float | None", "str | None"], None]


@dataclass
class ToolCall:
    """One invocation of a tool: validated arguments, the caller, and a way to report progress."""

    name: str
    arguments: dict[str, Any]
    principal: Any
    progress: ProgressReporter | None = None
    request_id: str | int | None = None
    log_fields: dict[str, Any] = field(default_factory=dict)
    # The client takes a task for an answer (it declared the tasks extension for this request).
    task_requested: bool = False

    def report_progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        """Send notifications/progress when the client asked for it; otherwise a no-op."""
        if self.progress is not None:
            self.progress(progress, total, message)


@dataclass
class ToolResult:
    """A tool's answer: structured content, and the text a model reads (JSON of it by default)."""

    structured: dict[str, Any]
    text: str | None = None
    # Set when the call was answered with a task (the tasks extension): the job that runs it.
    task: dict[str, Any] | None = None

    def to_result(self) -> dict[str, Any]:
        text = self.text if self.text is not None else json.dumps(self.structured, default=str)
        return {"content": [{"type": "text", "text": text}], "structuredContent": self.structured, "isError": False}


# Where an error result carries its details (field, limit, retry_after_s, upstream_status, ...). Not in
# structuredContent: clients check that against the tool's output schema, which describes success.
ERROR_META = "chittyos/error"


def error_result(error: ToolError) -> dict[str, Any]:
    """An isError tool result: the message as text, and its details (if any) under `_meta`."""
    result: dict[str, Any] = {"content": [{"type": "text", "text": error.message}], "isError": True}
    if error.data:
        result["_meta"] = {ERROR_META: {"message": error.message, **error.data}}
    return result


ToolHandler = Callable[[ToolCall], "ToolResult | dict[str, Any]"]


@dataclass
class Tool:
    """A tool: its name, JSON Schemas, behaviour hints, and the function that runs it."""

    name: str
    title: str
    description: str
    input_schema: dict[str, Any]
    handler: ToolHandler
    output_schema: dict[str, Any] | None = None
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = False
    open_world: bool = False
    # The handler checks the bearer token in its own first query (saving a round trip); it receives
    # the caller's unverified credential and raises Unauthenticated if the token is not live.
    verifies_credentials: bool = False
    # The tools/list entry's `_meta` (an MCP App's view: {"ui": {"resourceUri": ...}}).
    meta: dict[str, Any] | None = None
    _check: Callable[[Any], Any] | None = field(default=None, repr=False)
    _validator: Any = field(default=None, repr=False)
    _integers: IntegerFields | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not _TOOL_NAME.match(self.name):
            raise ValueError(f"invalid tool name {self.name!r}")
        self._integers = integer_fields(self.input_schema)

    def describe(self) -> dict[str, Any]:
        """The tools/list entry."""
        entry: dict[str, Any] = {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "inputSchema": {"$schema": JSON_SCHEMA_DIALECT, **self.input_schema},
            "annotations": {
                "title": self.title,
                "readOnlyHint": self.read_only,
                "destructiveHint": self.destructive,
                "idempotentHint": self.idempotent,
                "openWorldHint": self.open_world,
            },
        }
        if self.output_schema is not None:
            entry["outputSchema"] = {"$schema": JSON_SCHEMA_DIALECT, **self.output_schema}
        if self.meta is not None:
            entry["_meta"] = self.meta
        return entry

    def validate(self, arguments: dict[str, Any]) -> None:
        """Raise ToolError naming the first offending field when the arguments break the schema or
        hold what no tool can use; then, in place, make integral floats ints where the schema says integer.

        Values first, in one pass: a string with U+0000 or a lone surrogate (keys too), NaN or
        Infinity, or nesting deeper than MAX_ARGUMENT_DEPTH. Then the schema: a validator compiled
        from it (fastjsonschema) lets valid arguments through in microseconds; what it refuses goes
        to jsonschema, which names the field best. (jsonschema alone cost a tenth of a millisecond
        per call, and 180 ms of import on a cold start.)
        """
        unfit = find_unfit(arguments, MAX_ARGUMENT_DEPTH)
        if unfit is not None:
            field_name = _short(unfit.field)
            raise ToolError(
                f"Invalid arguments for {self.name}: {field_name}: {unfit.problem}", data={"field": field_name}
            )
        self._check_schema(arguments)
        coerce_integers(arguments, self._integers)

    def _check_schema(self, arguments: dict[str, Any]) -> None:
        if self._check is None:
            import fastjsonschema

            # Our schemas use only keywords that mean the same in draft 7 and 2020-12 (a test checks).
            self._check = fastjsonschema.compile(self.input_schema, use_default=False)
        from fastjsonschema import JsonSchemaValueException

        try:
            self._check(arguments)
            return
        except JsonSchemaValueException:
            pass
        if self._validator is None:
            self._validator = reference_validator(self.input_schema)
        from jsonschema.exceptions import best_match

        error = best_match(self._validator.iter_errors(arguments))
        if error is None:  # the two agree on every schema here (a test checks)
            return
        location = "/".join(str(part) for part in error.absolute_path)
        field_name = location or _missing_field(error.message) or "arguments"
        message = error.message
        if error.validator == "pattern" and isinstance(error.schema, dict) and error.schema.get("description"):
            message = f"{_short(repr(error.instance), 80)} is not valid here: {error.schema['description']}"
        raise ToolError(
            f"Invalid arguments for {self.name}: {field_name}: {_short(message)}",
            data={"field": field_name},
        )


# JSON Schema patterns are ECMA-262: `$` ends the string. Python's `$` also matches before a final
# newline, so "<uuid>\n" would pass a UUID pattern; as fastjsonschema does, `$` is read as `\Z`.
_END_ANCHOR = re.compile(r"(?<!\\)\$")


@functools.lru_cache(maxsize=256)
def _ecma_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(_END_ANCHOR.sub(r"\\Z", pattern))


def reference_validator(schema: dict[str, Any]) -> Any:
    """A jsonschema 2020-12 validator for `schema`, with ECMA-262 end anchors in patterns."""
    from jsonschema import Draft202012Validator, ValidationError, validators

    def pattern(validator: Any, expected: str, instance: Any, _: Any) -> Any:
        if validator.is_type(instance, "string") and not _ecma_pattern(expected).search(instance):
            yield ValidationError(f"{instance!r} does not match {expected!r}")

    reference = validators.extend(Draft202012Validator, {"pattern": pattern})
    return reference(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _missing_field(message: str) -> str | None:
    match = re.match(r"^'([^']+)' is a required property$", message)
    if match:
        return match.group(1)
    match = re.search(r"\('([^']+)' (?:was|were) unexpected\)", message)
    return match.group(1) if match else None


def _short(message: str, limit: int = 200) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


@dataclass
class ResourceFamily:
    """Readable resources under one URI template (e.g. chitty://sessions/{session_id}).

    `list_for` gives the caller's resources (each {uri, name, title?, description?, mimeType?});
    `read_for` gives {uri, mimeType, text} for one of them, or None when the caller may not
    see it or it does not exist (the two are not told apart).
    """

    uri_template: str
    name: str
    title: str
    description: str
    mime_type: str
    list_for: Callable[[Any], list[dict[str, Any]]]
    read_for: Callable[[Any, str], dict[str, Any] | None]
    # Listed in resources/templates/list: a family of fixed resources (MCP Apps' views) is not a template.
    templated: bool = True

    def describe(self) -> dict[str, Any]:
        return {
            "uriTemplate": self.uri_template,
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "mimeType": self.mime_type,
        }

    def owns(self, uri: str) -> bool:
        return uri.startswith(self.uri_template.split("{", 1)[0])


@dataclass
class PromptFamily:
    """Prompts that depend on the caller (e.g. a user's session templates and the built-in ones).

    `list_for` gives the caller's prompts (each {name, title?, description?, arguments?: [{name,
    description?, required?}]}); `get_for` renders one with its arguments as {description?, messages},
    or gives None when the caller has no prompt of that name (whether it does not exist or belongs to
    someone else), and raises InvalidArguments when an argument is missing or unknown.
    """

    list_for: Callable[[Any], list[dict[str, Any]]]
    get_for: Callable[[Any, str, dict[str, str]], dict[str, Any] | None]


@dataclass
class Registry:
    """Everything the server offers. Tools register themselves here; mcp/ never imports them."""

    tools: dict[str, Tool] = field(default_factory=dict)
    resources: list[ResourceFamily] = field(default_factory=list)
    prompts: list[PromptFamily] = field(default_factory=list)
    # The tasks extension: a task by id for a principal (None if unknown or not theirs), and its cancel.
    task_get: Callable[[str, Any], dict[str, Any] | None] | None = None
    task_cancel: Callable[[str, Any], bool] | None = None
    # Extensions offered in every protocol version, by id, with their settings (MCP Apps: {"io.modelcontext
    # protocol/ui": {}}); tasks, offered only at 2026-07-28, is set with set_tasks.
    extensions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def set_tasks(
        self, *, get: Callable[[str, Any], dict[str, Any] | None], cancel: Callable[[str, Any], bool]
    ) -> None:
        """Offer the tasks extension: tools/call may then answer with a task, read by these."""
        self.task_get, self.task_cancel = get, cancel

    def add_tool(self, tool: Tool) -> Tool:
        if tool.name in self.tools:
            raise ValueError(f"tool {tool.name!r} registered twice")
        self.tools[tool.name] = tool
        return tool

    def add_resources(self, family: ResourceFamily) -> ResourceFamily:
        self.resources.append(family)
        return family

    def add_prompts(self, family: PromptFamily) -> PromptFamily:
        self.prompts.append(family)
        return family

    def tool(self, name: str) -> Tool:
        try:
            return self.tools[name]
        except KeyError:
            raise JsonRpcError(INVALID_PARAMS, f"Unknown tool: {name}") from None
