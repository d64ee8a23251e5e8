"""Tool arguments: the compiled validator and the jsonschema reference judge every argument alike.

Valid arguments pass through a validator compiled by fastjsonschema (draft 7); refused ones
go to jsonschema (2020-12), which names the offending field. Both must say the same of any
input, for every tool: the schemas use only keywords that mean the same in both drafts, and
patterns end at the end of the string in both (ECMA-262), never before a final newline.
"""

from __future__ import annotations

import functools
from typing import Any

import fastjsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.db import Database
from chalicelib.mcp import ToolError
from chalicelib.mcp.registry import Tool, reference_validator
from chalicelib.mcp.wire import MAX_ARGUMENT_DEPTH
from tests.test_fuzz import values_for

# Keywords whose meaning is the same in draft 7 (fastjsonschema) and 2020-12 (the dialect we declare).
SHARED_KEYWORDS = {
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "maxProperties",
    "minimum",
    "maximum",
    "pattern",
    "description",
    "default",
    "anyOf",
}
AGREEMENT = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.lru_cache(maxsize=1)
def tools() -> dict[str, Tool]:
    from chalicelib.tools import build_registry

    return build_registry(Database(url="postgresql://unused@localhost/unused")).tools


def keywords(schema: Any) -> set[str]:
    """Every keyword used in a schema (property names under `properties` are not keywords)."""
    if isinstance(schema, list):
        return set().union(*(keywords(item) for item in schema)) if schema else set()
    if not isinstance(schema, dict):
        return set()
    found = set(schema)
    for key, value in schema.items():
        if key == "properties":
            found |= set().union(*(keywords(sub) for sub in value.values())) if value else set()
        elif key not in ("enum", "const", "default", "required"):
            found |= keywords(value)
    return found


def fast_accepts(tool: Tool, arguments: Any) -> bool:
    check = fastjsonschema.compile(tool.input_schema, use_default=False)
    try:
        check(arguments)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


@functools.lru_cache(maxsize=64)
def reference(name: str) -> Any:
    return reference_validator(tools()[name].input_schema)


def test_every_input_schema_uses_only_keywords_that_mean_the_same_in_draft_7_and_2020_12():
    used = {name: keywords(tool.input_schema) - SHARED_KEYWORDS for name, tool in tools().items()}

    assert {name: extra for name, extra in used.items() if extra} == {}


@AGREEMENT
@given(data=st.data())
def test_the_compiled_validator_and_the_reference_agree_on_generated_arguments(data):
    name = data.draw(st.sampled_from(sorted(tools())))
    tool = tools()[name]
    arguments = data.draw(values_for(tool.input_schema, mutate=data.draw(st.booleans())))

    assert fast_accepts(tool, arguments) == reference(name).is_valid(arguments), (name, arguments)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_valid_arguments_pass_validation(data):
    name = data.draw(st.sampled_from(sorted(tools())))
    arguments = data.draw(values_for(tools()[name].input_schema, mutate=False))

    tools()[name].validate(arguments)


@pytest.mark.parametrize("ending", ["\n", "\r\n", " "])
def test_a_uuid_argument_with_anything_after_it_is_refused_by_name(ending):
    tool = tools()["chitty_chat_session_get"]

    with pytest.raises(ToolError) as refused:
        tool.validate({"session_id": "00000000-0000-0000-0000-000000000000" + ending})

    assert refused.value.data == {"field": "session_id"}
    assert "Invalid arguments for chitty_chat_session_get: session_id:" in refused.value.message


def floats_where_integers_belong(schema: Any, value: Any, path: str = "") -> list[str]:
    """The places where the schema says integer and the value is a float."""
    if not isinstance(schema, dict):
        return []
    kinds = schema.get("type")
    if (kinds == "integer" or (isinstance(kinds, list) and "integer" in kinds)) and isinstance(value, float):
        return [path]
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key, schema.get("additionalProperties"))
            found += floats_where_integers_belong(sub, item, f"{path}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += floats_where_integers_belong(schema.get("items"), item, f"{path}/{index}")
    return found


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_validation_leaves_only_integers_where_a_schema_says_integer(data):
    name = data.draw(st.sampled_from(sorted(tools())))
    tool = tools()[name]
    arguments = data.draw(values_for(tool.input_schema, mutate=False, integral_floats=True))

    tool.validate(arguments)

    assert floats_where_integers_belong(tool.input_schema, arguments) == []


def nested_tool() -> Tool:
    """A tool whose schema types integers at the top, in array items, and in unnamed properties."""
    return Tool(
        name="nested_integers",
        title="Nested integers",
        description="Holds integers at every kind of place.",
        input_schema={
            "type": "object",
            "properties": {
                "count": {"type": ["integer", "null"]},
                "ratio": {"type": "number"},
                "pages": {"type": "array", "items": {"type": "object", "properties": {"page": {"type": "integer"}}}},
                "tally": {"type": "object", "additionalProperties": {"type": "integer"}},
                "note": {"type": "object", "properties": {"size": {"type": "number"}}, "additionalProperties": {}},
            },
        },
        handler=lambda call: {},
    )


def test_integral_floats_become_integers_at_every_depth_and_numbers_stay_as_sent():
    arguments = {
        "count": 3.0,
        "ratio": 2.0,
        "pages": [{"page": 1.0}, {"page": 2}],
        "tally": {"a": 1e2, "b": 7},
        "note": {"size": 4.0, "other": 5.0},
    }

    nested_tool().validate(arguments)

    assert arguments == {
        "count": 3,
        "ratio": 2.0,
        "pages": [{"page": 1}, {"page": 2}],
        "tally": {"a": 100, "b": 7},
        "note": {"size": 4.0, "other": 5.0},
    }
    assert [type(arguments[name]) for name in ("count", "ratio")] == [int, float]
    assert type(arguments["pages"][0]["page"]) is int
    assert type(arguments["tally"]["a"]) is int
    assert [type(value) for value in arguments["note"].values()] == [float, float]


@pytest.mark.parametrize(
    ("arguments", "field", "problem"),
    [
        ({"count": float("nan")}, "count", "NaN is not a JSON number"),
        ({"tally": {"a": float("-inf")}}, "tally/a", "-Infinity is not a JSON number"),
        ({"note": {"x": ["ok", "\x00"]}}, "note/x/1", "contains U+0000 (NUL), which cannot be stored"),
        ({"note": {"\udfff": 1}}, "note", "a key contains a lone surrogate (U+DFFF), which is not valid Unicode"),
        ({"\x00": 1}, "arguments", "a key contains U+0000 (NUL), which cannot be stored"),
    ],
    ids=["nan", "minus infinity", "nul in a list", "surrogate in a key", "nul in a top-level name"],
)
def test_values_no_tool_can_use_are_refused_by_field_before_the_schema(arguments, field, problem):
    with pytest.raises(ToolError) as refused:
        nested_tool().validate(arguments)

    assert refused.value.message == f"Invalid arguments for nested_integers: {field}: {problem}"
    assert refused.value.data == {"field": field}


def test_arguments_may_nest_32_levels_and_no_more():
    def arguments(levels: int) -> dict[str, Any]:
        value: Any = {}
        for _ in range(levels - 3):  # the arguments, the note object and this innermost one make three
            value = {"x": value}
        return {"note": {"x": value}}

    nested_tool().validate(arguments(MAX_ARGUMENT_DEPTH))
    with pytest.raises(ToolError) as refused:
        nested_tool().validate(arguments(MAX_ARGUMENT_DEPTH + 1))

    assert refused.value.data == {"field": "note" + "/x" * (MAX_ARGUMENT_DEPTH - 1)}
    assert refused.value.message.endswith(": nested more than 32 levels deep")
